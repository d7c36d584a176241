"""Segmentation evaluation over a split (method.md §7): one confusion matrix over every point of every scan.

The trainer feeds :class:`EvaluationAccumulator` one scan at a time (with AFI-refined predictions, through
:func:`apply_afi`, when ``--afi`` is set) and calls :meth:`EvaluationAccumulator.finalize` once, which writes
``metrics.json``, ``iou.png``, ``confusion.png`` and ``bev_<token>.png`` for the first scans.

Two pooled scores besides mIoU, both over points with ground truth (class 0 excluded):

* ``fwiou`` is what the reference prints as "fwIoU": ``sum(TP) / (2 * N - sum(TP))`` with N the labelled
  points, i.e. one IoU over all points pooled (equal to ``accuracy / (2 - accuracy)``), not a class-weighted
  average;
* ``freq_weighted_iou`` is the textbook frequency-weighted IoU: ``sum_c (N_c / N) * IoU_c`` with N_c the
  ground-truth points of class c (classes without ground truth weigh 0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..afi import AFIConfig, afi_refine
from ..io import write_json_atomic
from ..vocab import ClassDictionary
from .metrics import accuracy, confusion_matrix, iou_by_class, mean_iou, none_if_nan, per_class_iou
from .plots import bev_comparison, confusion_heatmap, iou_bar_chart

_CALIBRATION_BINS = 10


def apply_afi(points: np.ndarray, prediction: np.ndarray, dictionary: ClassDictionary,
              cfg: Optional[AFIConfig] = None) -> np.ndarray:
    """AFI-refined labels (N,) of one scan: the one place evaluation calls AFI.

    ``prediction`` is (N,) labels or (N, C) probabilities; flat classes are resolved by name in
    ``dictionary``.  Without ``cfg``, the reference parameters of the dictionary's dataset are used
    (:meth:`AFIConfig.kitti` for SemanticKITTI, the nuScenes defaults otherwise).
    """
    if cfg is None:
        cfg = AFIConfig.kitti() if dictionary.dataset == "semantickitti" else AFIConfig()
    labels, _ = afi_refine(points, prediction, cfg, num_classes=dictionary.num_classes, dictionary=dictionary)
    return labels


def fw_iou(cm: np.ndarray) -> float:
    """The reference's "fwIoU": pooled IoU ``sum(TP) / (2 N - sum(TP))`` over labelled points (see module doc)."""
    tp, n = float(np.trace(cm[1:, 1:])), float(cm[1:].sum())
    return tp / (2 * n - tp) if n else float("nan")


def freq_weighted_iou(cm: np.ndarray) -> float:
    """Textbook frequency-weighted IoU ``sum_c (N_c / N) IoU_c`` over classes 1..C-1."""
    support = cm[1:].sum(1).astype(np.float64)
    if not support.sum():
        return float("nan")
    return float(np.sum(support / support.sum() * np.nan_to_num(per_class_iou(cm))))


class EvaluationAccumulator:
    """Accumulates the confusion matrix of a split scan by scan and writes the metrics and figures.

    ``bev_scans``: the first this many scans are kept for bird's-eye-view figures.  When ``probs`` are
    given to :meth:`add_scan`, the confidence of the predicted label (``probs[i, pred[i]]``) is binned to
    report the expected calibration error over the labelled points of those scans.
    """

    def __init__(self, dictionary: ClassDictionary, out_dir: str | Path, bev_scans: int = 1):
        self.dictionary = dictionary
        self.out_dir = Path(out_dir)
        self.bev_scans = bev_scans
        c = dictionary.num_classes
        self.confusion = np.zeros((c, c), np.int64)
        self.num_scans = 0
        self.num_points = 0
        self._bev: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._calib = np.zeros((3, _CALIBRATION_BINS))  # per bin: points, sum of confidence, correct points

    def add_scan(self, token: str, points: np.ndarray, gt_labels: np.ndarray, pred_labels: np.ndarray,
                 probs: Optional[np.ndarray] = None) -> None:
        """Add one scan: points (N, 3+), gt_labels (N,) (0 = ignore), pred_labels (N,), probs (N, C) or None."""
        gt = np.asarray(gt_labels, dtype=np.int64).ravel()
        pred = np.asarray(pred_labels, dtype=np.int64).ravel()
        if not len(points) == len(gt) == len(pred):
            raise ValueError(f"scan {token}: {len(points)} points, {len(gt)} ground-truth and {len(pred)} "
                             "predicted labels")
        c = self.dictionary.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= c or pred.min() < 0 or pred.max() >= c):
            raise ValueError(f"scan {token}: labels outside 0..{c - 1}")
        self.confusion += confusion_matrix(gt, pred, c)
        if probs is not None:
            self._add_calibration(token, gt, pred, np.asarray(probs))
        if len(self._bev) < self.bev_scans:
            self._bev.append((token, np.array(points, dtype=np.float32)[:, :3], gt, pred))
        self.num_scans += 1
        self.num_points += len(gt)

    def _add_calibration(self, token: str, gt: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> None:
        if probs.shape != (len(gt), self.dictionary.num_classes):
            raise ValueError(f"scan {token}: probs must be ({len(gt)}, {self.dictionary.num_classes}), "
                             f"got {probs.shape}")
        lab = gt > 0
        conf = probs[np.flatnonzero(lab), pred[lab]].astype(np.float64)
        bins = np.minimum((conf * _CALIBRATION_BINS).astype(np.int64), _CALIBRATION_BINS - 1)
        for row, weights in enumerate((None, conf, (gt[lab] == pred[lab]).astype(np.float64))):
            self._calib[row] += np.bincount(bins, weights=weights, minlength=_CALIBRATION_BINS)

    def finalize(self, title: str = "") -> dict:
        """Write ``metrics.json`` and the PNGs into ``out_dir`` (atomically) and return the metrics."""
        if not self.num_scans:
            raise ValueError("no scans were added: nothing to evaluate")
        d, cm = self.dictionary, self.confusion
        iou = per_class_iou(cm)
        title = title or f"{d.name}: {self.num_scans} scan{'' if self.num_scans == 1 else 's'}"
        files = {"json": self.out_dir / "metrics.json", "iou_png": self.out_dir / "iou.png",
                 "confusion_png": self.out_dir / "confusion.png"}
        metrics: dict = {
            "vocabulary": d.name, "num_scans": self.num_scans, "num_points": self.num_points,
            "num_labelled_points": int(cm[1:].sum()),
            "miou": none_if_nan(mean_iou(cm)), "accuracy": none_if_nan(accuracy(cm)),
            "fwiou": none_if_nan(fw_iou(cm)), "freq_weighted_iou": none_if_nan(freq_weighted_iou(cm)),
            "per_class_iou": iou_by_class(cm, d.eval_classes),
            "class_points": dict(zip(d.eval_classes, cm[1:].sum(1).tolist())),
            "confusion": {"rows": "ground truth", "cols": "prediction", "classes": d.class_names,
                          "matrix": cm.tolist()},
        }
        if self._calib[0].sum():
            metrics["calibration"] = self._calibration()
        miou = metrics["miou"]
        iou_bar_chart({"prediction": iou}, d.eval_classes, d.palette, files["iou_png"],
                      f"{title}: per-class IoU" + ("" if miou is None else f" (mIoU {100 * miou:.1f})"))
        confusion_heatmap(cm, d.class_names, files["confusion_png"],
                          f"{title}: confusion (% of ground-truth points)")
        for token, points, gt, pred in self._bev:
            name = f"bev_{_safe_name(token)}"
            files[name] = bev_comparison(points, gt, pred, d.palette, d.class_names, self.out_dir / f"{name}.png",
                                         f"{title}: {token}")
        metrics["files"] = {k: str(v) for k, v in files.items()}
        write_json_atomic(files["json"], metrics)
        return metrics

    def _calibration(self) -> dict:
        n, conf, correct = self._calib
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf, acc = conf / n, correct / n
        ece = float(np.sum(n * np.abs(np.nan_to_num(mean_conf) - np.nan_to_num(acc))) / n.sum())
        return {"ece": ece, "mean_confidence": float(conf.sum() / n.sum()), "num_points": int(n.sum()),
                "bins": {"points": n.astype(np.int64).tolist(), "confidence": [none_if_nan(v) for v in mean_conf],
                         "accuracy": [none_if_nan(v) for v in acc]}}


def _safe_name(token: str) -> str:
    """A file-name-safe version of a scan token (KITTI tokens contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", token)
