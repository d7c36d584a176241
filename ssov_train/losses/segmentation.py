"""Stage-2 (annotation-free) segmentation loss: cross-entropy + Lovász-softmax on pseudo-labelled voxels.

As in the reference (method.md §4): voxels labelled ``ignore_index`` are dropped first, then the
unweighted cross-entropy and the Lovász-softmax (classes present in the batch) of the softmax of the
remaining voxels are summed.  ``class_weights`` is an option the reference does not use.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lovasz import lovasz_softmax


class SegmentationLoss(nn.Module):
    """CE (+ Lovász-softmax) over labelled voxels; returns ``{'total', 'ce', 'lovasz'}``."""

    def __init__(self, ignore_index: int = 0, lovasz: bool = True, class_weights: Optional[Tensor] = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.lovasz = lovasz
        self.class_weights: Optional[Tensor]
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """logits (V, C), labels (V,) -> losses; all zero (graph kept) when no voxel is labelled, so a
        batch without pseudo-labels neither crashes nor produces NaN."""
        keep = labels != self.ignore_index
        logits, labels = logits[keep], labels[keep].long()
        zero = logits.sum() * 0.0
        if labels.numel() == 0:
            return {"total": zero, "ce": zero, "lovasz": zero}
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        ce = F.cross_entropy(logits, labels, weight=weight)
        lov = lovasz_softmax(F.softmax(logits, dim=1), labels, classes="present") if self.lovasz else zero
        return {"total": ce + lov, "ce": ce, "lovasz": lov}
