"""KDTree: exact k-NN against brute force (dense distances), as a point tree and over voxel groups."""

import numpy as np
import pytest

from ssov_train.geometry.kdtree import KDTree
from ssov_train.geometry.sampling import grid_sample


def brute_knn(points, queries, k, max_distance=np.inf):
    d = np.linalg.norm(queries[:, None, :3] - points[None, :, :3], axis=2)
    d = np.where(d < max_distance, d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, 1)
    if k > len(points):  # pad like the tree: index -1, distance inf
        pad = k - len(points)
        order = np.c_[order, np.full((len(queries), pad), -1)]
        dist = np.c_[dist, np.full((len(queries), pad), np.inf)]
    return np.where(np.isfinite(dist), order, -1), dist


def lidar_like(seed, n=6000):
    """Dense near the origin, sparse far out, a flat ground and a few far outliers: what AFI sees."""
    rng = np.random.default_rng(seed)
    r = rng.exponential(12.0, n) + 1.0
    a = rng.uniform(0, 2 * np.pi, n)
    z = np.where(rng.random(n) < 0.5, -1.8, rng.uniform(-1.8, 3.0, n))
    pts = np.c_[r * np.cos(a), r * np.sin(a), z]
    pts[:5] = rng.uniform(-300, 300, (5, 3))
    return pts.astype(np.float32)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("k", [1, 6, 20])
def test_knn_equals_brute_force(grouped, k):
    pts = lidar_like(0)
    groups = None
    if grouped:
        _, voxels = grid_sample(pts, 300)
        groups = (voxels.order, voxels.starts)
    tree = KDTree(pts, groups=groups)
    rng = np.random.default_rng(1)
    queries = np.concatenate([pts[rng.choice(len(pts), 400)], rng.uniform(-60, 60, (200, 3)),
                              rng.uniform(-1000, 1000, (20, 3))])  # on points, between, far outside
    idx, dist = tree.query(queries, k)
    ref_idx, ref_dist = brute_knn(pts.astype(np.float64), queries.astype(np.float64), k)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12)
    # indices may differ only between equidistant points
    same = idx == ref_idx
    assert np.all(same | np.isclose(dist, ref_dist))
    assert same.mean() > 0.999
    assert np.all(np.diff(dist, axis=1) >= 0)  # nearest first


def test_max_distance_bounds_and_pads_with_minus_one():
    pts = lidar_like(2, 3000)
    tree = KDTree(pts)
    q = pts[:500] + np.float32(0.3)
    idx, dist = tree.query(q, 4, max_distance=0.5)
    ref_idx, ref_dist = brute_knn(pts.astype(np.float64), q.astype(np.float64), 4, 0.5)
    np.testing.assert_allclose(dist, ref_dist)
    assert np.array_equal(idx < 0, np.isinf(dist)) and (idx < 0).any() and (idx >= 0).any()
    assert dist[np.isfinite(dist)].max() < 0.5


def test_small_empty_duplicate_and_bad_inputs():
    pts = np.zeros((50, 3))  # one location: nothing to split, one big leaf
    idx, dist = KDTree(pts).query(pts[:3], 5)
    assert np.all(dist == 0) and len(np.unique(idx)) == 5
    idx, dist = KDTree(pts[:2]).query(np.ones((1, 3)), 4)  # k > N: padded
    assert idx.tolist() == [[0, 1, -1, -1]] and np.isinf(dist[0, 2:]).all()
    idx, _ = KDTree(np.zeros((0, 3))).query(np.ones((2, 3)), 3)
    assert (idx == -1).all()
    a, _ = KDTree(pts).query((np.zeros(2), np.zeros(2), np.zeros(2)), 1)  # x, y, z arrays work too
    assert a.shape == (2, 1)
    with pytest.raises(ValueError, match="finite"):
        KDTree(np.array([[0.0, np.nan, 1.0]]))
    for order, starts in ((np.arange(10), [0, 10]),  # does not cover the 50 points
                          (np.arange(50), [0, 20, 20, 50]),  # an empty group
                          (np.r_[np.arange(49), 0], [0, 50])):  # a point twice, one missing
        with pytest.raises(ValueError, match="groups"):
            KDTree(pts, groups=(order, np.array(starts)))


def test_query_arguments_are_checked():
    tree = KDTree(lidar_like(5, 200))
    with pytest.raises(ValueError, match="max_distance"):
        tree.query(np.zeros((1, 3)), 2, max_distance=-1.0)
    with pytest.raises(ValueError, match="max_distance"):
        tree.query(np.zeros((1, 3)), 2, max_distance=float("nan"))
    with pytest.raises(ValueError, match="one length"):
        tree.query((np.zeros(3), np.zeros(2), np.zeros(3)), 1)
    with pytest.raises(ValueError, match="overflow"):
        KDTree(np.array([[1e160, 0.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("grouped", [False, True])
def test_indices_are_int64_and_every_box_bounds_exactly_its_points(grouped):
    """Queries stay exact with boxes that are too large (they only prune less), so the boxes are checked
    directly: each group's box is its points' min / max, and the root box is the cloud's bounding box."""
    pts = lidar_like(5, 3000)
    groups = None
    if grouped:
        _, voxels = grid_sample(pts, 200)
        groups = (voxels.order, voxels.starts)
    tree = KDTree(pts, groups=groups)
    idx, _ = tree.query(pts[:10], 3)
    assert idx.dtype == np.int64
    order, starts = groups if grouped else (np.arange(len(pts)), np.arange(len(pts) + 1))
    members = [order[starts[g]:starts[g + 1]] for g in range(len(starts) - 1)]
    p = pts.astype(np.float64)
    expected = {tuple(np.r_[p[m].min(0), p[m].max(0)]) for m in members}
    assert {tuple(b) for b in tree._item_boxes} == expected
    np.testing.assert_array_equal(tree._boxes[0], np.r_[p.min(0), p.max(0)])
    assert tree._depth > 0 and len(tree._nodes) > 1  # a tree, not one leaf
