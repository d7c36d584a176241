"""Lovász-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), written from the paper's definition.

The Jaccard loss of class c is a set function of the set of mispredicted voxels; its Lovász extension
is a piecewise-linear, convex function of the per-voxel errors m_i(c) = |[y_i = c] - p_i(c)| that equals
the Jaccard loss 1 - IoU when the errors are 0/1.  With the errors sorted in decreasing order
(permutation pi), the extension is

    sum_i  m_pi(i) * ( J(pi_1..pi_i) - J(pi_1..pi_{i-1}) ),

where J(M) is the Jaccard loss when exactly the voxels in M are wrong.  The reference stage-2 loss
(method.md §4) adds the mean of this over classes to the cross-entropy.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Increments of the Jaccard loss along a prefix chain of voxels sorted by decreasing error.

    ``gt_sorted`` (V,) float, 1 where the sorted voxel belongs to the class.  Marking the first i sorted voxels
    as wrong leaves ``gts - (#class voxels among them)`` correct class voxels (intersection) and makes the
    union ``gts + (#non-class voxels among them)``; the returned vector is the first difference of
    1 - intersection / union along i (the first entry is the loss of the one-element prefix).
    """
    gt = gt_sorted
    gts = gt.sum()
    intersection = gts - gt.cumsum(0)
    union = gts + (1.0 - gt).cumsum(0)
    jaccard = 1.0 - intersection / union  # union >= 1 for every non-empty prefix
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(probs: Tensor, labels: Tensor, classes: Union[str, Sequence[int]] = "present",
                   ignore: Optional[int] = None) -> Tensor:
    """Mean over classes of the Lovász extension of the Jaccard loss, on class probabilities.

    probs: (V, C) probabilities (softmax output); labels: (V,) integer classes.  ``classes``: ``'present'``
    averages over classes that occur in ``labels`` (absent classes would only push false positives
    down), ``'all'`` over every class, or an explicit list of class ids.  Voxels labelled ``ignore`` are
    dropped first.  Returns a 0 that keeps the graph when nothing is left to average.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"lovasz_softmax expects probs (V, C) and labels (V,), got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    if ignore is not None:
        keep = labels != ignore
        probs, labels = probs[keep], labels[keep]
    num_classes = probs.shape[1]
    if classes == "present":
        class_ids = torch.unique(labels).tolist()
    elif classes == "all":
        class_ids = list(range(num_classes))
    elif isinstance(classes, str):
        raise ValueError(f"classes must be 'present', 'all' or a list of class ids, got {classes!r}")
    else:
        class_ids = list(classes)
    if probs.shape[0] == 0 or not class_ids:
        return probs.sum() * 0.0
    losses = []
    for c in class_ids:
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    return torch.stack(losses).mean()
