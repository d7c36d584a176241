"""Voxel grouping and the centre samplers: grouping equals a floor-and-unique reference on the lattice of the
points' frame, grid sampling is deterministic, spreads its centres and is stable when a few points are dropped,
FPS is exact."""

import numpy as np
import pytest

from ssov_train.geometry.sampling import farthest_point_sample, grid_sample, group_by_voxel, search_voxel_size


def reference_voxels(points, size):
    """Voxel ids of the cells k * size .. (k + 1) * size of the points' own frame (not of their bounding box)."""
    keys = np.floor(points.astype(np.float64) / size).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.ravel()


def same_partition(a, b):
    return len(np.unique(a)) == len(np.unique(b)) == len(np.unique(np.c_[a, b], axis=0))


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
    assert len(np.unique(idx)) == len(idx) and abs(len(idx) - 400) <= 20  # the size is a rung of 2.2% steps
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
    for m in (len(pts), len(pts) + 5):  # as many voxels as points: every point alone
        assert group_by_voxel(pts, search_voxel_size(pts, m)).num_voxels == len(pts)


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


def test_voxels_are_cells_of_the_frame_lattice_whatever_the_extreme_points():
    """Two points 0.1 m apart straddle the boundary x = 1.0 of the 0.5 m lattice: different voxels, even when the
    cloud's minimum (0.93, whose bounding-box grid would put both in one cell 0.93 .. 1.43) moves."""
    pts = np.array([[0.95, 0.2, 0.2], [1.05, 0.2, 0.2], [3.3, 2.0, 1.0]])
    for low in (0.93, 0.4, -7.77):
        cloud = np.concatenate([pts, [[low, 0.2, 0.2]]])
        groups = group_by_voxel(cloud, 0.5)
        assert groups.voxel_of[0] != groups.voxel_of[1]
        assert same_partition(groups.voxel_of, reference_voxels(cloud, 0.5))


def test_grid_sample_is_stable_when_a_few_points_are_dropped():
    """Dropping 20 of 10,000 points (the lowest-x one among them) keeps the searched voxel size, and every voxel
    that held no dropped point keeps its centre. A size searched to the last digit, or a grid anchored at the
    cloud's minimum, moved every voxel boundary and changed nearly every centre (and AFI's labels with them)."""
    rng = np.random.default_rng(21)
    pts = np.concatenate([rng.normal(0, 4, (7000, 3)), rng.uniform(-40, 40, (3000, 3))]).astype(np.float32)
    drop = np.r_[np.argmin(pts[:, 0]), rng.choice(len(pts), 19, replace=False)]
    keep = np.setdiff1d(np.arange(len(pts)), drop)
    for m in (1365, 455, 151):
        idx, groups = grid_sample(pts, m)
        idx2, groups2 = grid_sample(pts[keep], m)
        assert groups.size == groups2.size
        touched = set(groups.voxel_of[drop].tolist())
        before = {tuple(pts[i]) for v, i in enumerate(idx) if v not in touched}
        after = {tuple(p) for p in pts[keep][idx2]}
        assert before <= after
        assert abs(len(idx) - m) <= 0.1 * m  # about m: small counts move in bigger steps between rungs


def _splitmix64(keys):
    """splitmix64's finaliser (Steele et al. 2014), written here in numpy uint64 arithmetic."""
    with np.errstate(over="ignore"):
        h = keys.astype(np.uint64)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def test_occupied_voxel_estimate_is_linear_counting_on_a_hashed_bitmap():
    """The estimate is table * ln(table / empty slots) (linear counting, Whang et al. 1990) over the slots hit by
    the voxels' 21-bit-per-axis keys hashed with splitmix64: recomputed here from the definitions."""
    from ssov_train.geometry.sampling import _estimate_occupied
    rng = np.random.default_rng(2)
    pts = rng.uniform([9, 11, -12], [39, 41, 18], (3000, 3))
    xyz = [np.ascontiguousarray(c) for c in pts.T]
    origin, size, bits = np.array([9.0, 10.5, -12.0]), 1.5, 12  # each axis its own origin (lattice multiples)
    cells = np.floor((pts - origin) / size).astype(np.int64)
    keys = cells[:, 0] | (cells[:, 1] << 21) | (cells[:, 2] << 42)
    slots = _splitmix64(np.unique(keys)) & np.uint64((1 << bits) - 1)
    empty = (1 << bits) - len(np.unique(slots))
    expected = (1 << bits) * np.log((1 << bits) / empty)
    assert _estimate_occupied(*xyz, origin, 1.0 / size, bits) == pytest.approx(expected, rel=1e-12)
    assert abs(expected - len(np.unique(keys))) < 0.05 * len(np.unique(keys))  # and it estimates the count


@pytest.mark.parametrize("m, scale", [(1, 1.0), (40, 1.0), (300, 1.0), (1365, 1.0), (300, 0.02)])
def test_searched_size_is_the_rung_whose_count_is_nearest(m, scale):
    """Of every rung 2**(j / 32) m between 1 cm and the cloud's extent, the searched size is one whose exact voxel
    count is nearest m (a rung or two off only where counts tie within the estimate's error); also for a cloud
    1.2 m wide, whose sizes are below 1 m (negative rung numbers)."""
    rng = np.random.default_rng(m)
    pts = scale * np.concatenate([rng.normal(0, 3, (4000, 3)), rng.uniform(-30, 30, (1500, 3))])
    size = search_voxel_size(pts, m)
    j = np.log2(size) * 32
    assert j == pytest.approx(round(j), abs=1e-9)  # on the ladder
    rungs = 2.0 ** (np.arange(-12 * 32, 6 * 32 + 1) / 32)
    errors = np.array([abs(group_by_voxel(pts, r).num_voxels - m) for r in rungs])
    assert abs(group_by_voxel(pts, size).num_voxels - m) <= errors.min() + max(0.02 * m, 1)


def test_farthest_point_sampling_ties_small_clouds_and_all_points():
    line = np.array([[0.0, 0, 0], [-0.1, 0, 0], [0.1, 0, 0], [0.05, 0, 0]])  # 1 and 2 tie from 0: the first wins
    assert farthest_point_sample(line, 3).tolist() == [0, 1, 2]  # all within 1 m of each other
    pts = np.random.default_rng(5).normal(size=(30, 3))
    assert np.array_equal(farthest_point_sample(pts, 30), np.arange(30))  # m = N: every point, in order
    assert np.array_equal(farthest_point_sample(pts, 31), np.arange(30))
    with pytest.raises(ValueError, match=r"0\.\.29, got 30"):
        farthest_point_sample(pts, 5, start=30)


def test_axes_keep_their_own_origin():
    """x in [0, 1], y in [5, 6], z in [-6, -5]: each axis is measured from its own lattice origin (one axis
    measured from another's would go negative and scramble the key's bit fields)."""
    rng = np.random.default_rng(8)
    pts = rng.uniform([0, 5, -6], [1, 6, -5], (2000, 3))
    groups = group_by_voxel(pts, 0.1)
    assert same_partition(groups.voxel_of, reference_voxels(pts, 0.1))
    from ssov_train.geometry.sampling import _estimate_occupied
    xyz = [np.ascontiguousarray(c) for c in pts.T]
    estimate = _estimate_occupied(*xyz, np.array([0.0, 5.0, -6.0]), 10.0, 16)
    assert abs(estimate - groups.num_voxels) < 0.02 * groups.num_voxels


def test_grid_sample_centre_ties_counts_and_sizing_cloud():
    """A voxel of two points has its mean half-way: both are nearest, the first in point order is the centre.
    m = 1 is a valid request, m = N makes every point a centre, and ``size_points`` sets the size."""
    base = np.array([[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [5.25, 0.25, 0.25], [5.75, 0.75, 0.75],
                     [0.25, 5.25, 0.25], [0.75, 5.75, 0.75]])  # binary fractions: the two distances are equal
    pts = np.concatenate([base, base + [0, 0, 50.0]])
    from ssov_train.geometry.sampling import _nearest_to_mean
    groups = group_by_voxel(pts, 1.0)
    idx = _nearest_to_mean(*groups.xyz, groups.order, groups.starts, groups.means())
    assert groups.num_voxels == 6 and idx.tolist() == [0, 2, 4, 6, 8, 10]  # the first of each pair
    assert len(grid_sample(pts, 1)[0]) >= 1
    all_idx, none = grid_sample(pts, len(pts))
    assert np.array_equal(all_idx, np.arange(len(pts))) and none is None
    rng = np.random.default_rng(9)
    scan = np.concatenate([rng.normal(0, 3, (3000, 3)), rng.uniform(-30, 30, (1000, 3))])
    subset = scan[::7]
    _, own = grid_sample(subset, 100)
    _, sized = grid_sample(subset, 100, size_points=scan)
    assert sized.size == search_voxel_size(scan, 100) != own.size
