"""The demo model's training curves (docs/training_curves.png): the ablation's TMP and annotation-free runs and
the annotation-free continuation that made models/ssov_synthetic_minkunet34c_w025.pt (models/README.md).

    python tools/plot_demo_model_curves.py runs/ablation runs/demo_model docs/training_curves.png
"""

import json
import sys
from pathlib import Path

from ssov_train.evaluation.plots import training_curves


def main(ablation: str, continuation: str, out: str) -> None:
    ablation_dir = Path(ablation)
    summary = json.loads((ablation_dir / "ablation.json").read_text())
    pseudo = summary["rows"]["pseudo-labels (oracle teacher)"]["miou"]
    epochs = summary["plan"]["train_epochs"]
    name = f"annotation-free, {epochs} more epochs (the demo model)"
    training_curves({"TMP pre-training": ablation_dir / "pretrain",
                     "annotation-free (after TMP)": ablation_dir / "annotation_free_tmp",
                     name: Path(continuation)}, out, pseudo_miou=pseudo, epoch_offsets={name: epochs})


if __name__ == "__main__":
    main(*sys.argv[1:4])
