"""The shared voxelizer: round trip, representative points, label rules, cylindrical bins, bad input, real sample."""

from __future__ import annotations

import numpy as np
import pytest

from ssov_train.errors import ConfigError, DataError
from ssov_train.geometry.voxelize import GRID_ALIGN, VoxelConfig, voxelize


def _cloud(n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform([-30, -30, -3], [30, 30, 3], size=(n, 3))).astype(np.float32)


def _cell_bounds(points: np.ndarray, cfg: VoxelConfig) -> np.ndarray:
    """Per-point (rho, phi deg, z) or (x, y, z) in float64, in voxel units."""
    p = points.astype(np.float64)
    if cfg.mode == "cylindrical":
        p = np.stack([np.hypot(p[:, 0], p[:, 1]), np.degrees(np.arctan2(p[:, 1], p[:, 0])), p[:, 2]], 1)
    return p / np.asarray(cfg.size)


@pytest.mark.parametrize("cfg", [VoxelConfig("cylindrical"), VoxelConfig("cartesian", (0.5, 0.5, 0.25))])
def test_round_trip(cfg):
    pts = _cloud()
    feats = np.arange(len(pts), dtype=np.float32)[:, None] * [1, -1]
    v = voxelize(pts, cfg, features=feats)
    assert v.coords.dtype == np.int32 and v.coords.flags.c_contiguous and (v.coords >= 0).all()
    assert (v.offset % GRID_ALIGN == 0).all()
    assert all(s % GRID_ALIGN == 0 for s in v.spatial_shape) and (v.coords < v.spatial_shape).all()
    assert len(np.unique(v.coords, axis=0)) == v.num_voxels
    # every point lies in its voxel's cell (float32 edge rounding tolerated)
    u = _cell_bounds(pts, cfg)
    absolute = v.coords[v.point_to_voxel] + v.offset
    assert ((u >= absolute - 1e-4) & (u < absolute + 1 + 1e-4)).all()
    # representative = first point of its voxel, carrying its features
    first = np.full(v.num_voxels, len(pts))
    np.minimum.at(first, v.point_to_voxel, np.arange(len(pts)))
    assert np.array_equal(v.voxel_to_point, first)
    assert np.array_equal(v.point_to_voxel[v.voxel_to_point], np.arange(v.num_voxels))
    assert np.array_equal(v.features, feats[v.voxel_to_point].astype(np.float32))
    # per-voxel predictions come back per point through the inverse map
    pred = v.coords.astype(np.int64) @ np.array([1_000_003, 1_009, 1])
    assert np.array_equal(v.to_points(pred), (v.coords[v.point_to_voxel].astype(np.int64) @ [1_000_003, 1_009, 1]))


def test_label_rules_on_crafted_voxels():
    cfg = VoxelConfig("cartesian", (1.0, 1.0, 1.0))
    a, b, c, d = (0.5, 0.5, 0.5), (1.5, 0.5, 0.5), (2.5, 0.5, 0.5), (3.5, 0.5, 0.5)
    # interleaved voxels: A = [0, 3, 5, 5], B = [4, 2, 2, 4] (tie), C = [0, 0], D = [7]
    pts = np.array([a, b, c, a, b, a, b, c, a, b, d], dtype=np.float32)
    labels = np.array([0, 4, 0, 3, 2, 5, 2, 0, 5, 4, 7], dtype=np.uint8)
    first = voxelize(pts, cfg, labels=labels, label_rule="first")
    major = voxelize(pts, cfg, labels=labels, label_rule="majority", ignore_index=0)
    assert first.num_voxels == 4 and np.array_equal(first.coords[:, 0], [0, 1, 2, 3])
    assert first.labels.tolist() == [0, 4, 0, 7]
    assert major.labels.tolist() == [5, 2, 0, 7]
    assert major.labels.dtype == np.uint8
    # ignore_index is a parameter, not a hard-coded 0
    assert voxelize(pts, cfg, labels=labels, ignore_index=5).labels.tolist() == [0, 2, 0, 7]


def test_cylindrical_bins_of_known_points():
    pts = np.array([[10.05, 0, 0.05], [0, 10.05, 0.05], [-10.05, 0, 0.05], [0, -10.05, -0.15]], dtype=np.float32)
    v = voxelize(pts, VoxelConfig("cylindrical"))
    absolute = v.coords[v.point_to_voxel] + v.offset
    assert absolute.tolist() == [[100, 0, 0], [100, 90, 0], [100, 180, 0], [100, -90, -2]]
    assert v.offset.tolist() == [96, -96, -16]
    assert v.spatial_shape == (16, 288, 32)  # z: -2 .. 0 shifted by 16 -> 17 cells, rounded up to 32


@pytest.mark.parametrize("bad", [
    np.array([[0, 0, np.nan]], dtype=np.float32),
    np.array([[np.inf, 0, 0]], dtype=np.float32),
    np.zeros((0, 3), dtype=np.float32),
    np.zeros((5, 2), dtype=np.float32),
])
def test_bad_points_are_rejected(bad):
    with pytest.raises(DataError):
        voxelize(bad, VoxelConfig())


def test_bad_features_labels_and_config_are_rejected():
    pts = _cloud(10)
    with pytest.raises(DataError, match="NaN"):
        voxelize(pts, VoxelConfig(), features=np.full(10, np.nan))
    with pytest.raises(DataError, match="labels"):
        voxelize(pts, VoxelConfig(), labels=np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError, match="beyond int32"):
        voxelize(np.array([[1e30, 0, 0]], dtype=np.float32), VoxelConfig("cartesian"))
    with pytest.raises(ConfigError):
        VoxelConfig("spherical")
    with pytest.raises(ConfigError):
        VoxelConfig("cartesian", (0.1, 0.0, 0.1))
    with pytest.raises(ConfigError):
        voxelize(pts, VoxelConfig(), labels=np.zeros(10, dtype=np.uint8), label_rule="mean")


def test_default_sizes():
    assert VoxelConfig().size == (0.1, 1.0, 0.1)
    assert VoxelConfig("cartesian").size == (0.1, 0.1, 0.1)


def test_real_nuscenes_sweep_voxel_count(sample_dir):
    sweep = np.fromfile(next(sample_dir.glob("*.pcd.bin")), dtype=np.float32).reshape(-1, 5)
    v = voxelize(sweep[:, :3], VoxelConfig("cylindrical", (0.1, 1.0, 0.1)), features=sweep[:, 3])
    assert len(sweep) == 34688
    assert v.num_voxels == 15947  # deps.md: the reference (torch, float32) grid on this sweep
    assert v.features.shape == (15947, 1)
