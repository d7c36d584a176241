"""Training stages (TMP pre-training, annotation-free, downstream), evaluation and the shared checkpoint format."""
