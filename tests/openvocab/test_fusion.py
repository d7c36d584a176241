"""Multi-view fusion of teacher features onto points (mean over cameras, occlusion-aware), its storage and runner,
and the OpenScene-style fusion / distill / ensemble evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import ConfigError, DataError
from ssov_train.geometry.projection import ProjectionConfig
from ssov_train.openvocab.ensemble import ensemble_prompts, evaluate_open_vocabulary
from ssov_train.openvocab.fusion import FusedSample, FusionRun, fuse_frame, load_fused, run_fusion, save_fused
from ssov_train.superpoints import sample_path
from ssov_train.teachers.format import TeacherImage, TeacherStore
from ssov_train.vocab import load_dictionary

VOCAB = load_dictionary("nuscenes")
D = 4
K = np.array([[100.0, 0, 100], [0, 100, 50], [0, 0, 1]])
FRONT = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def yawed(deg):
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return FRONT @ np.array([[c, s, 0, 0], [-s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def frame(points, cameras, token="s0", labels=None):
    pts = np.asarray(points, np.float32)
    return Frame(token=token, dataset="test", points=pts, intensity=np.zeros(len(pts), np.float32), cameras=cameras,
                 labels=labels)


def store(tmp_path, images):
    s = TeacherStore.create(tmp_path / "teacher", "test", "nuscenes", VOCAB.num_prompts, D,
                            unit(np.random.default_rng(0).normal(size=(VOCAB.num_prompts, D))))
    for token, img in images.items():
        s.write(token, img)
    return s


def two_masks(left_feature, right_feature, dense=None):
    """Left half of a 200x100 image = mask 1, right half = mask 2."""
    m = np.ones((100, 200), np.uint8)
    m[:, 100:] = 2
    return TeacherImage(m, np.array([0, 96], np.int32), np.ones(2, np.float32), unit([left_feature, right_feature]),
                        dense_features=dense)


def test_mean_over_cameras_and_occlusion(tmp_path):
    a, b = CameraView("A", "ta", 200, 100, K, FRONT), CameraView("B", "tb", 200, 100, K, yawed(20))
    teacher = store(tmp_path, {"ta": two_masks([1, 0, 0, 0], [0, 1, 0, 0]),
                               "tb": two_masks([0, 0, 1, 0], [0, 0, 0, 1])})
    # p0: A's left mask (u 95) and B's right mask (u 131); p1: A's right mask only (B: u 288, outside);
    # p2: on p0's ray, 3x farther: hidden in both cameras by the z-buffer test; p3: behind the cameras.
    points = [[10, 0.5, 0], [10, -9, 0], [30, 1.5, 0], [-10, 0, 0]]
    fused = fuse_frame(frame(points, [a, b]), teacher, ProjectionConfig(occlusion=True))
    f, has = fused.dense()
    assert has.tolist() == [True, True, False, False]
    assert dict(zip(fused.point_index.tolist(), fused.num_views.tolist())) == {0: 2, 1: 1}
    np.testing.assert_allclose(f[0], unit([1, 0, 0, 1]), atol=1e-3)  # mean of A-left and B-right, renormalised
    np.testing.assert_allclose(f[1], [0, 1, 0, 0], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(fused.features.astype(np.float32), axis=1), 1, atol=1e-3)
    seen_through = fuse_frame(frame(points, [a, b]), teacher, ProjectionConfig(occlusion=False))
    views = dict(zip(seen_through.point_index.tolist(), seen_through.num_views.tolist()))
    assert views[2] == 2  # without the test, the hidden point takes the foreground's features (OpenScene)
    np.testing.assert_allclose(seen_through.dense()[0][2], unit([1, 0, 0, 1]), atol=1e-3)


def test_pixel_source_reads_dense_features_at_the_teacher_grid(tmp_path):
    dense = np.zeros((2, 4, D), np.float16)
    dense[..., 0] = 1
    dense[1, 3] = [0, 0, 0, 1]  # bottom-right cell of a 2 x 4 grid
    cam = CameraView("A", "ta", 200, 100, K, FRONT)
    teacher = store(tmp_path, {"ta": two_masks([0, 1, 0, 0], [0, 1, 0, 0], dense=dense)})
    # u = 100 - 100 y / x, v = 50 - 100 z / x: p0 at (u 190, v 90) -> cell (1, 3); p1 at (u 10, v 10) -> (0, 0).
    f, has = fuse_frame(frame([[10, -9, -4], [10, 9, 4]], [cam]), teacher, ProjectionConfig(occlusion=False),
                        source="pixel").dense()
    np.testing.assert_allclose(f[0], [0, 0, 0, 1], atol=1e-3)
    np.testing.assert_allclose(f[1], [1, 0, 0, 0], atol=1e-3)
    masks_only = store(tmp_path / "m", {"ta": two_masks([0, 1, 0, 0], [0, 1, 0, 0])})
    with pytest.raises(DataError, match="no per-pixel features"):
        fuse_frame(frame([[10, 0, 0]], [cam]), masks_only, ProjectionConfig(), source="pixel")


def test_storage_runner_resume_and_bad_samples(tmp_path):
    cam = CameraView("A", "ta", 200, 100, K, FRONT)
    teacher = store(tmp_path, {"ta": two_masks([1, 0, 0, 0], [0, 1, 0, 0])})
    frames = {"s0": frame([[10, 1, 0], [10, -1, 0]], [cam], "s0"),
              "s1": frame([[10, 1, 0]], [CameraView("A", "missing", 200, 100, K, FRONT)], "s1")}
    reader = SimpleNamespace(load=lambda t: frames[t])
    out = tmp_path / "fused"
    result = run_fusion(reader, ["s0", "s1"], teacher, out, FusionRun(), split="train", progress=False)
    assert result.done == ["s0"] and [t for t, _ in result.failed] == ["s1"]
    manifest = json.loads((out / "manifest_train.json").read_text())
    assert manifest["format"] == "ssov-fused-features" and manifest["num_missing"] == 1
    loaded = load_fused(sample_path(out, "s0"))
    assert loaded.features.dtype == np.float16 and loaded.point_index.tolist() == [0, 1]
    again = run_fusion(reader, ["s0", "s1"], teacher, out, FusionRun(), split="train", progress=False)
    assert again.skipped == ["s0"]
    with pytest.raises(DataError, match="other settings"):
        run_fusion(reader, ["s0"], teacher, out, FusionRun(source="pixel"), split="train", progress=False)
    (out / "samples" / "s0.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_fused(out / "samples" / "s0.npz")


def test_ensemble_takes_the_more_confident_feature():
    text = np.eye(3, dtype=np.float32)
    f3 = unit([[1, 0.9, 0], [0.2, 1, 0], [0, 0, 1]])
    f2 = unit([[0, 1, 0], [1, 0, 0], [0, 0, 0.5]])
    has = np.array([True, True, False])
    prompts, use_2d = ensemble_prompts(f3, f2, has, text)
    # p0: 3D best 0.74 (prompt 0) < 2D best 1.0 (prompt 1); p1: 3D 0.98 (prompt 1) < 2D 1.0 (prompt 0);
    # p2: no 2D feature -> 3D.
    assert prompts.tolist() == [1, 0, 2] and use_2d.tolist() == [True, True, False]


class FakeFeatureSegmenter:
    spec = SimpleNamespace(has_classes=False)

    def __init__(self, features):
        self.features = features

    def segment(self, xyz, intensity=None):
        return SimpleNamespace(features=self.features)


def test_open_vocabulary_evaluation_modes(tmp_path):
    """Four labelled points: 3D features right on two, 2D features right on three (one point has none)."""
    car, road = VOCAB.prompts.index("car"), VOCAB.prompts.index("road")
    text = np.zeros((VOCAB.num_prompts, 3), np.float32)
    text[car], text[road] = [1, 0, 0], [0, 1, 0]
    text[VOCAB.prompts.index("sky")] = [0, 0, 1]
    car_c, road_c = VOCAB.eval_index("car"), VOCAB.eval_index("driveable_surface")
    labels = np.array([car_c, car_c, road_c, road_c], np.uint8)
    f3 = unit([[1, 0.1, 0], [0.2, 1, 0], [0, 1, 0], [1, 0.3, 0]])  # right, wrong, right, wrong
    fused = FusedSample("s0", 4, np.array([0, 1, 3], np.int32), unit([[0.5, 0.1, 0], [1, 0, 0], [0, 1, 0]]).astype(np.float16),
                        np.ones(3, np.uint8))
    (tmp_path / "fused" / "samples").mkdir(parents=True)
    save_fused(sample_path(tmp_path / "fused", "s0"), fused, "mask")
    fr = frame([[10, 0, 0]] * 4, [], "s0", labels=labels)
    reader = SimpleNamespace(load=lambda t: fr)
    results = evaluate_open_vocabulary(FakeFeatureSegmenter(f3), reader, ["s0"], tmp_path / "fused", text, VOCAB,
                                       tmp_path / "eval", progress=False)
    acc = {m: r["accuracy"] for m, r in results.items()}
    assert acc == {"fusion": 0.75, "distill": 0.5, "ensemble": 1.0}  # fusion: point 2 has no 2D feature -> wrong
    assert results["fusion"]["fused_coverage"] == 0.75
    assert results["ensemble"]["ensemble_2d_fraction"] == 0.5  # points 1 and 3
    assert (tmp_path / "eval" / "ensemble" / "metrics.json").is_file() and (tmp_path / "eval" / "summary.json").is_file()
    with pytest.raises(ConfigError, match="unknown open-vocabulary mode"):
        evaluate_open_vocabulary(FakeFeatureSegmenter(f3), reader, ["s0"], None, text, VOCAB, tmp_path, modes=["2d"])
