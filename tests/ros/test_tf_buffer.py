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
    assert buf.lookup("camera", "camera", 0) is not None
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
