"""Voxelized training scans: label rules, TMP pairings on voxels, seeded augmentation, skip step, collate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ssov_train.data import Frame
from ssov_train.geometry.voxelize import VoxelConfig, voxelize
from ssov_train.superpoints import load_superpoints, sample_path
from ssov_train.errors import ConfigError
from ssov_train.features import IntensityNormalization
from ssov_train.training.data import (INTENSITY_SCALES, AugmentConfig, ScanDataset, augment_intensity, augment_points,
                                      collate_scans, skip_tokens)

VOXEL = VoxelConfig()


class _OneFrameReader:
    """A reader of hand-made frames keyed by token."""

    def __init__(self, frames: dict[str, Frame]):
        self.frames = frames

    def load(self, token: str) -> Frame:
        return self.frames[token]


def test_voxel_labels_majority_vs_first():
    # Three points in one voxel labelled 1, 2, 2 (the first point says 1); one point alone labelled 3.
    pts = np.array([[10.0, 0.01, 0.01], [10.02, 0.02, 0.02], [10.03, 0.03, 0.03], [20.0, 5.0, 1.0]], np.float32)
    frame = Frame(token="a", dataset="sample", points=pts, intensity=np.arange(4, dtype=np.float32),
                  labels=np.array([1, 2, 2, 3], np.uint8))
    reader = _OneFrameReader({"a": frame})
    scans = {rule: ScanDataset(reader, ["a"], VOXEL, "intensity", "gt", label_rule=rule)[0]
             for rule in ("majority", "first")}
    for rule, want in (("majority", [2, 3]), ("first", [1, 3])):
        scan = scans[rule]
        assert sorted(scan.labels[scan.point_to_voxel[[0, 3]]].tolist()) == want
        assert scan.features[scan.point_to_voxel[0], 0] == 0.0  # the first point's intensity represents the voxel
    kitti = ScanDataset(reader, ["a"], VOXEL, "intensity+1", "gt")[0]
    assert kitti.features[kitti.point_to_voxel[3], 0] == 4.0


def test_pseudo_labels_come_from_superpoints(world, reader):
    token = reader.split_tokens("train")[0]
    scan = ScanDataset(reader, [token], VOXEL, "intensity", "pseudo", superpoints_dir=world["superpoints"])[0]
    sp = load_superpoints(sample_path(world["superpoints"], token))
    expected = voxelize(reader.load(token).points, VOXEL, labels=sp.pseudo_label.astype(np.int64))
    assert np.array_equal(scan.labels, expected.labels) and (scan.labels > 0).any()


def test_annotation_free_reads_only_the_pseudo_labels(world, reader, monkeypatch):
    token = reader.split_tokens("train")[0]
    path = sample_path(world["superpoints"], token)
    with np.load(path) as z:
        assert {"superpoint_feature", "pair_point", "pseudo_label"} <= set(z.files)
    read = []
    getitem = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or getitem(self, key))
    scan = ScanDataset(reader, [token], VOXEL, "intensity", "pseudo", superpoints_dir=world["superpoints"])[0]
    assert sorted(read) == ["meta", "pseudo_label"] and scan.superpoints is None
    read.clear()
    sp = load_superpoints(path, arrays=["pseudo_label", "superpoint"])
    assert sorted(read) == ["meta", "pseudo_label", "superpoint"]
    assert sp.superpoint_feature is None and sp.pair_point is None and len(sp.superpoint) == sp.num_points
    read.clear()
    full = load_superpoints(path)  # the default still reads everything (TMP needs pairings and features)
    assert "superpoint_feature" in read and np.array_equal(full.pseudo_label, sp.pseudo_label)
    with pytest.raises(ValueError, match="unknown superpoints arrays"):
        load_superpoints(path, arrays=["pseudo_labels"])


def test_tmp_pairings_are_mapped_to_batched_voxels(world, reader):
    tokens = reader.split_tokens("train")[:2]
    ds = ScanDataset(reader, tokens, VOXEL, "intensity", "superpoints", superpoints_dir=world["superpoints"])
    scans = [ds[0], ds[1]]
    batch = collate_scans(scans)
    assert batch.labels is None and batch.tmp is not None
    assert batch.features.shape[0] == batch.coords.shape[0] == sum(len(s.coords) for s in scans)
    assert batch.batch.tolist() == [0] * len(scans[0].coords) + [1] * len(scans[1].coords)
    assert batch.spatial_shape == np.max([s.spatial_shape for s in scans], 0).tolist()
    expected_rows = np.concatenate([s.point_to_voxel[s.superpoints.pair_point] + off
                                    for s, off in zip(scans, batch.voxel_offsets)])
    assert np.array_equal(batch.tmp.pair_point.numpy(), expected_rows)
    expected_sp = sum(len(np.unique(s.superpoints.pair_superpoint)) for s in scans)
    assert batch.tmp.num_superpoints == expected_sp
    assert batch.tmp.superpoint_feature.shape[1] == 64  # the oracle teacher's feature dim
    rows = batch.scan_rows(1)
    assert np.array_equal(batch.coords[rows].numpy(), scans[1].coords)


def test_augmentation_is_a_function_of_seed_epoch_index():
    pts = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32) * 10
    frame = Frame(token="a", dataset="sample", points=pts, intensity=np.zeros(100, np.float32),
                  labels=np.ones(100, np.uint8))
    reader = _OneFrameReader({"a": frame, "b": frame})

    def coords(seed: int, epoch: int, index: int = 0, augment=AugmentConfig()):
        ds = ScanDataset(reader, ["a", "b"], VOXEL, "intensity", "gt", augment=augment, seed=seed)
        ds.set_epoch(epoch)
        return ds[index].coords

    assert np.array_equal(coords(1, 0), coords(1, 0))
    assert not np.array_equal(coords(1, 0), coords(1, 1))
    assert not np.array_equal(coords(1, 0), coords(2, 0))
    assert not np.array_equal(coords(1, 0, 0), coords(1, 0, 1))
    plain = voxelize(pts, VOXEL).coords
    assert np.array_equal(coords(1, 0, augment=None), plain)
    off = AugmentConfig(rotate=False, flip_x=False, flip_y=False)
    assert np.array_equal(coords(1, 0, augment=off), plain)
    rotated = augment_points(pts, AugmentConfig(flip_x=False, flip_y=False), np.random.default_rng(3))
    assert np.allclose(np.linalg.norm(rotated[:, :2], axis=1), np.linalg.norm(pts[:, :2], axis=1), atol=1e-4)
    assert np.array_equal(rotated[:, 2], pts[:, 2])


def test_intensity_augmentation_statistics():
    """Over many scans: the dropout rate, the three full scales about equally often, integer values on the integer
    scales, saturation at the full scale, and a monotone remapping (a brighter return stays at least as bright)."""
    rng = np.random.default_rng(0)
    source = rng.gamma(2.0, 20.0, 400).astype(np.float32)  # a 0..255-like sensor
    cfg = AugmentConfig(intensity_sensor=True, intensity_dropout=0.25)
    draws = 1200
    dropped, scales = 0, {s: 0 for s in INTENSITY_SCALES}
    order = np.argsort(source, kind="stable")
    for k in range(draws):
        out = augment_intensity(source, cfg, np.random.default_rng(k))
        assert out.shape == source.shape and out.dtype == np.float32
        if not out.any():
            dropped += 1
            continue
        scale = min(s for s in INTENSITY_SCALES if out.max() <= s)  # the smallest full scale that holds it
        scales[scale] += 1
        assert out.min() >= 0
        if scale > 1:
            assert np.array_equal(out, np.round(out))  # quantised to integers
        assert (np.diff(out[order]) >= 0).all()  # monotone in the source intensity
    # binomial bounds, ~4.5 sigma: dropout 0.25 of 1200 -> 300 +- 15
    assert abs(dropped - 0.25 * draws) < 4.5 * np.sqrt(draws * 0.25 * 0.75)
    kept = draws - dropped
    for scale, count in scales.items():  # each scale a third of the kept scans: 300 +- 16
        assert abs(count - kept / 3) < 4.5 * np.sqrt(kept / 3 * 2 / 3), (scale, count)
    # saturation: the source's 99th percentile maps to half the full scale times the gain, so it saturates when
    # the gain exceeds 2: with gains log-uniform in [1/8, 8] that is P(log g > log 2) = (3 - 1) / 6 = 1/3 of scans
    wide = AugmentConfig(intensity_sensor=True, intensity_gain=8.0, intensity_gamma=1.0)
    saturated = 0
    for k in range(600):
        out = augment_intensity(source, wide, np.random.default_rng(k))
        full = min(s for s in INTENSITY_SCALES if out.max() <= s)
        saturated += np.count_nonzero(out == full) >= 0.01 * len(source)
    assert abs(saturated / 600 - 1 / 3) < 0.07


def test_intensity_augmentation_off_keeps_the_intensity_and_the_geometry_draws():
    pts = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32) * 10
    intensity = np.random.default_rng(2).uniform(0, 255, 200).astype(np.float32)
    frame = Frame(token="a", dataset="sample", points=pts, intensity=intensity, labels=np.ones(200, np.uint8))
    reader = _OneFrameReader({"a": frame})
    norm = IntensityNormalization()

    def scan(augment):
        ds = ScanDataset(reader, ["a"], VOXEL, "normalized_intensity", "gt", augment=augment, seed=4,
                         normalization=norm)
        return ds[0]

    plain = scan(AugmentConfig())
    dropped = scan(AugmentConfig(intensity_dropout=1.0))
    sensor = scan(AugmentConfig(intensity_sensor=True))
    # the geometric augmentation draws do not move when intensity augmentation is switched on
    assert np.array_equal(plain.coords, dropped.coords) and np.array_equal(plain.coords, sensor.coords)
    assert (plain.features[:, 1] == 1).all() and (dropped.features == 0).all()  # dropout: geometry-only input
    assert not np.allclose(plain.features, sensor.features)
    with pytest.raises(ConfigError, match="intensity_dropout"):
        AugmentConfig(intensity_dropout=1.5)


def test_skip_step_keeps_every_kth_scene_or_scan():
    scene_of = {f"s{s}t{t}": f"scene{s}" for s in range(5) for t in range(3)}
    tokens = list(scene_of)
    reader = SimpleNamespace(nusc=SimpleNamespace(get=lambda table, t: {"scene_token": scene_of[t]}))
    kept = skip_tokens(tokens, 2, reader, "nuscenes")
    assert kept == [t for t in tokens if scene_of[t] in ("scene0", "scene2", "scene4")]
    assert skip_tokens(tokens, 1, reader) == tokens
    assert skip_tokens(tokens, 4, None, "semantickitti") == tokens[::4]
    with pytest.raises(Exception, match="dataset_skip_step"):
        skip_tokens(tokens, 0, reader)


def test_drop_cuboid_removes_a_box_and_respects_camera_pairings():
    import numpy as np

    from ssov_train.training.data import AugmentConfig, drop_cuboid_mask

    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 20, size=(5000, 3)).astype(np.float32)
    cfg = AugmentConfig(drop_cuboid=True, drop_cuboid_max_side=0.2, drop_cuboid_min_pairings=10)
    drops = [int((~drop_cuboid_mask(points, cfg, np.random.default_rng(s))).sum()) for s in range(20)]
    assert max(drops) > 0 and max(drops) < 0.02 * len(points)  # a cuboid of at most 10% of the extent per axis
    keep = drop_cuboid_mask(points, cfg, np.random.default_rng(3))
    dropped = points[~keep]
    if len(dropped):  # what is dropped is one axis-aligned box: every kept point lies outside its bounds
        lo, hi = dropped.min(0), dropped.max(0)
        assert not ((points[keep] >= lo) & (points[keep] <= hi)).all(1).any()
    # A camera whose only pairings would all be dropped vetoes every cuboid: nothing is removed.
    pair_point = np.arange(len(points))
    pair_camera = np.zeros(len(points), np.int64)
    strict = AugmentConfig(drop_cuboid=True, drop_cuboid_min_pairings=len(points))
    assert drop_cuboid_mask(points, strict, np.random.default_rng(1), pair_point, pair_camera).all()
