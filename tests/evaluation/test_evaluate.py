"""Split evaluation: confusion and IoU on hand-computed labels, JSON and figures on disk, the AFI hook."""

import json

import numpy as np
import pytest

from ssov_train.evaluation.evaluate import EvaluationAccumulator, apply_afi, freq_weighted_iou, fw_iou
from ssov_train.evaluation.plots import (DEPTH_SCALE, bev_comparison, camera_overlay_grid, confusion_heatmap,
                                         image_with_legend)
from ssov_train.training.checkpoint import model_label
from ssov_train.vocab import load_dictionary

DICT = load_dictionary("nuscenes")
C = DICT.num_classes
CAR, ROAD, VEG = (DICT.eval_index(n) for n in ("car", "driveable_surface", "vegetation"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _points(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-30, 30, (n, 3)).astype(np.float32)


def _crafted():
    """Ten points, three classes (car, road, vegetation) plus two ignore points.

    GT:   car car car road road road road veg | 0   0
    pred: car car road road road road car veg | car veg
    car: TP 2, GT 3, pred 3 -> IoU 2 / 4;  road: TP 3, GT 4, pred 4 -> 3 / 5;  veg: TP 1, GT 1, pred 1 -> 1.
    """
    gt = np.array([CAR, CAR, CAR, ROAD, ROAD, ROAD, ROAD, VEG, 0, 0])
    pred = np.array([CAR, CAR, ROAD, ROAD, ROAD, ROAD, CAR, VEG, CAR, VEG])
    return gt, pred


def _finalize(tmp_path, scans, bev_scans=1):
    acc = EvaluationAccumulator(DICT, tmp_path, bev_scans=bev_scans)
    for token, pts, gt, pred in scans:
        acc.add_scan(token, pts, gt, pred)
    return acc.finalize("test")


def test_hand_computed_metrics_and_json(tmp_path):
    gt, pred = _crafted()
    m = _finalize(tmp_path, [("scan_a", _points(10), gt, pred)])
    iou = m["per_class_iou"]
    assert iou["car"] == pytest.approx(0.5) and iou["driveable_surface"] == pytest.approx(0.6)
    assert iou["vegetation"] == pytest.approx(1.0)
    assert iou["bus"] is None and iou["manmade"] is None  # absent from both: undefined, not in the mean
    assert m["miou"] == pytest.approx((0.5 + 0.6 + 1.0) / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)  # the two ignore points count nowhere
    assert m["fwiou"] == pytest.approx(6 / (2 * 8 - 6))  # reference: sum(TP) / (2N - sum(TP))
    assert m["freq_weighted_iou"] == pytest.approx(3 / 8 * 0.5 + 4 / 8 * 0.6 + 1 / 8 * 1.0)
    assert m["num_scans"] == 1 and m["num_points"] == 10 and m["num_labelled_points"] == 8
    cm = np.array(m["confusion"]["matrix"])
    assert cm.shape == (C, C) and cm.sum() == 8 and cm[0].sum() == 0
    assert cm[CAR, ROAD] == 1 and cm[ROAD, CAR] == 1 and cm[ROAD, ROAD] == 3
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(m))


def test_figures_written_atomically(tmp_path):
    gt, pred = _crafted()
    scans = [(f"scene-1/s{i}", _points(10, i), gt, pred) for i in range(3)]
    m = _finalize(tmp_path, scans, bev_scans=2)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["bev_scene-1_s0.png", "bev_scene-1_s1.png", "confusion.png", "iou.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    assert set(m["files"]) == {"json", "iou_png", "confusion_png", "bev_scene-1_s0", "bev_scene-1_s1"}


def test_two_scans_equal_one_concatenated_scan(tmp_path):
    rng = np.random.default_rng(3)
    gt = rng.integers(0, C, 500)
    pred = np.where(rng.random(500) < 0.7, gt, rng.integers(1, C, 500))
    pts = _points(500)
    halves = [("a", pts[:200], gt[:200], pred[:200]), ("b", pts[200:], gt[200:], pred[200:])]
    split = _finalize(tmp_path / "split", halves)
    whole = _finalize(tmp_path / "whole", [("ab", pts, gt, pred)], bev_scans=0)
    for key in ("miou", "accuracy", "fwiou", "freq_weighted_iou", "per_class_iou", "confusion", "num_points"):
        assert split[key] == whole[key]
    assert split["num_scans"] == 2 and not list((tmp_path / "whole").glob("bev_*"))


def test_pooled_scores_on_a_bare_matrix():
    cm = np.zeros((3, 3), np.int64)
    cm[1] = [1, 4, 1]  # one labelled point predicted as ignore: a miss
    cm[2] = [0, 2, 2]
    # IoU: class 1 = 4 / (6 + 6 - 4), class 2 = 2 / (4 + 3 - 2); pooled TP 6 of N 10
    assert fw_iou(cm) == pytest.approx(6 / 14)
    assert freq_weighted_iou(cm) == pytest.approx(0.6 * 4 / 8 + 0.4 * 2 / 5)
    assert np.isnan(fw_iou(np.zeros((3, 3)))) and np.isnan(freq_weighted_iou(np.zeros((3, 3))))


def test_calibration_from_probs(tmp_path):
    gt, pred = _crafted()
    probs = np.full((10, C), 0.1 / (C - 1), np.float32)
    probs[np.arange(10), pred] = 0.9
    acc = EvaluationAccumulator(DICT, tmp_path, bev_scans=0)
    acc.add_scan("a", _points(10), gt, pred, probs)
    cal = acc.finalize()["calibration"]
    assert cal["num_points"] == 8 and cal["mean_confidence"] == pytest.approx(0.9)
    assert cal["ece"] == pytest.approx(abs(0.9 - 6 / 8))
    with pytest.raises(ValueError, match="probs"):
        acc.add_scan("b", _points(10), gt, pred, probs[:, :5])


def test_rejects_bad_input(tmp_path):
    acc = EvaluationAccumulator(DICT, tmp_path)
    with pytest.raises(ValueError, match="no scans"):
        acc.finalize()
    with pytest.raises(ValueError, match="points"):
        acc.add_scan("a", _points(5), np.ones(5, int), np.ones(4, int))
    with pytest.raises(ValueError, match="outside"):
        acc.add_scan("a", _points(5), np.ones(5, int), np.full(5, C))


def test_apply_afi_cleans_a_noisy_strip_on_a_flat_road():
    a, b = np.meshgrid(np.arange(-15, 15, 0.3), np.arange(-15, 15, 0.3), indexing="ij")
    pts = np.c_[a.ravel(), b.ravel(), np.full(a.size, -1.84)]
    pts = (pts + np.random.default_rng(0).normal(0, 0.01, pts.shape)).astype(np.float32)
    gt = np.full(len(pts), ROAD)
    pred = gt.copy()
    strip = (pts[:, 0] > 6) & (pts[:, 0] < 7)
    pred[strip] = VEG
    refined = apply_afi(pts, pred, DICT)
    assert refined.shape == gt.shape
    assert np.mean(refined == gt) > np.mean(pred == gt)
    assert np.mean(refined[strip] == ROAD) > 0.9 and np.mean(refined[~strip] == ROAD) > 0.99


def test_plot_functions_directly(tmp_path):
    cm = np.zeros((C, C), np.int64)
    cm[CAR, CAR], cm[CAR, 0], cm[ROAD, ROAD] = 90, 10, 50  # some labelled points predicted as ignore
    for norm in ("row", "col", None):
        out = confusion_heatmap(cm, DICT.class_names, tmp_path / f"cm_{norm}.png", "t", normalize=norm)
        assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="normalize"):
        confusion_heatmap(cm, DICT.class_names, tmp_path / "x.png", "t", normalize="all")
    gt, pred = _crafted()
    out = bev_comparison(_points(10), gt, pred, DICT.palette, DICT.class_names, tmp_path / "bev.png", "t", 20.0)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*"))


def _read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int64)


def _has_colour(rgb: np.ndarray, colour, tolerance: int = 6) -> bool:
    return bool((np.abs(rgb - np.asarray(colour)).max(axis=2) <= tolerance).any())


def test_depth_overlay_has_a_colour_bar(tmp_path):
    """The turbo colours of the depth scale appear only with the colour bar (no points are drawn here)."""
    import matplotlib.pyplot as plt

    image = np.full((90, 160, 3), 128, np.uint8)
    args = ([image, image], ["a", "b"], [np.zeros((0, 2))] * 2, [np.zeros((0, 3), np.uint8)] * 2)
    mid = (np.array(plt.get_cmap("turbo")(0.5)[:3]) * 255).round()  # 25 m
    with_bar = _read_png(camera_overlay_grid(*args, tmp_path / "bar.png", colorbar=DEPTH_SCALE))
    without = _read_png(camera_overlay_grid(*args, tmp_path / "plain.png"))
    assert _has_colour(with_bar, mid) and not _has_colour(without, mid)
    assert DEPTH_SCALE.label.startswith("depth (m")


def test_error_view_tells_correct_from_unlabelled(tmp_path):
    """All labelled points correct: the error panel shows them in the 'correct' colour, far from the faint grey
    of points without ground truth (the two greys of before were 25 levels apart)."""
    from ssov_train.evaluation import plots

    gt = np.array([CAR] * 300 + [0] * 300)
    rgb = _read_png(bev_comparison(_points(600), gt, gt, DICT.palette, DICT.class_names, tmp_path / "e.png", "t",
                                   30.0))
    correct = (plots._CORRECT * 255).round()
    assert _has_colour(rgb[:, 2 * rgb.shape[1] // 3:], correct, tolerance=10)  # in the third panel
    assert _has_colour(rgb[:, : rgb.shape[1] // 3], DICT.palette[CAR], tolerance=10)  # classes elsewhere
    grey = np.array([0xd0, 0xd0, 0xd0])
    assert np.abs(correct - grey).max() >= 100 and np.abs(correct - plots._ERROR * 255).max() >= 100


def test_overlay_image_keeps_its_pixels_and_gets_a_legend_with_outlined_swatches(tmp_path):
    """The pale manmade colour (lavender) shows on the white legend strip: its swatch has a dark outline."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 700, 3), dtype=np.uint8)
    manmade = DICT.eval_index("manmade")
    out = _read_png(image_with_legend(image, {"car": DICT.palette[CAR], "manmade": DICT.palette[manmade]},
                                      tmp_path / "overlay.png"))
    assert out.shape[1] == 700 and out.shape[0] > 120
    assert np.array_equal(out[:120], image)
    strip = out[120:]
    ys, xs = np.nonzero((np.abs(strip - DICT.palette[manmade]).max(axis=2) <= 2))
    assert len(ys) >= 20  # the manmade swatch
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    bands = [strip[top - 3: top, left: right + 1], strip[bottom + 1: bottom + 4, left: right + 1],
             strip[top: bottom + 1, left - 3: left].transpose(1, 0, 2),
             strip[top: bottom + 1, right + 1: right + 4].transpose(1, 0, 2)]
    for band in bands:  # on every side, within 3 pixels, a dark (outline) pixel all along the swatch
        assert (band.max(axis=2).min(axis=0) < 150).all()


def test_model_label_names_run_checkpoints_by_their_run():
    assert model_label("runs/synthetic/annotation_free/last.pt") == "annotation_free/last.pt"
    assert model_label("runs/x/epoch_012.pt") == "x/epoch_012.pt"
    assert model_label("models/ssov_synthetic_minkunet34c_w025.ssovpkg") == "ssov_synthetic_minkunet34c_w025.ssovpkg"
    assert model_label("models/demo.pt") == "demo.pt"


def test_labelled_points_predicted_as_ignore_count_as_misses():
    """Ground truth 1,1,1,2,2 predicted 1,0,0,2,1: the two class-0 predictions are misses of class 1 (in its
    union), never dropped. Class 1: TP 1, union 3 + 2 - 1 = 4; class 2: TP 1, union 2 + 1 - 1 = 2."""
    from ssov_train.evaluation.metrics import accuracy, confusion_matrix, mean_iou, per_class_iou

    cm = confusion_matrix(np.array([1, 1, 1, 2, 2]), np.array([1, 0, 0, 2, 1]), 3)
    assert cm.tolist() == [[0, 0, 0], [2, 1, 0], [0, 1, 1]]
    np.testing.assert_allclose(per_class_iou(cm), [1 / 4, 1 / 2])
    assert mean_iou(cm) == pytest.approx(3 / 8)
    assert accuracy(cm) == pytest.approx(2 / 5)
    # ground-truth ignore (0) and ids outside the table are left out, whatever was predicted
    cm = confusion_matrix(np.array([0, 0, 3, 1]), np.array([1, 2, 1, 1]), 3)
    assert cm.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_metrics_edges_by_hand():
    import math

    from ssov_train.evaluation.metrics import (accuracy, confusion_matrix, iou_by_class, mean_iou, none_if_nan,
                                               per_class_iou)

    # predictions outside 0..C-1 (a corrupt label) are left out, like ground truth outside the table
    cm = confusion_matrix(np.array([[1, 1], [2, 2]]), np.array([[1, -1], [3, 2]]), 3)
    assert cm.dtype == np.int64 and cm.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"ground truth and prediction differ in length: \(3,\) vs \(2,\)"):
        confusion_matrix(np.array([1, 1, 2]), np.array([1, 1]), 3)
    # class 2 never occurs in ground truth nor predictions: no IoU, left out of the mean
    cm = confusion_matrix(np.array([1, 1, 3]), np.array([1, 3, 3]), 4)
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(0.5) and math.isnan(iou[1]) and iou[2] == pytest.approx(0.5)
    assert mean_iou(cm) == pytest.approx(0.5) and accuracy(cm) == pytest.approx(2 / 3)
    assert iou_by_class(cm, ["car", "bus", "road"]) == {"car": 0.5, "bus": None, "road": 0.5}
    empty = np.zeros((3, 3), np.int64)
    assert math.isnan(mean_iou(empty)) and math.isnan(accuracy(empty))
    assert none_if_nan(float("nan")) is None and none_if_nan(np.float32(0.25)) == 0.25
    assert type(none_if_nan(np.float32(0.25))) is float


def test_metrics_take_uint8_labels_and_stay_quiet_when_undefined():
    import warnings

    from ssov_train.evaluation.metrics import accuracy, confusion_matrix, mean_iou

    # uint8 labels (as stored): gt * 17 + pred would wrap around in uint8 (16 * 17 = 272)
    cm = confusion_matrix(np.array([16, 16, 15], np.uint8), np.array([16, 15, 15], np.uint8), 17)
    assert cm[16, 16] == 1 and cm[16, 15] == 1 and cm[15, 15] == 1 and cm.sum() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined metrics are NaN without a numpy warning
        assert np.isnan(mean_iou(np.zeros((3, 3), np.int64)))
        assert np.isnan(accuracy(np.zeros((3, 3), np.int64)))
