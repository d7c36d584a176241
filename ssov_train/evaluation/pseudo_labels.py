"""Quality of pseudo-labels: coverage, and IoU against ground truth wherever ground truth exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..geometry.boxes import points_in_boxes
from ..io import write_json_atomic
from ..superpoints import iter_superpoints, read_manifest
from ..vocab import ClassDictionary
from .metrics import accuracy, confusion_matrix, iou_by_class, mean_iou, per_class_iou
from .plots import iou_bar_chart


def pseudo_label_report(out_dir: str | Path, split: str, reader, dictionary: ClassDictionary, title: str = "",
                        progress: bool = True) -> dict:
    """Write ``report_<split>.json`` and ``report_<split>_iou.png`` into ``out_dir`` and return the report.

    Two IoU views: over points that received a pseudo-label (how right the labels are), and over all
    points with ground truth, unlabelled ones counting as misses (how much of the scan they cover).
    On frames with only 3D boxes as ground truth, the report gives agreement inside the boxes.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir, split)
    c = dictionary.num_classes
    cm_labelled = np.zeros((c, c), np.int64)
    cm_all = np.zeros((c, c), np.int64)
    n_points = n_paired = n_labelled = n_box = n_box_labelled = n_box_correct = 0
    n_gt_frames = 0
    failed = []
    samples = iter_superpoints(out_dir, split)
    for sp in tqdm(samples, total=manifest["num_samples"], desc="report", unit="scan", disable=not progress):
        try:
            frame = reader.load(sp.token)
        except DataError as e:
            failed.append((sp.token, str(e)))
            continue
        if frame.num_points != sp.num_points:
            failed.append((sp.token, f"superpoints have {sp.num_points} points, the scan {frame.num_points}"))
            continue
        n_points += sp.num_points
        n_paired += int((sp.superpoint >= 0).sum())
        labelled = sp.pseudo_label > 0
        n_labelled += int(labelled.sum())
        if frame.labels is not None:
            n_gt_frames += 1
            cm_all += confusion_matrix(frame.labels, sp.pseudo_label, c)
            cm_labelled += confusion_matrix(frame.labels[labelled], sp.pseudo_label[labelled], c)
        elif frame.boxes is not None:
            box = points_in_boxes(frame.points, frame.boxes)
            inside = box >= 0
            box_eval = np.zeros(frame.num_points, np.int64)
            box_eval[inside] = dictionary.map_raw(frame.box_raw_classes[box[inside]])
            scored = box_eval > 0
            n_box += int(scored.sum())
            n_box_labelled += int((scored & labelled).sum())
            n_box_correct += int((scored & labelled & (sp.pseudo_label == box_eval)).sum())

    report: dict = {
        "output": str(out_dir), "split": split, "vocabulary": dictionary.name, "num_samples": manifest["num_samples"],
        "num_missing": manifest["num_missing"], "num_points": n_points,
        "paired_fraction": n_paired / max(n_points, 1), "labelled_fraction": n_labelled / max(n_points, 1),
        "failed": failed,
    }
    if n_gt_frames:
        iou_l, iou_a = per_class_iou(cm_labelled), per_class_iou(cm_all)
        report.update({
            "frames_with_ground_truth": n_gt_frames,
            "miou_labelled_points": mean_iou(cm_labelled), "miou_all_points": mean_iou(cm_all),
            "accuracy_labelled_points": accuracy(cm_labelled),
            "per_class_iou_labelled_points": iou_by_class(cm_labelled, dictionary.eval_classes),
            "per_class_iou_all_points": iou_by_class(cm_all, dictionary.eval_classes),
            "confusion_labelled_points": cm_labelled.tolist(),
        })
        iou_bar_chart({"labelled points": iou_l, "all points (unlabelled = miss)": iou_a},
                      dictionary.eval_classes, dictionary.palette, out_dir / f"report_{split}_iou.png",
                      title or f"Pseudo-label IoU vs ground truth ({split}: {n_gt_frames} scans, "
                               f"{100 * report['labelled_fraction']:.1f}% of points labelled)")
    if n_box:
        report.update({"box_points": n_box, "box_points_labelled_fraction": n_box_labelled / n_box,
                       "box_points_accuracy": n_box_correct / max(n_box_labelled, 1)})
    report["files"] = {"json": str(out_dir / f"report_{split}.json")}
    if n_gt_frames:
        report["files"]["png"] = str(out_dir / f"report_{split}_iou.png")
    write_json_atomic(out_dir / f"report_{split}.json", report)
    return report
