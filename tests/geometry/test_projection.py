"""Projection facts on the real nuScenes sample, and the occlusion test on crafted geometry."""

import numpy as np
import pytest

from ssov_train.data.sample import SampleReader
from ssov_train.geometry.boxes import points_in_boxes
from ssov_train.geometry.projection import (CameraProjection, ProjectionConfig, occluded_mask, project_frame,
                                           project_points, project_to_camera)
from ssov_train.geometry.transforms import invert, lidar_to_camera_chain, make_transform, matrix_to_quat, quat_to_matrix


@pytest.fixture(scope="module")
def sample(sample_dir):
    reader = SampleReader(sample_dir)
    return reader, reader.load(reader.token)


def test_real_sample_cam_front_count(sample):
    _, frame = sample
    cam = frame.camera("CAM_FRONT")
    proj = project_points(frame.points, cam.lidar_to_camera, cam.intrinsics, cam.width, cam.height, 1.0)
    assert len(proj.point_index) == 3067
    assert (proj.depth > 1.0).all()
    assert (proj.uv[:, 0] >= 0).all() and (proj.uv[:, 0] < 1600).all()
    assert (proj.pixel_rc[:, 0] < 900).all()


def test_ignoring_ego_motion_loses_points(sample):
    reader, frame = sample
    cam = frame.camera("CAM_FRONT")
    static = invert(reader.camera_to_ego("CAM_FRONT")) @ frame.lidar_to_ego
    proj = project_points(frame.points, static, cam.intrinsics, cam.width, cam.height, 1.0)
    assert len(proj.point_index) == 2879


def test_fraction_seen_by_some_camera(sample):
    _, frame = sample
    seen = np.zeros(frame.num_points, bool)
    for p in project_frame(frame, ProjectionConfig(occlusion=False)):
        seen[p.point_index] = True
    assert round(seen.mean(), 2) == 0.58


def test_points_in_boxes(sample):
    _, frame = sample
    per_box = sum(int((points_in_boxes(frame.points, frame.boxes[i:i + 1]) >= 0).sum()) for i in range(len(frame.boxes)))
    assert per_box == 994  # counted per box, as sample.json states
    assert (points_in_boxes(frame.points, frame.boxes) >= 0).sum() <= per_box


def test_occlusion_removes_points_on_real_sample(sample):
    _, frame = sample
    cam = frame.camera("CAM_FRONT")
    with_occ, hidden = project_to_camera(frame.points, cam, ProjectionConfig(occlusion=True))
    assert 0 < hidden < 0.2 * 3067
    assert len(with_occ.point_index) + hidden == 3067


def test_full_chain_matches_composed_sample_calibration():
    rng = np.random.default_rng(0)
    poses = [make_transform(quat_to_matrix(q / np.linalg.norm(q)), rng.normal(size=3) * 10) for q in rng.normal(size=(4, 4))]
    lidar_to_ego, ego_lidar, ego_cam, cam_to_ego = poses
    chain = lidar_to_camera_chain(lidar_to_ego, ego_lidar, ego_cam, cam_to_ego)
    p = rng.normal(size=(5, 3))
    ph = np.c_[p, np.ones(5)]
    expected = (invert(cam_to_ego) @ np.linalg.inv(ego_cam) @ ego_lidar @ lidar_to_ego @ ph.T).T[:, :3]
    np.testing.assert_allclose((chain @ ph.T).T[:, :3], expected, atol=1e-9)
    q = matrix_to_quat(lidar_to_ego[:3, :3])
    np.testing.assert_allclose(quat_to_matrix(q), lidar_to_ego[:3, :3], atol=1e-12)


# Camera looking along lidar +x: camera x = -lidar y, camera y = -lidar z, camera z = lidar x.
LIDAR_TO_CAM = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
K = np.array([[100.0, 0, 100], [0, 100, 50], [0, 0, 1]])


class _Cam:
    width, height, intrinsics, lidar_to_camera = 200, 100, K, LIDAR_TO_CAM


def test_occlusion_hides_point_behind_nearer_one_only():
    # A near point at 5 m and a far one at 20 m on almost the same ray; a lone far point elsewhere.
    pts = np.array([[5.0, 0.0, 0.0], [20.0, 0.05, 0.0], [20.0, 5.0, 0.0]])
    proj, hidden = project_to_camera(pts, _Cam, ProjectionConfig(occlusion=True, occlusion_radius_px=6 * 1600 / 200))
    assert hidden == 1
    assert sorted(proj.point_index.tolist()) == [0, 2]
    proj, hidden = project_to_camera(pts, _Cam, ProjectionConfig(occlusion=False))
    assert hidden == 0 and len(proj.point_index) == 3


def test_flat_ground_seen_by_a_32_beam_lidar_is_not_self_occluding():
    # Ground returns of an HDL-32E mounted 1.84 m high, seen by a nuScenes-like 1600x900 camera: depths
    # jump between rings near the horizon, but rings are ~29 px apart, beyond the neighbourhood.
    elevations = np.deg2rad(np.linspace(-30.67, 10.67, 32))
    azimuths = np.deg2rad(np.arange(-40, 40, 0.33))
    el, az = np.meshgrid(elevations[elevations < -0.02], azimuths, indexing="ij")
    rng_ground = 1.84 / np.tan(-el)
    pts = np.stack([rng_ground * np.cos(az), rng_ground * np.sin(az), np.full_like(el, -1.84)], -1).reshape(-1, 3)

    class Cam:
        width, height, lidar_to_camera = 1600, 900, LIDAR_TO_CAM
        intrinsics = np.array([[1266.0, 0, 816], [0, 1266, 491], [0, 0, 1]])

    proj, hidden = project_to_camera(pts, Cam, ProjectionConfig(occlusion=True))
    assert len(proj.point_index) > 2000
    assert hidden / (hidden + len(proj.point_index)) < 0.01


def test_pixel_just_inside_the_last_row_stays_inside():
    # v = 50 + 100 * z / 10 lands a hair below the 100-px image height in float64, exactly on it in float32.
    z = (100 - 50) / 100 * 10 - 1e-7
    proj = project_points(np.array([[10.0, 0, -z]]), LIDAR_TO_CAM, K, 200, 100, 1.0)
    assert (proj.pixel_rc[:, 0] < 100).all()


def test_min_depth_and_bounds():
    pts = np.array([[0.5, 0, 0], [-5, 0, 0], [10, 0, 0], [10, -20, 0]])  # too close, behind, centre, off-image
    proj = project_points(pts, LIDAR_TO_CAM, K, 200, 100, 1.0)
    assert proj.point_index.tolist() == [2]
    np.testing.assert_allclose(proj.uv[0], [100, 50])
    assert proj.pixel_rc[0].tolist() == [50, 100]


def test_z_buffer_occluders_in_neighbouring_cells_hide_and_farther_ones_do_not():
    """Hand-placed projections, cells of 6 px (cell = floor(u / 6), floor(v / 6)) on a 200 x 100 image; a point
    is hidden when a point in its own or one of the 8 neighbouring cells is nearer by more than
    10% of that depth + 0.5 m (nearest 5 m: hidden beyond 5 * 1.1 + 0.5 = 6.0 m)."""
    uv_depth = [
        ((20.5, 20.5), 20.0),  # 0: cell (3, 3)
        ((25.0, 20.5), 5.0),   # 1: cell (3, 4), the next column, 4.5 px from 0: hides 0
        ((20.5, 50.5), 20.0),  # 2: cell (8, 3)
        ((20.5, 62.5), 5.0),   # 3: cell (10, 3), two cells below 2: too far to hide it
        ((80.5, 80.5), 10.0),  # 4: cell (13, 13)
        ((86.5, 86.5), 2.0),   # 5: cell (14, 14), the diagonal neighbour: hides 4
        ((140.5, 20.5), 6.4),  # 6: cell (3, 23)
        ((146.5, 20.5), 5.0),  # 7: cell (3, 24): 6.4 > 6.0, hides 6
        ((170.5, 20.5), 5.9),  # 8: cell (3, 28)
        ((176.5, 20.5), 5.0),  # 9: cell (3, 29): 5.9 <= 6.0, does not hide 8
        ((100.5, 40.5), 9.0),  # 10: cell (6, 16), alone with 11 in its own cell
        ((101.5, 41.5), 3.0),  # 11: same cell, nearer: hides 10
    ]
    proj = CameraProjection(np.arange(len(uv_depth)), np.array([uv for uv, _ in uv_depth], np.float32),
                            np.array([d for _, d in uv_depth], np.float32))
    hidden = occluded_mask(proj, 200, 100, radius_px=6.0, rel_tol=0.10, abs_tol=0.5)
    assert np.flatnonzero(hidden).tolist() == [0, 4, 6, 10]
    # project_to_camera scales the 6 px radius (given at 1600 px) with the image width: 0.75 px at 200 px, so the
    # cells are 1 px and point 1 (4.5 px from point 0) no longer hides it
    cam = type("Cam", (), dict(width=200, height=100, intrinsics=K, lidar_to_camera=LIDAR_TO_CAM))
    near_far = np.array([[5.0, 0.0, 0.0], [20.0, -4.5 * 20 / 100, 0.0]])  # u = 100 and 104.5 px
    proj, hidden_count = project_to_camera(near_far, cam, ProjectionConfig(occlusion=True))
    assert hidden_count == 0 and sorted(proj.point_index.tolist()) == [0, 1]
    proj, hidden_count = project_to_camera(near_far, cam, ProjectionConfig(occlusion=True, occlusion_radius_px=48))
    assert hidden_count == 1 and proj.point_index.tolist() == [0]  # 6 px cells at 200 px width


@pytest.mark.parametrize("fields, message", [
    ({"min_depth": -0.1}, "min_depth must be >= 0, got -0.1"),
    ({"occlusion_radius_px": 0.0}, "occlusion_radius_px must be > 0, got 0.0"),
    ({"occlusion_rel_tol": -0.01}, "occlusion tolerances must be >= 0"),
    ({"occlusion_abs_tol": -0.5}, "occlusion tolerances must be >= 0"),
])
def test_projection_config_check_names_the_bad_value(fields, message):
    with pytest.raises(ValueError) as err:
        ProjectionConfig(**fields).check()
    assert str(err.value) == message


def test_projection_config_accepts_its_boundaries():
    ProjectionConfig(min_depth=0.0, occlusion_radius_px=1e-6, occlusion_rel_tol=0.0, occlusion_abs_tol=0.0).check()
    assert ProjectionConfig() == ProjectionConfig(min_depth=1.0, occlusion=True, occlusion_radius_px=6.0,
                                                  occlusion_rel_tol=0.10, occlusion_abs_tol=0.5, multi_camera="vote")


def test_projection_of_hand_placed_points_keeps_order_pixels_and_depths():
    # LIDAR_TO_CAM and K: (u, v) = (100 - 100 y / x, 50 - 100 z / x), depth x; the image is 200 x 100
    pts = np.array([[4.0, 1.0, 0.5],     # (75, 37.5), depth 4: inside
                    [1.0, 0, 0],         # depth 1 = min_depth: not in front (depth must exceed it)
                    [2.0, -1.99, 0.0],   # u = 199.5: inside, last column
                    [2.0, -2.0, 0.0],    # u = 200: outside (u < W)
                    [2.0, 2.0, 0.0],     # u = 0: inside, first column
                    [2.0, 0.0, 1.0],     # v = 0: inside, first row
                    [2.0, 0.0, -1.0]])   # v = 100: outside (v < H)
    proj = project_points(pts, LIDAR_TO_CAM, K, 200, 100, 1.0)
    assert proj.point_index.tolist() == [0, 2, 4, 5]
    np.testing.assert_allclose(proj.uv, [[75, 37.5], [199.5, 50], [0, 50], [100, 0]], atol=1e-4)
    assert proj.uv.dtype == np.float32 and proj.depth.dtype == np.float32
    np.testing.assert_allclose(proj.depth, [4, 2, 2, 2])
    assert proj.pixel_rc.tolist() == [[37, 75], [50, 199], [50, 0], [0, 100]]
    sub = proj.subset(np.array([False, True, False, True]))
    assert sub.point_index.tolist() == [2, 5] and sub.pixel_rc.tolist() == [[50, 199], [0, 100]]
    np.testing.assert_allclose(sub.depth, [2, 2])
    np.testing.assert_allclose(sub.uv, [[199.5, 50], [100, 0]], atol=1e-4)
    # with a 0.5 m minimum depth the 1 m point is in front
    assert project_points(pts, LIDAR_TO_CAM, K, 200, 100, 0.5).point_index.tolist() == [0, 1, 2, 4, 5]


def test_project_frame_gives_one_projection_per_camera_in_order():
    class Frame:
        points = np.array([[10.0, 0, 0], [-10.0, 0, 0]])
        cameras = [_Cam, type("Back", (), dict(width=200, height=100, intrinsics=K,
                                               lidar_to_camera=LIDAR_TO_CAM @ np.diag([-1.0, -1, 1, 1])))]

    front, back = project_frame(Frame, ProjectionConfig(occlusion=False))
    assert front.point_index.tolist() == [0] and back.point_index.tolist() == [1]


def _projection(uv_depth):
    return CameraProjection(np.arange(len(uv_depth)), np.array([uv for uv, _ in uv_depth], np.float32).reshape(-1, 2),
                            np.array([d for _, d in uv_depth], np.float32))


def test_z_buffer_edges_by_hand():
    # nothing, and one point alone: nothing hidden, one flag per point
    for uv_depth in ([], [((50.5, 50.5), 10.0)]):
        hidden = occluded_mask(_projection(uv_depth), 200, 100, 6.0, 0.1, 0.5)
        assert hidden.dtype == bool and hidden.tolist() == [False] * len(uv_depth)
    # points in the first row and column of cells have no neighbours beyond the border (not depth 0)
    hidden = occluded_mask(_projection([((0.5, 0.5), 10.0), ((199.5, 99.5), 10.0), ((0.5, 99.5), 10.0)]),
                           200, 100, 6.0, 0.1, 0.5)
    assert hidden.tolist() == [False, False, False]
    # two cells above or left of a point is as far as two cells below or right: not a neighbour
    hidden = occluded_mask(_projection([((110.5, 74.5), 20.0), ((110.5, 62.5), 2.0),   # rows 12 and 10
                                        ((60.5, 30.5), 20.0), ((48.5, 30.5), 2.0)]),   # cols 10 and 8
                           200, 100, 6.0, 0.1, 0.5)
    assert hidden.tolist() == [False, False, False, False]
    # cells are radius_px wide down to 1 px: at 1 px, points 2 px apart are two cells apart; 0.5 px is still 1 px
    for radius in (1.0, 0.5):
        hidden = occluded_mask(_projection([((10.5, 10.5), 20.0), ((12.5, 10.5), 2.0),
                                            ((30.5, 10.5), 20.0), ((31.5, 10.5), 2.0)]), 200, 100, radius, 0.1, 0.5)
        assert hidden.tolist() == [False, False, True, False]
    # exactly at the tolerance (5 + 0 * 5 + 0.5 = 5.5) is not hidden: hidden means nearer by more than it
    hidden = occluded_mask(_projection([((20.5, 20.5), 5.5), ((25.0, 20.5), 5.0), ((60.5, 20.5), 5.51),
                                        ((65.0, 20.5), 5.0)]), 200, 100, 6.0, 0.0, 0.5)
    assert hidden.tolist() == [False, False, True, False]


def test_project_to_camera_passes_min_depth_and_scales_the_radius_from_1600_px():
    # 1600 px wide: the configured 6 px radius stays 6 px. u = -100 y / x, v = 450 - 100 z / x.
    class Wide:
        width, height, lidar_to_camera = 1600, 900, LIDAR_TO_CAM
        intrinsics = np.array([[100.0, 0, 0], [0, 100, 450], [0, 0, 1]])

    pts = np.array([[20.0, -0.005 * 20, 0],        # u = 0.5: cell column 0, 20 m
                    [5.0, -0.11995 * 5, 0]])       # u = 11.995: column 1 (11.995 / 6 = 1.999), 5 m: hides point 0
    proj, hidden = project_to_camera(pts, Wide, ProjectionConfig(occlusion=True))
    assert hidden == 1 and proj.point_index.tolist() == [1]
    near = np.array([[0.8, 0.0, 0.0], [1.5, 0.0, 0.0]])  # depths 0.8 and 1.5 m
    assert project_points(near, LIDAR_TO_CAM, K, 200, 100).point_index.tolist() == [1]  # default min_depth 1 m
    proj, _ = project_to_camera(near, _Cam, ProjectionConfig(min_depth=0.5, occlusion=False))
    assert proj.point_index.tolist() == [0, 1]
