"""Superpoints on crafted scenes: pairings, the multi-camera vote, occlusion, storage and the batch runner."""

import json

import numpy as np
import pytest

from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import DataError
from ssov_train.geometry.projection import ProjectionConfig
from ssov_train.superpoints import (compute_superpoints, load_superpoints, read_manifest, run_superpoints,
                                    sample_path, save_superpoints)
from ssov_train.teachers.format import TeacherImage, TeacherStore
from ssov_train.vocab import load_dictionary

DICT = load_dictionary("nuscenes")
CAR, TRUCK, ROAD, SKY = 0, 8, 100, 170  # prompt ids: car, truck, road, sky (ignore category)
K = np.array([[100.0, 0, 100], [0, 100, 50], [0, 0, 1]])
# Camera looking along lidar +x (cam x = -lidar y, cam y = -lidar z, cam z = lidar x).
FRONT = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def _yawed(deg):
    """Camera like FRONT but turned by ``deg`` about the lidar z axis (so views overlap partly)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    rz = np.array([[c, s, 0, 0], [-s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return FRONT @ rz


def _camera(name, token, lidar_to_camera):
    return CameraView(name=name, token=token, width=200, height=100, intrinsics=K, lidar_to_camera=lidar_to_camera)


def _frame(points, cameras, token="s0", labels=None):
    pts = np.asarray(points, dtype=np.float32)
    return Frame(token=token, dataset="test", points=pts, intensity=np.zeros(len(pts), np.float32),
                 cameras=cameras, labels=labels)


def _store(tmp_path, images: dict, feature_dim=None):
    te = None
    if feature_dim:
        te = np.random.default_rng(0).normal(size=(175, feature_dim)).astype(np.float32)
        te /= np.linalg.norm(te, axis=1, keepdims=True)
    store = TeacherStore.create(tmp_path / "teacher", "test", "nuscenes", 175, feature_dim, te)
    for token, img in images.items():
        store.write(token, img)
    return store


def _uniform(prompt, score=1.0, shape=(100, 200), features=None):
    """One mask covering the whole image."""
    return TeacherImage(np.ones(shape, np.uint16), np.array([prompt], np.int32), np.array([score], np.float32), features)


def test_pairings_superpoints_and_labels_single_camera(tmp_path):
    # Left half of the image = car mask (id 1), right half = road mask (id 2); one point in each, one
    # point outside the image, one behind the camera.
    mask = np.ones((100, 200), np.uint16)
    mask[:, 100:] = 2
    img = TeacherImage(mask, np.array([CAR, ROAD], np.int32), np.array([0.9, 0.8], np.float32))
    store = _store(tmp_path, {"cam0": img})
    pts = [[10, 3, 0], [10, -3, 0], [10, 40, 0], [-10, 0, 0]]  # +y is image left
    sp = compute_superpoints(_frame(pts, [_camera("CAM_FRONT", "cam0", FRONT)]), store, DICT,
                             ProjectionConfig(occlusion=False))
    assert sp.pair_point.tolist() == [0, 1]
    assert sp.pair_mask.tolist() == [1, 2]
    assert sp.pseudo_label.tolist() == [DICT.eval_index("car"), DICT.eval_index("driveable_surface"), 0, 0]
    assert sp.pseudo_prompt.tolist() == [CAR, ROAD, -1, -1]
    assert sp.superpoint.tolist() == [0, 1, -1, -1]
    assert sp.superpoint_prompt.tolist() == [CAR, ROAD]
    np.testing.assert_allclose(sp.pseudo_score[:2].astype(float), [0.9, 0.8], atol=1e-3)
    assert sp.stats["paired_fraction"] == 0.5


def test_vote_beats_last_camera_wins(tmp_path):
    # Three cameras see the same point: two say truck (0.6, 0.5), the last says car (0.9).
    cams = [_camera(f"C{i}", f"c{i}", _yawed(d)) for i, d in enumerate([0, 5, -5])]
    store = _store(tmp_path, {"c0": _uniform(TRUCK, 0.6), "c1": _uniform(TRUCK, 0.5), "c2": _uniform(CAR, 0.9)})
    frame = _frame([[10, 0, 0]], cams)
    vote = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera="vote"))
    last = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera="last"))
    assert len(vote.pair_point) == 3  # every pairing is kept for TMP
    assert vote.pseudo_label[0] == DICT.eval_index("truck")
    assert vote.superpoint_camera[vote.superpoint[0]] == 0  # best-scoring camera among those agreeing
    assert float(vote.pseudo_score[0]) == pytest.approx((0.6 + 0.5) / 3, abs=1e-3)
    assert last.pseudo_label[0] == DICT.eval_index("car")
    assert last.superpoint_camera[last.superpoint[0]] == 2


def test_ignore_prompts_give_label_zero_but_pair(tmp_path):
    store = _store(tmp_path, {"c0": _uniform(SKY)})
    sp = compute_superpoints(_frame([[10, 0, 1]], [_camera("C", "c0", FRONT)]), store, DICT, ProjectionConfig())
    assert sp.pseudo_label.tolist() == [0] and sp.superpoint.tolist() == [0] and sp.pseudo_prompt.tolist() == [SKY]


def test_occluded_point_does_not_inherit_foreground_mask(tmp_path):
    # A car mask bleeds over the whole image; the wall point 20 m behind the car's edge must not get it.
    store = _store(tmp_path, {"c0": _uniform(CAR)})
    frame = _frame([[5, 0, 0], [20, 0.1, 0]], [_camera("C", "c0", FRONT)])
    with_z = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=True, occlusion_radius_px=48))
    without = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False))
    assert with_z.pseudo_label.tolist() == [DICT.eval_index("car"), 0]
    assert with_z.stats["occluded_pairs"] == 1
    assert without.pseudo_label.tolist() == [DICT.eval_index("car")] * 2


def test_low_resolution_teacher_maps_are_scaled(tmp_path):
    mask = np.ones((25, 50), np.uint16)
    mask[:, 25:] = 2  # right half of a quarter-resolution map
    img = TeacherImage(mask, np.array([CAR, ROAD], np.int32), np.ones(2, np.float32))
    store = _store(tmp_path, {"c0": img})
    sp = compute_superpoints(_frame([[10, 3, 0], [10, -3, 0]], [_camera("C", "c0", FRONT)]), store, DICT,
                             ProjectionConfig(occlusion=False))
    assert sp.pseudo_prompt.tolist() == [CAR, ROAD]


def test_features_round_trip_and_corrupt_file(tmp_path):
    feats = np.eye(8, dtype=np.float32)[:1]
    store = _store(tmp_path, {"c0": _uniform(CAR, features=feats)}, feature_dim=8)
    sp = compute_superpoints(_frame([[10, 0, 0]], [_camera("C", "c0", FRONT)]), store, DICT, ProjectionConfig())
    path = tmp_path / "sp.npz"
    save_superpoints(path, sp)
    back = load_superpoints(path)
    np.testing.assert_array_equal(back.pseudo_label, sp.pseudo_label)
    np.testing.assert_allclose(back.superpoint_feature.astype(np.float32), feats)
    assert back.stats == sp.stats
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        load_superpoints(path)


class _Reader:
    """A tiny in-memory dataset: scan s2 has a camera without teacher output (a bad sample)."""

    def __init__(self):
        self.frames = {}
        for i in range(5):
            cam_token = "missing" if i == 2 else "c0"
            self.frames[f"s{i}"] = _frame([[10, 0, 0], [10, 1, 0], [10, -1 - 0.1 * i, 0]], [_camera("C", cam_token, FRONT)],
                                          token=f"s{i}", labels=np.array([4, 4, 4], np.uint8))

    def split_tokens(self, split):
        return list(self.frames)

    def load(self, token):
        return self.frames[token]


def test_runner_resumes_shards_and_lists_bad_samples(tmp_path):
    store = _store(tmp_path, {"c0": _uniform(CAR)})
    reader, out = _Reader(), tmp_path / "sp"
    tokens = reader.split_tokens("all")
    first = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train", shard=(0, 2), progress=False)
    second = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train", shard=(1, 2), progress=False)
    assert sorted(first.done + second.done) == ["s0", "s1", "s3", "s4"]
    assert set(first.done).isdisjoint(second.done)
    assert [t for t, _ in first.failed + second.failed] == ["s2"]
    assert "no output" in (first.failed + second.failed)[0][1]
    again = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train", progress=False)
    assert again.done == [] and sorted(again.skipped) == ["s0", "s1", "s3", "s4"]
    manifest = read_manifest(out, "train")
    assert manifest["num_samples"] == 4 and [m["token"] for m in manifest["missing"]] == ["s2"]
    assert "no output" in manifest["missing"][0]["reason"]
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "manifest_train.json").read_text())["version"] == 1
    # Another split into the same directory keeps its own manifest and leaves this one alone.
    run_superpoints(reader, tokens[:1], store, DICT, ProjectionConfig(), out, "val", progress=False)
    assert read_manifest(out, "val")["num_samples"] == 1 and read_manifest(out, "train")["num_samples"] == 4
    with pytest.raises(DataError, match="other settings \\(projection differ\\)"):
        run_superpoints(reader, tokens, store, DICT, ProjectionConfig(multi_camera="last"), out, "train", progress=False)
    redo = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(multi_camera="last"), out, "train",
                           overwrite=True, progress=False)
    assert sorted(redo.done) == ["s0", "s1", "s3", "s4"]
    with pytest.raises(DataError, match="split name"):
        run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "../x", progress=False)
    assert load_superpoints(sample_path(out, "s0")).pseudo_label.tolist() == [4, 4, 4]


def test_prompt_count_mismatch_is_refused(tmp_path):
    store = TeacherStore.create(tmp_path / "t", "x", "other", 10)
    with pytest.raises(DataError, match="10 prompts"):
        compute_superpoints(_frame([[10, 0, 0]], [_camera("C", "c0", FRONT)]), store, DICT, ProjectionConfig())


def test_vote_weighs_scores_not_camera_counts(tmp_path):
    # Two cameras say truck with low scores (0.2 + 0.3 = 0.5), one says car with 0.9: a count would pick truck,
    # the score-weighted vote picks car. Car is camera 0, so "last camera wins" says truck.
    cams = [_camera(f"C{i}", f"c{i}", _yawed(d)) for i, d in enumerate([0, 5, -5])]
    store = _store(tmp_path, {"c0": _uniform(CAR, 0.9), "c1": _uniform(TRUCK, 0.2), "c2": _uniform(TRUCK, 0.3)})
    frame = _frame([[10, 0, 0]], cams)
    vote = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera="vote"))
    last = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera="last"))
    assert vote.pseudo_label[0] == DICT.eval_index("car") and vote.pseudo_prompt[0] == CAR
    assert vote.superpoint_camera[vote.superpoint[0]] == 0
    assert float(vote.pseudo_score[0]) == pytest.approx(0.9 / 3, abs=1e-3)  # agreeing score over all 3 pairings
    assert last.pseudo_label[0] == DICT.eval_index("truck") and last.superpoint_camera[last.superpoint[0]] == 2


def test_teacher_maps_scaled_differently_in_rows_and_columns(tmp_path):
    # A 25 x 40 teacher map for the 100 x 200 camera: rows scale by 1/4, columns by 1/5. Every map pixel is its
    # own mask (id = 1 + row * 40 + col), so the mask a point pairs with gives the map pixel it was looked up at.
    # Camera pixel (v, u) of lidar point (10, y, z): u = 100 - 10 y, v = 50 - 10 z (K and FRONT above).
    mask = (np.arange(25 * 40).reshape(25, 40) + 1).astype(np.uint16)
    img = TeacherImage(mask, np.full(1000, CAR, np.int32), np.ones(1000, np.float32))
    store = _store(tmp_path, {"c0": img})
    pts = [[10, -3.75, -2.05],  # (u, v) = (137.5, 70.5): pixel (70, 137) -> map (70 * 25 // 100, 137 * 40 // 200)
           [10, 8.95, -4.55],   # (10.5, 95.5): pixel (95, 10) -> map (23, 2)
           [10, -9.95, -4.95]]  # (199.5, 99.5): the last pixel (99, 199) -> map (24, 39), the last map pixel
    sp = compute_superpoints(_frame(pts, [_camera("C", "c0", FRONT)]), store, DICT, ProjectionConfig(occlusion=False))
    assert sp.pair_point.tolist() == [0, 1, 2]
    assert sp.pair_pixel.tolist() == [[70, 137], [95, 10], [99, 199]]  # pairings keep the camera pixel
    assert sp.pair_mask.tolist() == [1 + 17 * 40 + 27, 1 + 23 * 40 + 2, 1 + 24 * 40 + 39]
