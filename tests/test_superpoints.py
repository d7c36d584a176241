"""Superpoints on crafted scenes: pairings, the multi-camera vote, occlusion, storage and the batch runner."""

import json

import numpy as np
import pytest

from ssov_train.data.frame import CameraView, Frame
from ssov_train.errors import DataError
from ssov_train.geometry.projection import ProjectionConfig
from ssov_train.jobs import Interrupted
from ssov_train.superpoints import (compute_superpoints, iter_superpoints, load_superpoints, manifest_path,
                                    read_manifest, run_per_sample, run_superpoints, sample_path, save_superpoints,
                                    shard_tokens)
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
    with pytest.raises(DataError, match=r"^superpoints file .*sp.npz is corrupt"):
        load_superpoints(path)
    with pytest.raises(DataError, match=r"^superpoints missing: .*nothing.npz$"):
        load_superpoints(tmp_path / "nothing.npz")
    from ssov_train.io import save_npz_atomic

    save_npz_atomic(tmp_path / "other.npz", meta=np.array(json.dumps({"format": "ssov-teacher", "version": 1})))
    with pytest.raises(DataError, match=r"other.npz: not an ssov superpoints file of version 1$"):
        load_superpoints(tmp_path / "other.npz")


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


# ---- a two-camera scene worked out by hand ---------------------------------------------------------------------
# C0 looks along lidar +x, C1 is turned 60 degrees to the left (lidar +y). With K and FRONT above:
#   p0 (10, 0, 0)      -> C0 pixel (50, 100)
#   p1 (10, 5.77, 0)   -> C0 pixel (50, 42) and C1 pixel (50, 157)   (30 degrees: both cameras)
#   p2 (5, 8.66, 0)    -> C1 pixel (50, 100)                         (60 degrees: C1 only)
#   p3 (-10, 0, 0)     -> behind both cameras
# C0: columns < 100 = mask 1 (barrier 0.6), the rest = mask 2 (road 0.8).
# C1: columns < 120 = mask 1 (sky, an ignore prompt, 0.5), the rest = mask 2 (truck 0.9).
BARRIER = 86  # a barrier prompt (evaluation class 1)
TWO_CAM_POINTS = [[10, 0, 0], [10, 5.77, 0], [5, 8.66, 0], [-10, 0, 0]]


def _split_mask(col, prompts, scores, features=None):
    mask = np.ones((100, 200), np.uint16)
    mask[:, col:] = 2
    return TeacherImage(mask, np.array(prompts, np.int32), np.array(scores, np.float32), features)


def _two_camera_scene(tmp_path, features=(True, True)):
    feats = np.eye(4, dtype=np.float32)
    images = {"c0": _split_mask(100, [BARRIER, ROAD], [0.6, 0.8], feats[:2] if features[0] else None),
              "c1": _split_mask(120, [SKY, TRUCK], [0.5, 0.9], feats[2:] if features[1] else None)}
    store = _store(tmp_path, images, feature_dim=4)
    cams = [_camera("C0", "c0", _yawed(0)), _camera("C1", "c1", _yawed(60))]
    return _frame(TWO_CAM_POINTS, cams, token="scene/1"), store


def test_two_camera_scene_pairings_labels_and_stats(tmp_path):
    frame, store = _two_camera_scene(tmp_path)
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False))
    assert sp.pair_point.tolist() == [0, 1, 1, 2]
    assert sp.pair_camera.tolist() == [0, 0, 1, 1]
    assert sp.pair_pixel.tolist() == [[50, 100], [50, 42], [50, 157], [50, 100]]
    assert sp.pair_mask.tolist() == [2, 1, 2, 1]
    # superpoint ids run over both cameras: C0's masks 1, 2 are 0, 1; C1's masks 1, 2 are 2, 3
    assert sp.pair_superpoint.tolist() == [1, 0, 3, 2]
    assert sp.superpoint_camera.tolist() == [0, 0, 1, 1]
    assert sp.superpoint_mask.tolist() == [1, 2, 1, 2]
    assert sp.superpoint_prompt.tolist() == [BARRIER, ROAD, SKY, TRUCK]
    np.testing.assert_allclose(sp.superpoint_score, [0.6, 0.8, 0.5, 0.9])
    np.testing.assert_array_equal(sp.superpoint_feature, np.eye(4))
    # p1: barrier 0.6 against truck 0.9 -> truck, confidence 0.9 / 2 pairings; p2: sky -> ignore (0), still paired
    assert sp.pseudo_label.tolist() == [DICT.eval_index("driveable_surface"), DICT.eval_index("truck"), 0, 0]
    assert sp.pseudo_prompt.tolist() == [ROAD, TRUCK, SKY, -1]
    assert sp.superpoint.tolist() == [1, 3, 2, -1]
    np.testing.assert_allclose(sp.pseudo_score.astype(float), [0.8, 0.45, 0.5, 0.0], atol=1e-3)
    assert sp.stats == {"num_pairings": 4, "num_superpoints": 4, "paired_fraction": 0.75,
                        "labelled_fraction": 0.5, "multi_camera_points": 1}
    assert (sp.token, sp.num_points, sp.cameras, sp.image_tokens) == ("scene/1", 4, ["C0", "C1"], ["c0", "c1"])
    assert sp.num_superpoints == 4
    # "last": the later camera decides p1 (truck 0.9 from C1) and its confidence is that pairing's score
    last = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera="last"))
    assert last.superpoint.tolist() == [1, 3, 2, -1]
    np.testing.assert_allclose(last.pseudo_score.astype(float), [0.8, 0.9, 0.5, 0.0], atol=1e-3)
    with_z = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=True))
    assert with_z.stats["occluded_pairs"] == 0 and with_z.pair_point.tolist() == [0, 1, 1, 2]


def test_barrier_is_class_one_and_counts_as_labelled(tmp_path):
    # Evaluation class 1 is a real class: labelled_fraction counts labels > 0, not > 1.
    frame, store = _two_camera_scene(tmp_path)
    frame.cameras = frame.cameras[:1]
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False))
    assert sp.pseudo_label.tolist() == [DICT.eval_index("driveable_surface"), 1, 0, 0]
    assert sp.stats["labelled_fraction"] == 0.5 and sp.stats["multi_camera_points"] == 0


def test_dtypes_of_every_array(tmp_path):
    frame, store = _two_camera_scene(tmp_path)
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False))
    expected = {"pair_point": np.int32, "pair_camera": np.uint8, "pair_pixel": np.uint16, "pair_mask": np.uint16,
                "pair_superpoint": np.int32, "superpoint_camera": np.uint8, "superpoint_mask": np.uint16,
                "superpoint_prompt": np.int32, "superpoint_score": np.float32, "superpoint_feature": np.float16,
                "superpoint": np.int32, "pseudo_label": np.uint8, "pseudo_prompt": np.int16,
                "pseudo_score": np.float16}
    assert {k: getattr(sp, k).dtype for k in expected} == {k: np.dtype(v) for k, v in expected.items()}
    assert sp.pair_pixel.shape == (4, 2)


def test_features_only_when_every_camera_has_them(tmp_path):
    frame, store = _two_camera_scene(tmp_path, features=(True, False))
    assert compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False)).superpoint_feature is None


def test_scene_seen_by_no_camera_has_empty_arrays(tmp_path):
    frame, store = _two_camera_scene(tmp_path)
    frame.points = frame.points[3:]  # only the point behind both cameras
    frame.intensity = frame.intensity[3:]
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig())
    assert sp.pair_point.shape == (0,) and sp.pair_pixel.shape == (0, 2) and sp.pair_pixel.dtype == np.uint16
    assert sp.pseudo_label.tolist() == [0] and sp.superpoint.tolist() == [-1] and sp.pseudo_prompt.tolist() == [-1]
    assert sp.stats["num_pairings"] == 0 and sp.stats["paired_fraction"] == 0.0


def test_frame_without_cameras_gives_typed_empty_arrays(tmp_path):
    store = _store(tmp_path, {})
    sp = compute_superpoints(_frame([[10, 0, 0]], []), store, DICT, ProjectionConfig())
    assert sp.pair_point.dtype == np.int32 and sp.pair_pixel.shape == (0, 2) and sp.pair_pixel.dtype == np.uint16
    assert sp.superpoint_score.dtype == np.float32 and sp.superpoint_feature is None
    assert sp.pseudo_label.tolist() == [0] and sp.pseudo_score.dtype == np.float16


def test_vote_tie_goes_to_the_lower_camera_and_other_points_are_independent(tmp_path):
    # p0 is seen by C0 and C1 with the same class and score: C0's superpoint wins. p1 and p2 (one camera each)
    # keep their own pairings: the first-pairing-per-point selection must not mix points.
    cams = [_camera("C0", "c0", _yawed(0)), _camera("C1", "c1", _yawed(60))]
    store = _store(tmp_path, {"c0": _uniform(CAR, 0.7), "c1": _uniform(CAR, 0.7)})
    frame = _frame([[10, 5.77, 0], [10, 0, 0], [5, 8.66, 0]], cams)
    for rule, camera_of_p0 in (("vote", 0), ("last", 1)):
        sp = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=False, multi_camera=rule))
        assert sp.superpoint_camera[sp.superpoint].tolist() == [camera_of_p0, 0, 1], rule
        assert sp.pseudo_label.tolist() == [DICT.eval_index("car")] * 3
    # vote confidence: the agreeing score summed over the point's pairings, divided by their number
    np.testing.assert_allclose(sp.pseudo_score.astype(float), [0.7, 0.7, 0.7], atol=1e-3)


# ---- storage ----------------------------------------------------------------------------------------------------

def test_save_load_keeps_every_field(tmp_path):
    frame, store = _two_camera_scene(tmp_path)
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig())
    save_superpoints(tmp_path / "sp.npz", sp)
    back = load_superpoints(tmp_path / "sp.npz")
    assert (back.token, back.num_points, back.cameras, back.image_tokens) == ("scene/1", 4, ["C0", "C1"], ["c0", "c1"])
    assert back.stats == sp.stats and back.stats["occluded_pairs"] == 0
    for name in ("pair_point", "pair_camera", "pair_pixel", "pair_mask", "pair_superpoint", "superpoint_camera",
                 "superpoint_mask", "superpoint_prompt", "superpoint_score", "superpoint_feature", "superpoint",
                 "pseudo_label", "pseudo_prompt", "pseudo_score"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sp, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(sp, name).dtype, name


def test_load_selected_arrays_only(tmp_path):
    frame, store = _two_camera_scene(tmp_path)
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig())
    save_superpoints(tmp_path / "sp.npz", sp)
    back = load_superpoints(tmp_path / "sp.npz", arrays=["pseudo_label"])
    assert back.pseudo_label.tolist() == sp.pseudo_label.tolist() and back.token == "scene/1"
    assert back.pair_point is None and back.superpoint_feature is None and back.pseudo_score is None
    with pytest.raises(ValueError, match=r"unknown superpoints arrays \['labels', 'points'\]; known: \['pair_point'"):
        load_superpoints(tmp_path / "sp.npz", arrays=["pseudo_label", "points", "labels"])


def test_load_file_lacking_arrays(tmp_path):
    from ssov_train.io import save_npz_atomic

    frame, store = _two_camera_scene(tmp_path, features=(False, False))
    arrays = compute_superpoints(frame, store, DICT, ProjectionConfig()).to_arrays()
    assert "superpoint_feature" not in arrays  # None is not stored ...
    save_npz_atomic(tmp_path / "ok.npz", **arrays)
    assert load_superpoints(tmp_path / "ok.npz").superpoint_feature is None  # ... and reads back as None
    del arrays["pair_mask"], arrays["pseudo_score"]
    save_npz_atomic(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=r"bad.npz lacks the arrays \['pair_mask', 'pseudo_score'\]"):
        load_superpoints(tmp_path / "bad.npz")
    assert load_superpoints(tmp_path / "bad.npz", arrays=["pseudo_label"]).pseudo_label.tolist() == [11, 10, 0, 0]


# ---- batch runner -----------------------------------------------------------------------------------------------

def test_shard_tokens_round_robin_and_bad_shards():
    tokens = ["a", "b", "c", "d", "e"]
    assert shard_tokens(tokens, (0, 2)) == ["a", "c", "e"] and shard_tokens(tokens, (1, 2)) == ["b", "d"]
    assert shard_tokens(tokens, (0, 1)) == tokens
    for bad in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match=rf"invalid shard {bad[0]}/{bad[1]}: need 0 <= i < n"):
            shard_tokens(tokens, bad)


def test_runner_files_manifest_and_settings(tmp_path, capsys):
    store = _store(tmp_path, {"c0": _uniform(CAR)})
    reader, out = _Reader(), tmp_path / "sp"
    tokens = ["s0", "s1", "s2", "s3"]
    first = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train", shard=(1, 2),
                            run_info={"note": "x"})
    assert first.done == ["s1", "s3"] and first.skipped == [] and first.failed == [] and first.seconds > 0
    assert sample_path(out, "a/b") == out / "samples" / "a_b.npz"
    # the other shard's samples are listed as not computed yet
    assert read_manifest(out, "train") == {
        "format": "ssov-superpoints", "version": 1, "split": "train", "note": "x", "num_samples": 2, "num_missing": 2,
        "samples": [{"token": "s1", "file": "samples/s1.npz"}, {"token": "s3", "file": "samples/s3.npz"}],
        "missing": [{"token": "s0", "reason": "not computed yet (another shard?)"},
                    {"token": "s2", "reason": "not computed yet (another shard?)"}]}
    assert json.loads((out / "settings.json").read_text()) == {
        "projection": {"min_depth": 1.0, "occlusion": True, "occlusion_radius_px": 6.0, "occlusion_rel_tol": 0.1,
                       "occlusion_abs_tol": 0.5, "multi_camera": "vote"},
        "teacher": "test", "vocabulary": "nuscenes", "num_prompts": 175}
    capsys.readouterr()
    second = run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train", shard=(0, 2))
    assert second.done == ["s0"] and second.failed == [("s2", "teacher test has no output for C image missing")]
    assert "skipped sample s2: teacher test has no output for C image missing" in capsys.readouterr().err
    assert [s.token for s in iter_superpoints(out, "train")] == ["s0", "s1", "s3"]
    assert next(iter_superpoints(out, "train")).pseudo_label.tolist() == [DICT.eval_index("car")] * 3
    # another teacher into the same directory is refused, naming what differs; --overwrite rewrites the settings
    other = _store(tmp_path / "o", {"c0": _uniform(CAR)})
    other.name = "other"
    with pytest.raises(DataError, match=r"sp holds superpoints made with other settings \(projection, teacher differ\); "
                                        "use another output directory, or --overwrite to recompute everything"):
        run_superpoints(reader, tokens, other, DICT, ProjectionConfig(multi_camera="last"), out, "train")
    run_superpoints(reader, tokens[:1], other, DICT, ProjectionConfig(), out, "train", overwrite=True)
    assert json.loads((out / "settings.json").read_text())["teacher"] == "other"
    (out / "settings.json").write_text("{")
    with pytest.raises(DataError, match=r"settings.json: invalid JSON"):
        run_superpoints(reader, tokens, store, DICT, ProjectionConfig(), out, "train")


def test_runner_interrupted_keeps_finished_samples(tmp_path):
    calls = []

    def compute(token, path):
        if token == "s2":
            raise KeyboardInterrupt
        calls.append(token)
        path.write_text(token)

    with pytest.raises(Interrupted, match=r"after 1 widgets samples computed \(1 already present\)") as exc:
        (tmp_path / "samples").mkdir()
        sample_path(tmp_path, "s0").write_text("old")
        run_per_sample(["s0", "s1", "s2", "s3"], compute, tmp_path, {"k": 1}, {}, "widgets", progress=False)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert calls == ["s1"] and not (tmp_path / "manifest_all.json").exists()


def test_runner_other_errors_propagate(tmp_path):
    def compute(token, path):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_per_sample(["s0"], compute, tmp_path, {}, {}, "widgets", progress=False)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match=r"no superpoints for split 'val' at .* \(missing manifest_val.json\); "
                                        "run `ssov-train superpoints` first"):
        read_manifest(tmp_path, "val")
    (tmp_path / "manifest_val.json").write_text("[")
    with pytest.raises(DataError, match=r"manifest_val.json: invalid JSON"):
        read_manifest(tmp_path, "val")
    assert manifest_path(tmp_path, "a.B-c_9") == tmp_path / "manifest_a.B-c_9.json"
    for bad in ["../x", "a b", ""]:
        with pytest.raises(DataError, match=r"split name .* must be letters, digits, '_', '-' or '.'"):
            manifest_path(tmp_path, bad)


def test_occluded_pairs_are_summed_over_cameras(tmp_path):
    # C0 sees the wall point behind the car point (occluded); C1 (turned 60 degrees) sees p2 alone. The scan's
    # count is C0's 1 + C1's 0.
    store = _store(tmp_path, {"c0": _uniform(CAR), "c1": _uniform(TRUCK)})
    cams = [_camera("C0", "c0", _yawed(0)), _camera("C1", "c1", _yawed(60))]
    frame = _frame([[5, 0, 0], [20, 0.1, 0], [5, 8.66, 0]], cams)
    sp = compute_superpoints(frame, store, DICT, ProjectionConfig(occlusion=True, occlusion_radius_px=48))
    assert sp.stats["occluded_pairs"] == 1
    assert sp.pseudo_label.tolist() == [DICT.eval_index("car"), 0, DICT.eval_index("truck")]


def test_load_file_without_stats(tmp_path):
    from ssov_train.io import save_npz_atomic

    frame, store = _two_camera_scene(tmp_path)
    arrays = compute_superpoints(frame, store, DICT, ProjectionConfig()).to_arrays()
    meta = json.loads(str(arrays["meta"]))
    del meta["stats"]  # a file written without stats reads back with empty stats
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(tmp_path / "sp.npz", **arrays)
    assert load_superpoints(tmp_path / "sp.npz").stats == {}


def test_runner_defaults_split_all_with_a_progress_bar(tmp_path, capsys):
    store = _store(tmp_path, {"c0": _uniform(CAR)})
    result = run_superpoints(_Reader(), ["s0", "s1"], store, DICT, ProjectionConfig(), tmp_path / "sp")
    assert result.done == ["s0", "s1"] and read_manifest(tmp_path / "sp", "all")["num_samples"] == 2
    err = capsys.readouterr().err
    assert "superpoints 1/1: 100%" in err and "2/2" in err and "scan/s" in err
    again = run_superpoints(_Reader(), ["s0", "s1"], store, DICT, ProjectionConfig(), tmp_path / "sp", overwrite=True,
                            progress=False)
    assert again.done == ["s0", "s1"] and capsys.readouterr().err == ""  # progress=False: no bar


def test_run_per_sample_defaults_and_timing(tmp_path, capsys):
    import time

    def compute(token, path):
        path.write_text(token)

    before = time.perf_counter()
    result = run_per_sample(["s0", "s1", "s2"], compute, tmp_path / "a" / "b", {"k": 1}, {}, "widgets", shard=(1, 3))
    elapsed = time.perf_counter() - before
    assert result.done == ["s1"] and 0 < result.seconds <= elapsed
    assert read_manifest(tmp_path / "a" / "b", "all")["num_missing"] == 2
    assert "widgets 2/3: 100%" in capsys.readouterr().err


def test_pixels_without_a_mask_do_not_pair(tmp_path):
    # Mask id 0 = no mask: the left half of the image is uncovered, so only the right-half point pairs.
    mask = np.zeros((100, 200), np.uint16)
    mask[:, 100:] = 1
    store = _store(tmp_path, {"c0": TeacherImage(mask, np.array([CAR], np.int32), np.ones(1, np.float32))})
    sp = compute_superpoints(_frame([[10, 3, 0], [10, -3, 0]], [_camera("C", "c0", FRONT)]), store, DICT,
                             ProjectionConfig(occlusion=False))
    assert sp.pair_point.tolist() == [1] and sp.superpoint_mask.tolist() == [1]
    assert sp.pseudo_label.tolist() == [0, DICT.eval_index("car")]


def test_teacher_map_taller_than_wide(tmp_path):
    # A 50 x 20 map for the 100 x 200 camera: rows scale by 1/2, columns by 1/10. Pixel (95, 10) of lidar point
    # (10, 8.95, -4.55) -> map pixel (47, 1); the row index (47) is beyond the map's width (20).
    mask = (np.arange(50 * 20).reshape(50, 20) + 1).astype(np.uint16)
    store = _store(tmp_path, {"c0": TeacherImage(mask, np.full(1000, CAR, np.int32), np.ones(1000, np.float32))})
    sp = compute_superpoints(_frame([[10, 8.95, -4.55]], [_camera("C", "c0", FRONT)]), store, DICT,
                             ProjectionConfig(occlusion=False))
    assert sp.pair_pixel.tolist() == [[95, 10]] and sp.pair_mask.tolist() == [1 + 47 * 20 + 1]
