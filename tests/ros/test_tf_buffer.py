"""The node's transform buffer, without ROS: chains, interpolation, static + dynamic, messages duck-typed."""

from types import SimpleNamespace as NS

import numpy as np
import pytest

from ssov_ros.tf_buffer import TimeJumpDetector, TransformBuffer, interpolate, xyz_quat_matrix
from ssov_train.geometry.transforms import apply, make_transform, matrix_to_quat

S = 1_000_000_000


def yaw(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.radians(deg)
    return make_transform(np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)]), np.asarray(t, float))


def test_lookup_interpolates_pose_and_chains_a_static_link():
    buf = TransformBuffer()
    buf.add("odom", "base_link", 0, yaw(0, (0, 0, 0)))
    buf.add("odom", "base_link", 2 * S, yaw(90, (10, 0, 0)))
    lidar_to_base = make_transform(np.array([1.0, 0, 0, 0]), np.array([1.0, 0.0, 2.0]))
    buf.set_static("base_link", "lidar", lidar_to_base)
    mid = buf.lookup("odom", "lidar", S)
    expected = yaw(45, (5, 0, 0)) @ lidar_to_base
    np.testing.assert_allclose(mid, expected, atol=1e-9)
    # inverse direction and a point check: lidar origin sits at base (1, 0, 2), rotated 45 deg, moved 5 m
    np.testing.assert_allclose(buf.lookup("lidar", "odom", S) @ mid, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(apply(mid, np.zeros((1, 3)))[0], [5 + np.sqrt(0.5), np.sqrt(0.5), 2.0], atol=1e-9)


def test_lookup_outside_the_samples_and_unconnected_frames():
    buf = TransformBuffer(extrapolation_ns=S // 10)
    buf.add("odom", "base_link", 5 * S, np.eye(4))
    buf.add("odom", "base_link", 6 * S, yaw(10))
    assert buf.lookup("odom", "base_link", 6 * S + S // 20) is not None  # within tolerance: last sample
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 6 * S + S // 20), yaw(10))
    assert buf.lookup("odom", "base_link", 7 * S) is None
    assert buf.lookup("odom", "base_link", 4 * S) is None
    assert buf.lookup("odom", "camera", 5 * S) is None
    assert np.array_equal(buf.lookup("camera", "camera", 0), np.eye(4))  # a frame to itself, known or not
    buf.clear()
    assert buf.lookup("odom", "base_link", 5 * S) is None


def test_siblings_share_a_parent():
    buf = TransformBuffer()
    buf.set_static("base_link", "lidar", xyz_quat_matrix([0, 0, 2, 0, 0, 0, 1]))
    buf.set_static("base_link", "cam", xyz_quat_matrix([1, 0, 1.5, 0, 0, 0, 1]))
    np.testing.assert_allclose(buf.lookup("cam", "lidar", 0)[:3, 3], [-1, 0, 0.5])


def test_cache_keeps_only_recent_samples_and_out_of_order_inserts():
    buf = TransformBuffer(cache_ns=2 * S)
    for t in (3, 1, 2, 0, 5):
        buf.add("odom", "base", t * S, yaw(0, (t, 0, 0)))
    np.testing.assert_allclose(buf.lookup("odom", "base", int(3.5 * S))[:3, 3], [3.5, 0, 0])
    assert buf.lookup("odom", "base", int(2.5 * S)) is None  # samples at 0..2 s fell out of the 2 s cache


def test_slerp_takes_the_short_way():
    m = interpolate(yaw(170), yaw(-170), 0.5)
    q = matrix_to_quat(m[:3, :3])
    np.testing.assert_allclose(abs(q[3]), 1.0, atol=1e-9)  # 180 deg, not 0


def _ts(parent, child, t_ns, xyz, q_xyzw):
    return NS(header=NS(frame_id=parent, stamp=NS(sec=t_ns // S, nanosec=t_ns % S)), child_frame_id=child,
              transform=NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]),
                           rotation=NS(x=q_xyzw[0], y=q_xyzw[1], z=q_xyzw[2], w=q_xyzw[3])))


def test_tf_messages_and_odometry_duck_typed():
    buf = TransformBuffer()
    bad = _ts("base_link", "broken", 0, (0, 0, 0), (0, 0, 0, 0))  # zero quaternion: skipped
    assert buf.add_tf_message(NS(transforms=[_ts("base_link", "/lidar", 0, (0, 0, 2), (0, 0, 0, 1)), bad]),
                              static=True) == 1
    assert buf.add_tf_message(NS(transforms=[_ts("odom", "base_link", S, (1, 2, 0), (0, 0, 0, 1))])) == 1
    odom = NS(header=NS(frame_id="odom", stamp=NS(sec=2, nanosec=0)), child_frame_id="base_link",
              pose=NS(pose=NS(position=NS(x=3, y=2, z=0), orientation=NS(x=0, y=0, z=0, w=1))))
    assert buf.add_odometry(odom) == ("odom", "base_link")
    np.testing.assert_allclose(buf.lookup("odom", "lidar", int(1.5 * S))[:3, 3], [2, 2, 2])
    odom.pose.pose.position.x = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        buf.add_odometry(odom)


def test_xyz_quat_matrix_checks_its_input():
    with pytest.raises(ValueError, match="7 numbers"):
        xyz_quat_matrix([1, 2, 3])
    np.testing.assert_allclose(xyz_quat_matrix([1, 2, 3, 0, 0, 0, 1])[:3, 3], [1, 2, 3])


def test_time_jump_detector():
    d = TimeJumpDetector(tolerance_ns=S)
    assert not d.jumped_back(10 * S) and not d.jumped_back(int(9.5 * S)) and d.jumped_back(2 * S)


def test_wait_lookup_takes_a_sample_added_by_another_thread():
    import threading

    buf = TransformBuffer(extrapolation_ns=0)
    buf.add("odom", "base", 0, np.eye(4))
    assert buf.wait_lookup("odom", "base", 100, 0.0) is None  # no sample at 100 yet, no waiting
    later = make_transform(np.eye(3), np.array([2.0, 0.0, 0.0]))
    adder = threading.Timer(0.2, buf.add, ("odom", "base", 200, later))
    adder.start()
    pose = buf.wait_lookup("odom", "base", 100, 60.0)  # returns once the sample at 200 arrived
    adder.join()
    np.testing.assert_allclose(pose[:3, 3], [1.0, 0.0, 0.0])  # halfway between 0 and 200


# ---- hand-computed transforms: every expected matrix below is written from cos / sin, not from the code ----

def rot_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0, t[0]], [s, c, 0, t[1]], [0, 0, 1, t[2]], [0, 0, 0, 1.0]])


def rot_x(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0, t[0]], [0, c, -s, t[1]], [0, s, c, t[2]], [0, 0, 0, 1.0]])


@pytest.mark.parametrize("a0, a1, frac, expected", [
    (0, 90, 0.25, 22.5),  # slerp proper
    (0, 90, 0.0, 0.0),
    (0, 90, 1.0, 90.0),
    (170, -170, 0.25, 175.0),  # the short way, across 180
    (-170, 170, 0.75, 175.0),  # -170 - 15
    (10, 12, 0.5, 11.0),  # nearly equal rotations: the linear branch
    (0, 179, 0.5, 89.5),
])
def test_interpolation_by_hand_about_z(a0, a1, frac, expected):
    m = interpolate(rot_z(a0, (0, 0, 0)), rot_z(a1, (4, -8, 2)), frac)
    np.testing.assert_allclose(m, rot_z(expected, (4 * frac, -8 * frac, 2 * frac)), atol=1e-9)


def test_interpolation_by_hand_about_x_and_nearly_equal():
    np.testing.assert_allclose(interpolate(rot_x(0, (1, 1, 1)), rot_x(90, (3, 1, -1)), 0.5),
                               rot_x(45, (2, 1, 0)), atol=1e-12)
    # 0.04 deg apart (cos of half the angle > 0.9995): normalised lerp, within 1e-9 of the exact rotation
    np.testing.assert_allclose(interpolate(rot_x(30), rot_x(30.04), 0.25), rot_x(30.01), atol=1e-9)


def test_lookup_chains_rotation_and_translation_by_hand():
    """map <- odom (static 90 deg about z, +100 m x), odom <- base (moving), base <- lidar (static, 1 m up and
    0.5 m forward, rolled 90 deg about x). A lidar point (0, 0, 1) at t = 1.5 s, by hand: lidar -> base:
    R_x(90) (0, 0, 1) = (0, -1, 0), + (0.5, 0, 1) = (0.5, -1, 1); base -> odom at 1.5 s (3/4 of the way from
    yaw 0 at (0, 0, 0) to yaw 40 at (8, 4, 0)): yaw 30 and (6, 3, 0): (0.5 cos30 + sin30, 0.5 sin30 - cos30, 1)
    + (6, 3, 0); odom -> map: (x, y) -> (-y, x) + (100, 0, 0)."""
    buf = TransformBuffer()
    buf.set_static("map", "odom", rot_z(90, (100, 0, 0)))
    buf.add("odom", "base", 0, rot_z(0))
    buf.add("odom", "base", 2 * S, rot_z(40, (8, 4, 0)))
    buf.set_static("base", "lidar", rot_x(90, (0.5, 0, 1)))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    in_odom = np.array([0.5 * c + s + 6, 0.5 * s - c + 3, 1.0])
    in_map = np.array([100 - in_odom[1], in_odom[0], in_odom[2]])
    m = buf.lookup("map", "lidar", int(1.5 * S))
    np.testing.assert_allclose(apply(m, np.array([[0.0, 0.0, 1.0]]))[0], in_map, atol=1e-9)
    np.testing.assert_allclose(apply(buf.lookup("odom", "lidar", int(1.5 * S)), np.array([[0.0, 0, 1]]))[0],
                               in_odom, atol=1e-9)
    # the other way round and between siblings of a common parent
    back = buf.lookup("lidar", "map", int(1.5 * S))
    np.testing.assert_allclose(apply(back, in_map[None])[0], [0, 0, 1], atol=1e-9)
    assert buf.frames() == {"map", "odom", "base", "lidar"}
    assert buf.can_transform("map", "lidar", S) and not buf.can_transform("map", "lidar", 3 * S)
    assert not buf.can_transform("map", "nowhere", S)


def test_interpolation_weight_follows_uneven_sample_times():
    buf = TransformBuffer()
    buf.add("odom", "base", 1 * S, rot_z(0, (0, 0, 0)))
    buf.add("odom", "base", 5 * S, rot_z(80, (4, 0, 0)))
    np.testing.assert_allclose(buf.lookup("odom", "base", 2 * S), rot_z(20, (1, 0, 0)), atol=1e-9)  # 1/4
    np.testing.assert_allclose(buf.lookup("odom", "base", 5 * S), rot_z(80, (4, 0, 0)), atol=1e-12)
    np.testing.assert_allclose(buf.lookup("odom", "base", 1 * S), rot_z(0), atol=1e-12)


def test_extrapolation_and_cache_limits_are_inclusive():
    buf = TransformBuffer(cache_ns=3 * S, extrapolation_ns=100)
    for t in (1, 2, 4):
        buf.add("odom", "base", t * S, rot_z(0, (t, 0, 0)))
    assert buf.lookup("odom", "base", 4 * S + 100)[0, 3] == 4 and buf.lookup("odom", "base", 4 * S + 101) is None
    assert buf.lookup("odom", "base", S - 100)[0, 3] == 1 and buf.lookup("odom", "base", S - 101) is None
    buf.add("odom", "base", 5 * S, rot_z(0, (5, 0, 0)))  # the sample at 1 s is now older than 5 - 3 = 2 s
    assert buf.lookup("odom", "base", S) is None
    assert buf.lookup("odom", "base", 2 * S)[0, 3] == 2  # exactly cache_ns older than the newest: kept
    buf.add("odom", "base", 2 * S, rot_z(0, (-2, 0, 0)))  # same stamp again: replaces
    assert buf.lookup("odom", "base", 2 * S)[0, 3] == -2
    np.testing.assert_allclose(buf.lookup("odom", "base", 3 * S)[:3, 3], [1, 0, 0])  # (-2 + 4) / 2


def test_defaults_and_edges_of_the_buffer():
    buf = TransformBuffer()
    assert buf.cache_ns == 10 * S and buf.extrapolation_ns == S // 10
    buf.add("odom", "base", 20 * S, np.eye(4))
    buf.add("odom", "base", 10 * S, np.eye(4))  # exactly 10 s older than the newest: kept
    buf.add("odom", "base", 10 * S - 1, np.eye(4))  # older: dropped at once
    assert buf.lookup("odom", "base", 10 * S) is not None and buf.lookup("odom", "base", 10 * S - 1) is not None
    assert buf.lookup("odom", "base", 10 * S - S // 10) is not None  # extrapolated from the 10 s sample
    assert buf.lookup("odom", "base", 10 * S - S // 10 - 1) is None
    for parent, child in (("", "a"), ("a", ""), ("a", "a")):
        with pytest.raises(ValueError, match=rf"^invalid transform '{parent}' <- '{child}'$"):
            buf.add(parent, child, 0, np.eye(4))
    # a re-parented frame starts over, as in tf2
    buf.add("map", "base", 20 * S, rot_z(0, (1, 0, 0)))
    assert buf.lookup("odom", "base", 20 * S) is None and buf.lookup("map", "base", 20 * S)[0, 3] == 1
    # a dynamic sample replaces a static link and a static one clears the samples
    buf.set_static("map", "base", rot_z(0, (2, 0, 0)))
    assert buf.lookup("map", "base", 0)[0, 3] == 2
    buf.add("map", "base", 5 * S, rot_z(0, (3, 0, 0)))
    assert buf.lookup("map", "base", 0) is None and buf.lookup("map", "base", 5 * S)[0, 3] == 3
    buf.set_static("map", "base", rot_z(0, (4, 0, 0)))
    buf.clear()  # only the samples go: the static link stays
    assert buf.lookup("map", "base", 99 * S)[0, 3] == 4


def test_a_cycle_of_frames_ends_the_search():
    buf = TransformBuffer()
    buf.set_static("a", "b", rot_z(0, (1, 0, 0)))
    buf.set_static("b", "a", rot_z(0, (1, 0, 0)))
    assert buf.lookup("c", "a", 0) is None  # returns, no endless walk


def test_wait_lookup_gives_up_after_its_timeout():
    import time

    buf = TransformBuffer(extrapolation_ns=0)
    buf.add("odom", "base", 0, np.eye(4))
    start = time.monotonic()
    assert buf.wait_lookup("odom", "base", 100, 0.05) is None
    assert time.monotonic() - start >= 0.05
    np.testing.assert_allclose(buf.wait_lookup("odom", "base", 0, 0.0), np.eye(4))


def test_messages_by_hand():
    from ssov_ros.tf_buffer import matrix_xyz_quat, pose_matrix, stamp_ns

    assert stamp_ns(NS(sec=3, nanosec=250_000_000)) == 3_250_000_000
    h = np.sqrt(0.5)
    assert matrix_xyz_quat(rot_z(90, (1, 2, 3))) == pytest.approx([1, 2, 3, 0, 0, h, h], abs=1e-12)
    np.testing.assert_allclose(xyz_quat_matrix([1, 2, 3, 0, 0, h, h]), rot_z(90, (1, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(xyz_quat_matrix([0, 0, 0, h, 0, 0, h]), rot_x(90), atol=1e-12)
    np.testing.assert_allclose(pose_matrix(NS(x=1, y=2, z=3), NS(x=h, y=0, z=0, w=h)), rot_x(90, (1, 2, 3)),
                               atol=1e-12)
    # the smallest accepted quaternion (norm 1e-9) is normalised; below that it is refused
    np.testing.assert_allclose(pose_matrix(NS(x=0, y=0, z=0), NS(x=0, y=0, z=0, w=1e-9)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(xyz_quat_matrix([0, 0, 0, 0, 0, 0, 1e-9]), np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match=r"^transform has a non-finite value or a zero quaternion$"):
        pose_matrix(NS(x=0, y=0, z=0), NS(x=0, y=0, z=0, w=0.5e-9))
    with pytest.raises(ValueError, match=r"^zero quaternion$"):
        xyz_quat_matrix([0, 0, 0, 0, 0, 0, 0.5e-9])
    with pytest.raises(ValueError, match=r"^expected 7 numbers \[x, y, z, qx, qy, qz, qw\], got 3$"):
        xyz_quat_matrix([1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        pose_matrix(NS(x=0, y=0, z=0), NS(x=0, y=float("inf"), z=0, w=1))


def test_tf_message_ingestion_by_hand():
    buf = TransformBuffer()
    h = np.sqrt(0.5)
    msg = NS(transforms=[_ts("/odom", "/base", 2 * S + 5, (1, 0, 0), (0, 0, h, h)),
                         NS(header=NS(frame_id="odom")),  # malformed: skipped
                         _ts("odom", "base", 4 * S + 5, (3, 0, 0), (0, 0, h, h))])
    assert buf.add_tf_message(msg) == 2
    assert buf.frames() == {"odom", "base"}
    np.testing.assert_allclose(buf.lookup("odom", "base", 3 * S + 5), rot_z(90, (2, 0, 0)), atol=1e-12)
    assert buf.add_tf_message(NS()) == 0
    # static: no stamp needed, valid at any time
    assert buf.add_tf_message(NS(transforms=[_ts("base", "cam", 0, (0, 0, 1), (0, 0, 0, 1))]), static=True) == 1
    np.testing.assert_allclose(buf.lookup("base", "cam", 99 * S)[:3, 3], [0, 0, 1])


def test_odometry_frames_default_and_lose_their_slash():
    buf = TransformBuffer()
    pose = NS(pose=NS(position=NS(x=1, y=0, z=0), orientation=NS(x=0, y=0, z=0, w=1)))
    odom = NS(header=NS(frame_id="", stamp=NS(sec=1, nanosec=0)), child_frame_id="", pose=pose)
    assert buf.add_odometry(odom) == ("odom", "base_link")
    assert buf.add_odometry(odom, default_child="imu") == ("odom", "imu")
    odom.header.frame_id, odom.child_frame_id = "/world", "/robot"
    assert buf.add_odometry(odom) == ("world", "robot")
    assert buf.lookup("world", "robot", S)[0, 3] == 1


def test_time_jump_detector_by_hand():
    d = TimeJumpDetector()
    assert d.last_ns is None and d.tolerance_ns == S
    assert not d.jumped_back(10 * S) and d.last_ns == 10 * S
    assert not d.jumped_back(9 * S)  # exactly the tolerance back: not a jump
    assert d.last_ns == 9 * S
    assert d.jumped_back(8 * S - 1) and d.last_ns == 8 * S - 1


def test_only_a_leading_slash_is_dropped_from_frame_ids():
    """tf2 frame ids lose a leading "/" and nothing else (an Xsens IMU's frame starts with an X)."""
    buf = TransformBuffer()
    assert buf.add_tf_message(NS(transforms=[_ts("/Xsens_base", "/Xsens_imu", 0, (1, 0, 0), (0, 0, 0, 1))]),
                              static=True) == 1
    assert buf.frames() == {"Xsens_base", "Xsens_imu"}
    pose = NS(pose=NS(position=NS(x=1, y=0, z=0), orientation=NS(x=0, y=0, z=0, w=1)))
    odom = NS(header=NS(frame_id="/XYZ_odom", stamp=NS(sec=1, nanosec=0)), child_frame_id="/Xsens_base", pose=pose)
    assert buf.add_odometry(odom) == ("XYZ_odom", "Xsens_base")


def test_slerp_returns_unit_quaternions_by_hand():
    from ssov_ros.tf_buffer import _slerp

    def about_z(deg):  # (w, x, y, z) of a rotation about z
        return np.array([np.cos(np.radians(deg) / 2), 0, 0, np.sin(np.radians(deg) / 2)])

    np.testing.assert_allclose(_slerp(about_z(0), about_z(90), 0.5), about_z(45), atol=1e-12)
    np.testing.assert_allclose(_slerp(about_z(0), about_z(90), 0.25), about_z(22.5), atol=1e-12)
    np.testing.assert_allclose(_slerp(about_z(0), -about_z(90), 0.5), about_z(45), atol=1e-12)  # q and -q alike
    np.testing.assert_allclose(_slerp(about_z(20), about_z(21), 0.5), about_z(20.5), atol=1e-9)  # nearly equal
    np.testing.assert_allclose(_slerp(about_z(20), about_z(21), 0.3), about_z(20.3), atol=1e-7)


def test_a_lookup_at_a_sample_time_gives_that_sample_exactly():
    buf = TransformBuffer()
    # rotations about tilted axes: a round trip through a quaternion would change them in the last bits
    first, last = rot_x(37) @ rot_z(-81, (1.1, -2.3, 0.7)), rot_z(-81, (4.9, 0.3, -1.7)) @ rot_x(12)
    buf.add("odom", "base", 1 * S, first)
    buf.add("odom", "base", 5 * S, last)
    assert np.array_equal(buf.lookup("odom", "base", 1 * S), first)
    assert np.array_equal(buf.lookup("odom", "base", 5 * S), last)
