"""The node against unlucky or hostile input, in-process with rclpy: callback groups (poses, images and queries are
taken while a cloud is in the network), clouds overwritten in the keep-last-1 queue, the legend's frame, intensity
checks, (0, 0, 0) points, numpy warnings, skipped overlays, rejected odometry, the camera topic's type and AFI
presets against the model's vocabulary."""

import threading
import warnings

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, DOMAIN_ID, OUT, S, Harness, encode, make_tiny_model, to_rclpy

pytest.importorskip("rclpy")

from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from ssov_ros.node import EXECUTOR_THREADS  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402
from ssov_train.errors import ConfigError  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402

IN_POINTS = "/ssov_segmenter/input/points"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _values(node) -> dict:
    return {kv.key: kv.value for kv in node.diagnostic_status().values}


def _odometry(t_ns: int, x: float, qw: float = 1.0) -> Odometry:
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(t_ns), S)
    msg.pose.pose.position.x, msg.pose.pose.orientation.w = float(x), float(qw)
    return msg


def _cloud(frame, n=2000, stamp_ns=S, frame_id="lidar", intensity=None, layout="nuscenes"):
    return to_rclpy(encode(layout, frame.points[:n], frame.intensity[:n] if intensity is None else intensity),
                    stamp_ns=stamp_ns, frame_id=frame_id)


def _segment(h, msg):
    """One cloud through the node (the callback's path); its labelled output."""
    out = h.received.get(OUT)
    if out is None:
        out = h.listen(OUT, PointCloud2)
    before = len(out)
    h.node.on_cloud(msg)
    assert h.spin_until(lambda: len(out) > before), "no output"
    return out[-1]


class _BlockedNetwork:
    """Stands in for node.process: the first cloud blocks (a long network run) until released."""

    def __init__(self):
        self.busy, self.release, self.stamps = threading.Event(), threading.Event(), []

    def __call__(self, msg) -> None:
        if not self.busy.is_set():
            self.busy.set()
            self.release.wait(60)
        self.stamps.append(msg.header.stamp.sec)


def test_poses_images_and_queries_are_taken_while_a_cloud_is_in_the_network(frame):
    h = Harness({"afi.enabled": True, "temporal.pose_source": "odometry", "cameras.names": ["CAM_FRONT"],
                 "cameras.transport": "compressed"}, threads=EXECUTOR_THREADS)
    network = _BlockedNetwork()
    try:
        h.node.process = network
        clouds = h.publisher(IN_POINTS, PointCloud2, qos_profile_sensor_data)
        odometry = h.publisher("/ssov_segmenter/input/odometry", Odometry)
        images = h.publisher("/ssov_segmenter/input/CAM_FRONT/image", CompressedImage, qos_profile_sensor_data)
        query = h.publisher("/ssov_segmenter/query", String)
        assert all(h.wait_matched(p) for p in (clouds, odometry, images, query))
        clouds.publish(_cloud(frame))
        assert h.spin_until(network.busy.is_set, 30)
        for i in range(10):
            odometry.publish(_odometry(S + i * S // 10, i))
        image = CompressedImage(format="jpeg")
        image.header.stamp.sec = 2
        images.publish(image)
        query.publish(String(data="car"))
        def last_odometry_taken() -> bool:  # the pose at 1.9 s is the last message's (x = 9)
            pose = h.node.tf.lookup("odom", "base_link", S + 9 * S // 10)
            return pose is not None and pose[0, 3] == 9.0

        # all three are taken while the cloud callback is still blocked in the "network"
        assert h.spin_until(lambda: last_odometry_taken() and h.node.sync.match(2 * S, ["CAM_FRONT"]) is not None
                            and h.node._query is not None, 30)
        assert not network.stamps
        network.release.set()
        assert h.spin_until(lambda: network.stamps == [1], 30)
    finally:
        network.release.set()
        h.close()


def test_clouds_overwritten_in_the_input_queue_are_counted(frame):
    h = Harness({"afi.enabled": False}, threads=EXECUTOR_THREADS)
    network = _BlockedNetwork()
    try:
        h.node.process = network
        clouds = h.publisher(IN_POINTS, PointCloud2, qos_profile_sensor_data)
        assert h.wait_matched(clouds)
        clouds.publish(_cloud(frame, stamp_ns=1 * S))
        assert h.spin_until(network.busy.is_set, 30)
        for sec in range(2, 7):  # the queue keeps the latest only: most of these are overwritten
            clouds.publish(_cloud(frame, stamp_ns=sec * S))
        network.release.set()
        assert h.spin_until(lambda: network.stamps[-1:] == [6], 30)
        values = _values(h.node)
        # every published cloud was either processed or counted as missed (none both, none neither)
        assert int(values["missed_clouds_total"]) + len(network.stamps) == 6
        assert int(values["missed_clouds_total"]) >= 1
        assert "never processed: overwritten in the keep-last-1 input queue" in h.node.diagnostic_status().message
    finally:
        network.release.set()
        h.close()


def test_legend_follows_the_clouds_frame_and_never_latches_an_empty_one(frame):
    h = Harness({"afi.enabled": False})
    try:
        legends = h.listen("/ssov_segmenter/output/legend", MarkerArray, LATCHED)
        _segment(h, _cloud(frame, frame_id=""))  # labelled all the same
        _segment(h, _cloud(frame, frame_id="lidar"))
        assert h.spin_until(lambda: legends)
        _segment(h, _cloud(frame, frame_id=""))
        late = []
        h.peer.create_subscription(MarkerArray, "/ssov_segmenter/output/legend", late.append, LATCHED)
        assert h.spin_until(lambda: late)
        h.node.wait_idle(10)
        for legend in legends + late:
            assert {m.header.frame_id for m in legend.markers} == {"lidar"}
        values = _values(h.node)
        assert values["clouds_without_frame_total"] == "2"
    finally:
        h.close()


def test_intensity_problems_are_reported_once(frame, capfd, tmp_path):
    """A raw-intensity model (trained on nuScenes' 0..255): wrong scales and missing fields are reported."""
    h = Harness({"afi.enabled": False, "model.path": str(make_tiny_model(tmp_path / "raw.pt", normalized=False))})
    try:
        for _ in range(2):
            _segment(h, _cloud(frame, layout="xyz"))
        assert "no intensity field" in _values(h.node)["intensity_problem"]
        msg = _cloud(frame)  # intensity declared with count 2 (it then overlaps the ring field)
        msg.fields[3].count = 2
        _segment(h, msg)
        assert "field 'intensity' has count 2, expected 1" in _values(h.node)["intensity_problem"]
        # 0..1 intensities for a model trained on 0..255 (nuScenes scale): reported after 5 clouds in a row
        unit = frame.intensity[:2000] / 255.0
        for i in range(5):
            assert _values(h.node)["intensity_problem"] == "" or i == 0
            _segment(h, _cloud(frame, intensity=unit))
        problem = _values(h.node)["intensity_problem"]
        assert "trained on 0..255" in problem and "input.intensity_scale" in problem
        assert "intensity" in h.node.diagnostic_status().message
        _segment(h, _cloud(frame))  # a cloud on the right scale clears it
        assert _values(h.node)["intensity_problem"] == ""
        err = capfd.readouterr().err
        assert err.count("no intensity field") == 1 and err.count("has count 2") == 1
        assert err.count("trained on 0..255") == 1
    finally:
        h.close()


def test_a_normalized_model_takes_the_geometry_only_path_without_intensity(frame, capfd, tmp_path):
    """A model with per-cloud normalised intensity: an XYZ-only or all-zero cloud runs on geometry alone (the
    labels of the core fed no intensity), a cloud on 0..1 gives the labels of the same cloud on 0..255, no scale
    warning; the path is in /diagnostics and logged once per change."""
    model = make_tiny_model(tmp_path / "normalized.pt", normalized=True)
    core = Segmenter(open_backend(model))
    h = Harness({"afi.enabled": False, "model.path": str(model)})
    try:
        assert _values(h.node)["input"] == "waiting for clouds"
        xyz = frame.points[:2000]
        for _ in range(2):
            labels = read_cloud(_segment(h, _cloud(frame, layout="xyz"))).columns["label"]
        values = _values(h.node)
        assert values["input"].startswith("geometry only (no intensity field")
        # a supported input, no problem (the status may still warn of slow frames on a busy machine)
        assert values["intensity_problem"] == "" and "intensity" not in h.node.diagnostic_status().message
        np.testing.assert_array_equal(labels, core.segment(xyz, None).labels)
        zeros = read_cloud(_segment(h, _cloud(frame, intensity=np.zeros(2000, np.float32)))).columns["label"]
        assert _values(h.node)["input"] == "geometry only (constant intensity (0))"
        np.testing.assert_array_equal(zeros, labels)
        full = read_cloud(_segment(h, _cloud(frame))).columns["label"]
        assert _values(h.node)["input"] == "normalised intensity"
        np.testing.assert_array_equal(full, core.segment(xyz, frame.intensity[:2000]).labels)
        for _ in range(5):  # no scale to tune: 0..1 intensities are neither reported nor different
            unit = read_cloud(_segment(h, _cloud(frame, intensity=frame.intensity[:2000] / 255.0))).columns["label"]
        assert np.mean(unit == full) > 0.999 and _values(h.node)["intensity_problem"] == ""
        err = capfd.readouterr().err
        assert err.count("input: geometry only") == 1 and err.count("input: normalised intensity") == 1
        assert "input.intensity_scale" not in err.replace("input.intensity_scale unused", "")
    finally:
        h.close()


def test_non_finite_or_huge_intensity_raises_no_numpy_warning(frame, capfd):
    h = Harness({"afi.enabled": True, "temporal.history": 0})
    try:
        intensity = frame.intensity[:2000].astype(np.float64)
        intensity[::3], intensity[1::7], intensity[2::11], intensity[4::13] = np.nan, np.inf, -np.inf, 1e300
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any numpy RuntimeWarning now raises (and the frame would be dropped)
            out = read_cloud(_segment(h, _cloud(frame, intensity=intensity, layout="all_f64")))
            assert h.node.wait_idle(30)
        assert out.num_points == 2000 and out.columns["label"].min() >= 1
        values = _values(h.node)
        assert values["dropped_total"] == "0" and values["internal_errors_total"] == "0"
        # float64 1e300 does not fit float32: read as inf, and like NaN it reaches the model as 0
        assert "RuntimeWarning" not in capfd.readouterr().err
    finally:
        h.close()


@pytest.mark.parametrize("zero_invalid", [True, False])
def test_points_at_the_origin_are_invalid_by_default(frame, zero_invalid):
    xyz, intensity = frame.points[:3000].copy(), frame.intensity[:3000]
    xyz[:200] = 0.0
    h = Harness({"afi.enabled": False, "input.zero_points_invalid": None if zero_invalid else False})
    try:
        labels = read_cloud(_segment(h, to_rclpy(encode("nuscenes", xyz, intensity)))).columns["label"]
    finally:
        h.close()
    if zero_invalid:
        assert (labels[:200] == 0).all()
        # the network saw the other points only: the core on those alone gives the same labels
        expected = Segmenter(open_backend(DEMO_MODEL)).segment(xyz[200:], intensity[200:]).labels
        np.testing.assert_array_equal(labels[200:], expected)
    else:
        assert (labels[:200] >= 1).all()


def test_rejected_odometry_and_skipped_overlays_are_counted_with_their_reason(frame):
    h = Harness({"afi.enabled": True, "temporal.pose_source": "odometry", "cameras.names": ["CAM_FRONT"]})
    try:
        odometry = h.publisher("/ssov_segmenter/input/odometry", Odometry)
        assert h.wait_matched(odometry)
        odometry.publish(_odometry(S, 0.0, qw=0.0))  # a zero quaternion: no rotation at all
        assert h.spin_until(lambda: _values(h.node)["rejected_odometry_total"] == "1")
        _segment(h, _cloud(frame))
        h.node.wait_idle(30)
        values = _values(h.node)
        assert values["no_pose_reason"] == "odometry message rejected: transform has a non-finite value or a zero " \
                                           "quaternion"
        assert values["skipped_overlays_total"] == "1"
        assert values["last_overlay_skip"] == "CAM_FRONT: no camera_info received"
        message = h.node.diagnostic_status().message
        assert "1 odometry message rejected" in message and "1 overlay(s) skipped" in message
    finally:
        h.close()


def test_camera_subscription_follows_the_topic_type(frame, capfd):
    """cameras.transport says raw, the topic carries CompressedImage (the shipped bags): the node subscribes
    with the topic's type and says so in one line."""
    import rclpy

    h = Harness({"afi.enabled": False, "cameras.names": ["CAM_FRONT"], "cameras.transport": "raw"})
    # the camera driver is another participant, as in a real system (one participant refuses a topic of two types)
    driver_context = rclpy.Context()
    rclpy.init(context=driver_context, domain_id=DOMAIN_ID)
    driver = rclpy.create_node("camera_driver", context=driver_context)
    try:
        images = driver.create_publisher(CompressedImage, "/ssov_segmenter/input/CAM_FRONT/image",
                                         qos_profile_sensor_data)
        assert h.spin_until(lambda: h.node._image_subs["CAM_FRONT"].msg_type is CompressedImage, 30)
        assert h.spin_until(lambda: images.get_subscription_count() > 0, 30)
        image = CompressedImage(format="jpeg")
        image.header.stamp.sec = 3
        images.publish(image)
        assert h.spin_until(lambda: h.node.sync.match(3 * S, ["CAM_FRONT"]) is not None)
        lines = [ln for ln in capfd.readouterr().err.splitlines() if "camera CAM_FRONT" in ln]
        assert len(lines) == 1 and "carries sensor_msgs/msg/CompressedImage" in lines[0]
    finally:
        driver.destroy_node()
        rclpy.shutdown(context=driver_context)
        h.close()


def test_a_preset_of_another_vocabulary_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        Harness({"afi.preset": "kitti"})  # SemanticKITTI class names, a model with the nuScenes vocabulary
    text = str(err.value)
    assert text.startswith("afi.preset 'kitti'") and "nuscenes" in text and "\n" not in text


def test_a_restarted_bag_keeps_the_odometry_that_came_before_its_first_cloud(frame):
    h = Harness({"afi.enabled": True, "temporal.pose_source": "odometry", "temporal.history": 2})
    try:
        for k in range(6):
            h.node.on_odometry(_odometry(10 * S + k * S // 10, k))
        _segment(h, _cloud(frame, stamp_ns=10 * S + 2 * S // 10, frame_id="base_link"))
        # the bag restarts: its odometry arrives first, then its first cloud (time went back 9 s)
        for k in range(3):
            h.node.on_odometry(_odometry(1 * S + k * S // 10, k))
        _segment(h, _cloud(frame, stamp_ns=1 * S + S // 10, frame_id="base_link"))
        assert h.node.wait_idle(30)
        values = _values(h.node)
        assert values["frames"] == "2" and values["frames_with_pose"] == "2", values["no_pose_reason"]
    finally:
        h.close()
