"""Confusion matrix and IoU, following the nuScenes-lidarseg protocol (method.md §7).

Rows are ground truth, columns predictions; ground-truth class 0 (ignore) is excluded.  A class that
appears neither in the ground truth nor in the predictions has no IoU (NaN) and is left out of the mean,
which matters on small synthetic worlds where some classes never occur (the reference sets it to 1).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts with row 0 (ground-truth ignore) zeroed."""
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in length: {gt.shape} vs {pred.shape}")
    ok = (gt > 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    cm = np.bincount(gt[ok] * num_classes + pred[ok], minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU of classes 1..C-1 (index 0 of the result is class 1); NaN where the union is empty."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return iou[1:]


def mean_iou(cm: np.ndarray) -> float:
    iou = per_class_iou(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def accuracy(cm: np.ndarray) -> float:
    total = cm[1:].sum()
    return float(np.trace(cm[1:, 1:]) / total) if total else float("nan")


def none_if_nan(value: float) -> float | None:
    """JSON-friendly: an undefined metric becomes null instead of NaN."""
    return None if np.isnan(value) else float(value)


def iou_by_class(cm: np.ndarray, class_names) -> dict:
    """{evaluation class name: IoU or None where undefined} for classes 1..C-1."""
    return {name: none_if_nan(v) for name, v in zip(class_names, per_class_iou(cm))}
