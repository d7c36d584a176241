"""Training losses: TMP pre-training (superpoints x mask features x text) and stage-2 segmentation."""

from .lovasz import lovasz_grad, lovasz_softmax
from .segmentation import SegmentationLoss
from .tmp import (TMPBatch, TMPLoss, batch_superpoints, pool_superpoints, superpixel_superpoint_loss,
                  text_superpoint_loss, text_targets)

__all__ = ["lovasz_grad", "lovasz_softmax", "SegmentationLoss", "TMPBatch", "TMPLoss", "batch_superpoints",
           "pool_superpoints", "superpixel_superpoint_loss", "text_superpoint_loss", "text_targets"]
