"""Voxel grouping and the centre samplers: grouping equals a floor-and-unique reference, grid sampling is
deterministic and spreads its centres, FPS is exact."""

import numpy as np
import pytest

from ssov_train.geometry.sampling import farthest_point_sample, grid_sample, group_by_voxel, search_voxel_size


def reference_voxels(points, size):
    keys = np.floor((points.astype(np.float64) - points.astype(np.float64).min(0)) / size).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.ravel()


@pytest.mark.parametrize("expected", [None, 1, 100_000])  # a tiny hint makes the hash table grow and restart
def test_grouping_matches_floor_and_unique(expected):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 3, (5000, 3)), rng.uniform(-80, 80, (1000, 3))]).astype(np.float32)
    groups = group_by_voxel(pts, 0.7, expected_voxels=expected)
    ref = reference_voxels(pts, groups.size)
    assert groups.num_voxels == ref.max() + 1
    assert len(np.unique(np.c_[ref, groups.voxel_of], axis=0)) == groups.num_voxels  # the same partition
    # voxels numbered by first appearance; points listed per voxel in input order
    assert np.array_equal(groups.voxel_of[groups.firsts()], np.arange(groups.num_voxels))
    assert np.all(np.diff(groups.firsts()) > 0)
    for v in (0, 7, groups.num_voxels - 1):
        members = groups.order[groups.starts[v]:groups.starts[v + 1]]
        assert np.array_equal(members, np.flatnonzero(groups.voxel_of == v))
        np.testing.assert_allclose(groups.means()[:, v], pts[members].astype(np.float64).mean(0))


def test_extent_beyond_21_bits_raises_the_voxel_size():
    pts = np.array([[0.0, 0.0, 0.0], [5e6, 0.0, 0.0], [1.0, 0.0, 0.0]])
    groups = group_by_voxel(pts, 0.1)
    assert groups.size >= 5e6 / (1 << 21)
    assert np.array_equal(groups.voxel_of, reference_voxels(pts, groups.size))
    with pytest.raises(ValueError, match="finite"):
        group_by_voxel(np.array([[0.0, np.inf, 0.0]]), 0.1)


def test_grid_sample_count_determinism_and_spread():
    rng = np.random.default_rng(10)
    pts = np.concatenate([rng.normal(0, 1, (8000, 3)), rng.uniform(-40, 40, (2000, 3))]).astype(np.float32)
    idx, voxels = grid_sample(pts, 400)
    assert len(np.unique(idx)) == len(idx) and abs(len(idx) - 400) <= 12
    assert np.array_equal(idx, grid_sample(pts.copy(), 400)[0])
    assert np.array_equal(voxels.voxel_of[idx], np.arange(len(idx)))  # each centre lies in its own voxel
    means = voxels.means()
    d = np.linalg.norm(pts[idx] - means.T, axis=1)
    for v in (0, 100, len(idx) - 1):  # the centre is the voxel's point nearest to the voxel mean
        members = voxels.order[voxels.starts[v]:voxels.starts[v + 1]]
        assert d[v] <= np.linalg.norm(pts[members] - means[:, v], axis=1).min() + 1e-6
    assert np.mean(np.abs(pts[idx]).max(1) < 3) < 0.5  # the dense blob (80% of points) is not over-sampled
    all_idx, none = grid_sample(pts[:50], 100)
    assert np.array_equal(all_idx, np.arange(50)) and none is None
    assert search_voxel_size(np.zeros((10, 3)), 3) == 1.0  # one location


def test_farthest_point_sampling_is_exact():
    rng = np.random.default_rng(3)
    pts = rng.normal(0, 5, (2000, 3)).astype(np.float32)
    fps = farthest_point_sample(pts, 50)
    assert fps[0] == 0 and len(np.unique(fps)) == 50
    d = np.linalg.norm(pts[:, None] - pts[fps][None], axis=2)
    for i in range(1, 50):  # each new point is the farthest from those chosen before it
        assert np.isclose(d[fps[i], :i].min(), d[:, :i].min(1).max())


def test_empty_and_invalid_requests():
    empty = group_by_voxel(np.zeros((0, 3)), 0.1)
    assert empty.num_voxels == 0 and len(empty.voxel_of) == 0
    pts = np.random.default_rng(4).normal(size=(100, 3))
    with pytest.raises(ValueError, match="m must be >= 1"):
        grid_sample(pts, 0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        search_voxel_size(pts, 0)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(pts, 5, start=100)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(pts, 5, start=-1)
