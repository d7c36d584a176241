"""The shared voxelizer: round trip, representative points, label rules, cylindrical bins, bad input, real sample."""

from __future__ import annotations

import numpy as np
import pytest

from ssov_train.errors import ConfigError, DataError
from ssov_train.geometry.voxelize import GRID_ALIGN, VoxelConfig, nearest_voxels, voxelize


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


def test_float64_input_is_binned_in_float32_like_the_reference():
    # float32(0.7) / float32(0.1) rounds to exactly 7.0 in float32; in float64, 0.7 / 0.1 = 6.9999... (bin 6), and
    # float32(0.7) / 0.1 (float64 size) = 6.99999... too. The reference divides the float32 sweep by float32 sizes.
    pts = np.array([[0.7, 0.7, 0.7]], dtype=np.float64)
    v = voxelize(pts, VoxelConfig("cartesian"))
    assert (v.coords[0] + v.offset).tolist() == [7, 7, 7]
    cyl = voxelize(np.array([[10.05, 0.0, 0.7]]), VoxelConfig("cylindrical"))
    assert (cyl.coords[0] + cyl.offset).tolist() == [100, 0, 7]


def test_spatial_shape_rounds_up_only_past_a_multiple_of_16():
    # x spans cells 0 .. 15 (16 cells, already a multiple of 16); y spans 0 .. 16 (17 cells -> 32); z 3 .. 3.
    v = voxelize(np.array([[0.5, 0.5, 3.5], [15.5, 16.5, 3.5]], dtype=np.float32), VoxelConfig("cartesian", (1, 1, 1)))
    assert v.spatial_shape == (16, 32, 16) and v.offset.tolist() == [0, 0, 0]
    assert v.coords.tolist() == [[0, 0, 3], [15, 16, 3]]


def test_negative_cells_offset_rounds_down_to_a_multiple_of_16():
    v = voxelize(np.array([[-0.5, -16.5, -17.5], [0.5, 0.5, 0.5]], dtype=np.float32), VoxelConfig("cartesian", (1, 1, 1)))
    # absolute cells (-1, -17, -18) and (0, 0, 0): offsets -16, -32, -32
    assert v.offset.tolist() == [-16, -32, -32] and v.offset.dtype == np.int64
    assert v.coords.tolist() == [[15, 15, 14], [16, 32, 32]]
    assert v.spatial_shape == (32, 48, 48)


def test_voxels_are_sorted_by_coordinate_and_keys_do_not_collide():
    # Cells chosen so that a key built with the wrong axis sizes would collide or reorder: the grid is 16 x 32 x 48
    # (offset 0), x-major order.
    cells = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 47), (0, 31, 0), (15, 31, 47), (0, 1, 1), (1, 0, 1)]
    pts = np.array(cells, dtype=np.float32) + 0.5
    pts = np.vstack([pts, [[0.5, 0.5, 0.5], [15.5, 31.5, 47.5]]])  # grid corners
    v = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)))
    expected = sorted(set(map(tuple, np.floor(pts).astype(int).tolist())))
    assert v.spatial_shape == (16, 32, 48)
    assert v.coords.tolist() == [list(c) for c in expected]
    assert v.num_voxels == 9
    assert [tuple(v.coords[i]) for i in v.point_to_voxel] == [tuple(c) for c in np.floor(pts).astype(int).tolist()]
    assert v.point_to_voxel.dtype == np.int64 and v.voxel_to_point.dtype == np.int64 and v.point_to_voxel.ndim == 1


def test_grid_index_bound_is_inclusive_at_2_pow_30():
    ok = voxelize(np.array([[2.0**30, 0, 0]], dtype=np.float32), VoxelConfig("cartesian", (1, 1, 1)))
    assert (ok.coords[0] + ok.offset).tolist() == [2**30, 0, 0]
    with pytest.raises(DataError, match=r"voxelize: points span grid indices .* beyond int32 at voxel size \(1.0, 1.0, 1.0\)"):
        voxelize(np.array([[-(2.0**30) - 128, 0, 0]], dtype=np.float32), VoxelConfig("cartesian", (1, 1, 1)))


@pytest.mark.parametrize("big_axis", [0, 1, 2])
def test_grid_of_2_pow_62_cells_is_refused(big_axis):
    # 2^22 cells along one axis, 2^20 along the others: 2^62 cells, refused; 16 cells fewer along another axis fits.
    cfg = VoxelConfig("cartesian", (1, 1, 1))
    corner = [2.0**20 - 0.5] * 3
    corner[big_axis] = 2.0**22 - 0.5
    shape = [2**20] * 3
    shape[big_axis] = 2**22
    with pytest.raises(DataError, match=rf"voxelize: grid of \[{shape[0]}, {shape[1]}, {shape[2]}\] cells is too large "
                                        "for packed keys"):
        voxelize(np.array([[0.5, 0.5, 0.5], corner], dtype=np.float32), cfg)
    corner[(big_axis + 1) % 3] -= 16
    assert voxelize(np.array([[0.5, 0.5, 0.5], corner], dtype=np.float32), cfg).num_voxels == 2


def test_packed_keys_stay_exact_past_2_pow_53():
    # A 2^21 x 2^20 x 2^20 grid: keys near 2^61, where float64 steps by 512, so neighbouring z cells at the far x end
    # must not merge (integer keys).
    far = 2.0**21 - 0.5
    pts = np.array([[0.5, 0.5, 0.5], [far, 0.5, 0.5], [far, 0.5, 1.5], [0.5, 2.0**20 - 0.5, 2.0**20 - 0.5]],
                   dtype=np.float32)
    v = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)))
    assert v.spatial_shape == (2**21, 2**20, 2**20)
    assert v.num_voxels == 4 and v.point_to_voxel.tolist() == [0, 2, 3, 1]


def test_error_messages_name_the_problem():
    pts = _cloud(10)
    with pytest.raises(DataError, match=r"voxelize: points must be \(N, 3\), got \(5, 2\)"):
        voxelize(np.zeros((5, 2)), VoxelConfig())
    with pytest.raises(DataError, match=r"voxelize: points must be \(N, 3\), got \(3,\)"):
        voxelize(np.zeros(3), VoxelConfig())
    with pytest.raises(DataError, match="^voxelize: empty point cloud$"):
        voxelize(np.zeros((0, 3)), VoxelConfig())
    bad = pts.copy()
    bad[[2, 5], [0, 2]] = np.nan
    bad[5, 1] = np.inf
    with pytest.raises(DataError, match="voxelize: 2 points have NaN/Inf coordinates"):
        voxelize(bad, VoxelConfig())
    with pytest.raises(DataError, match=r"voxelize: features must be \(N,\) or \(N, F\) with N=10, got \(9, 1\)"):
        voxelize(pts, VoxelConfig(), features=np.zeros(9))
    with pytest.raises(DataError, match=r"voxelize: features must be \(N,\) or \(N, F\) with N=10, got \(10, 2, 1\)"):
        voxelize(pts, VoxelConfig(), features=np.zeros((10, 2, 1)))
    with pytest.raises(DataError, match="^voxelize: point features contain NaN/Inf$"):
        voxelize(pts, VoxelConfig(), features=np.full((10, 2), np.inf))
    with pytest.raises(DataError, match=r"voxelize: labels must be integer \(N,\) with N=10, got float32 \(10,\)"):
        voxelize(pts, VoxelConfig(), labels=np.zeros(10, np.float32))
    with pytest.raises(DataError, match=r"voxelize: labels must be integer \(N,\) with N=10, got uint8 \(10, 1\)"):
        voxelize(pts, VoxelConfig(), labels=np.zeros((10, 1), np.uint8))
    with pytest.raises(ConfigError, match="label_rule must be 'majority' or 'first', got 'mean'"):
        voxelize(pts, VoxelConfig(), label_rule="mean")
    with pytest.raises(ConfigError, match=r"voxel mode must be one of \['cartesian', 'cylindrical'\], got 'polar'"):
        VoxelConfig("polar")
    for size in [(0.1, 0.1), (0.1, -1.0, 0.1), (0.1, np.inf, 0.1), (0.1, np.nan, 0.1)]:
        with pytest.raises(ConfigError, match=r"voxel size must be three positive numbers, got \(0.1, "):
            VoxelConfig("cartesian", size)
    v = voxelize(pts, VoxelConfig())
    with pytest.raises(ValueError, match=f"expected {v.num_voxels} voxel values, got 3"):
        v.to_points(np.zeros(3))


def test_signed_labels_features_vector_and_sizes_as_floats():
    cfg = VoxelConfig("cartesian", (1, 2, 4))
    assert cfg.size == (1.0, 2.0, 4.0) and all(type(s) is float for s in cfg.size)
    pts = np.array([[0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [0.7, 0.7, 0.7], [1.5, 0.5, 0.5]], dtype=np.float32)
    labels = np.array([-3, -5, -5, 2], dtype=np.int16)  # signed labels, ignore_index -3
    v = voxelize(pts, cfg, features=np.array([1.0, 2.0, 3.0, 4.0]), labels=labels, ignore_index=-3)
    assert v.labels.tolist() == [-5, 2] and v.labels.dtype == np.int16
    assert v.features.tolist() == [[1.0], [4.0]] and v.features.dtype == np.float32
    assert voxelize(pts, cfg, labels=labels, label_rule="first").labels.tolist() == [-3, 2]


def test_majority_with_every_point_ignored():
    pts = np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]], dtype=np.float32)
    v = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)), labels=np.array([9, 9], np.uint8), ignore_index=9)
    assert v.labels.tolist() == [9, 9] and v.labels.dtype == np.uint8


def test_majority_counts_beat_label_order():
    # one voxel: label 7 three times, label 2 twice, label 5 once -> 7 (the count decides, not the smallest id)
    pts = np.full((6, 3), 0.5, dtype=np.float32)
    v = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)), labels=np.array([5, 2, 7, 7, 2, 7], np.uint8))
    assert v.labels.tolist() == [7]


def _budget_scene():
    """Points (x, y, z) in 1 m cells; voxels in coordinate order: B (1,0,0), C (3,0,0), D (3,0,1), A (5,0,0).
    Representative (first) points' horizontal ranges: B 1.58, C 3.54, D 3.05, A 5.52. C's second point (3.01, 0.01)
    is nearer than D's representative: the budget ranks voxels by their representative point."""
    pts = np.array([[5.5, 0.5, 0.5],    # 0 A
                    [1.5, 0.5, 0.5],    # 1 B
                    [3.5, 0.5, 0.5],    # 2 C
                    [3.05, 0.05, 1.5],  # 3 D
                    [1.7, 0.6, 0.5],    # 4 B
                    [3.01, 0.01, 0.5]], dtype=np.float32)  # 5 C
    labels = np.array([1, 2, 3, 4, 2, 3], np.uint8)
    return pts, voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)), features=np.arange(6.0) * 10, labels=labels)


def test_nearest_voxels_keeps_the_nearest_representatives():
    pts, vox = _budget_scene()
    assert vox.coords.tolist() == [[1, 0, 0], [3, 0, 0], [3, 0, 1], [5, 0, 0]]
    kept, kept_points = nearest_voxels(vox, pts, 2)
    assert kept.coords.tolist() == [[1, 0, 0], [3, 0, 1]]  # B and D, in coordinate order
    assert kept_points.tolist() == [1, 3, 4]
    assert kept.point_to_voxel.tolist() == [0, 1, 0]  # over the kept points B, D, B
    assert kept.point_to_voxel.dtype == np.int64 and kept.voxel_to_point.dtype == np.int64
    assert kept.voxel_to_point.tolist() == [0, 1]  # B's representative is kept point 0 (point 1), D's is 1 (point 3)
    assert kept.features.tolist() == [[10.0], [30.0]] and kept.labels.tolist() == [2, 4]
    assert kept.offset.tolist() == vox.offset.tolist() and kept.spatial_shape == vox.spatial_shape
    three, kept_points = nearest_voxels(vox, pts, 3)
    assert three.coords.tolist() == [[1, 0, 0], [3, 0, 0], [3, 0, 1]] and kept_points.tolist() == [1, 2, 3, 4, 5]
    assert three.point_to_voxel.tolist() == [0, 1, 2, 0, 1] and three.voxel_to_point.tolist() == [0, 1, 2]


def test_nearest_voxels_ties_by_voxel_order_and_without_features():
    # 48 voxels on four rings (ranges exactly 5, 10, 15, 20 m: Pythagorean triples); the 12 voxels at 5 m tie, and a
    # budget of 5 keeps the first 5 of them in voxel (coordinate) order. (numpy's default argsort is not stable for
    # this many ties.)
    pts = []
    for r, (a, b) in [(5, (3, 4)), (10, (6, 8)), (15, (9, 12)), (20, (12, 16))]:
        for x, y in [(a, b), (b, a), (-a, b), (-b, a), (a, -b), (b, -a), (-a, -b), (-b, -a), (r, 0), (-r, 0), (0, r), (0, -r)]:
            pts.append((x, y, 0.5))
    pts = np.array(pts, dtype=np.float32)
    vox = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)))
    assert vox.num_voxels == 48 and vox.features is None and vox.labels is None
    ring5 = sorted(tuple(c) for c in np.floor(pts[:12]).astype(int).tolist())
    kept, kept_points = nearest_voxels(vox, pts, 5)
    assert [tuple(c) for c in (kept.coords + kept.offset).tolist()] == ring5[:5]
    assert kept.features is None and kept.labels is None and len(kept_points) == 5


def test_nearest_voxels_ranks_in_float32():
    # float64 input: B (0, 3.00000001) is farther than A (3, 0) in float64 but both are 3.0 in float32, where they
    # tie and voxel order (B's cell (0, 3) before A's (3, 0)) keeps B, as for the float32 clouds the network gets.
    pts = np.array([[3.0, 0.0, 0.5], [0.0, 3.00000001, 0.5]])
    vox = voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)))
    kept, kept_points = nearest_voxels(vox, pts, 1)
    assert kept_points.tolist() == [1]


def test_nearest_voxels_under_budget_and_bad_budget():
    pts, vox = _budget_scene()
    same, kept_points = nearest_voxels(vox, pts, 4)
    assert same is vox and kept_points.tolist() == [0, 1, 2, 3, 4, 5]
    assert nearest_voxels(vox, pts, 1)[0].coords.tolist() == [[1, 0, 0]]
    with pytest.raises(ConfigError, match="max_voxels must be >= 1, got 0"):
        nearest_voxels(vox, pts, 0)


def test_majority_ignores_label_0_by_default():
    # one voxel labelled (0, 0, 1): 0 is the default ignore label, so the voxel is 1
    pts = np.full((3, 3), 0.5, dtype=np.float32)
    assert voxelize(pts, VoxelConfig("cartesian", (1, 1, 1)), labels=np.array([0, 0, 1], np.uint8)).labels.tolist() == [1]
