"""The node in-process with rclpy: real sample in every layout, NaN / organised clouds, bad input, legend,
diagnostics, camera overlay and streaming AFI aligned by odometry."""

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, OUT, S, Harness, encode, to_rclpy

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from ssov_ros.pointcloud import read_cloud  # noqa: E402
from ssov_train.afi import AFIConfig, TemporalConfig  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402




@pytest.fixture(scope="module")
def backend():
    return open_backend(DEMO_MODEL)


@pytest.fixture(scope="module")
def plain(frame, backend):
    """Labels of the real sweep through the shared inference path, no AFI."""
    return Segmenter(backend).segment(frame.points, frame.intensity)


@pytest.fixture
def harness(request):
    h = Harness(getattr(request, "param", {"afi.enabled": False}))
    yield h
    h.close()


def _send(h, msg, topic=OUT, count=1):
    out = h.received.setdefault(topic, None)
    if out is None:
        out = h.listen(topic, PointCloud2)
    before = len(out)
    h.node.on_cloud(msg)
    assert h.spin_until(lambda: len(out) >= before + count), "no output"
    return out[-1]


@pytest.mark.parametrize("layout, big_endian", [("nuscenes", False), ("nuscenes", True), ("pcl_xyzi", False),
                                                ("xyz_f64", True)])
def test_real_sample_in_float_layouts_gives_the_core_labels(harness, frame, plain, layout, big_endian):
    msg = to_rclpy(encode(layout, frame.points, frame.intensity, big_endian=big_endian), stamp_ns=7 * S + 5,
                   frame_id="LIDAR_TOP")
    out = _send(harness, msg)
    assert out.header.frame_id == "LIDAR_TOP" and (out.header.stamp.sec, out.header.stamp.nanosec) == (7, 5)
    assert [(f.name, f.datatype) for f in out.fields] == [("x", 7), ("y", 7), ("z", 7), ("intensity", 7),
                                                          ("label", 6), ("score", 7), ("rgb", 7)]
    cloud = read_cloud(out)
    np.testing.assert_array_equal(cloud.xyz, frame.points)
    labels = cloud.columns["label"]
    if layout != "xyz_f64":  # that layout stores intensity as uint16: truncated, different network input
        np.testing.assert_array_equal(labels, plain.labels)
        np.testing.assert_allclose(cloud.columns["score"], plain.scores, rtol=1e-6)
    rgb = cloud.columns["rgb"].view(np.uint32)
    palette = harness.node.spec.palette
    np.testing.assert_array_equal(np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], 1), palette[labels])


@pytest.mark.parametrize("layout", ["xyz", "xyzirc", "xyzircaedt"])
def test_autoware_and_xyz_layouts_are_segmented(harness, frame, layout):
    out = read_cloud(_send(harness, to_rclpy(encode(layout, frame.points, frame.intensity))))
    labels = out.columns["label"]
    assert len(labels) == len(frame.points) and labels.min() >= 1 and len(np.unique(labels)) > 3


@pytest.mark.parametrize("harness", [{"afi.enabled": False}, {"afi.enabled": False, "input.drop_invalid_points": True}],
                         indirect=True)
def test_organised_cloud_with_nan_points(harness, frame):
    xyz = frame.points[:32 * 1000].copy()
    xyz[::7] = np.nan
    xyz[3, 1] = np.inf
    msg = to_rclpy(encode("xyzirc", xyz, frame.intensity[:32000], height=32, row_padding=8))
    out = _send(harness, msg)
    cloud = read_cloud(out)
    invalid = ~np.isfinite(xyz).all(1)
    if harness.node.cfg.input.drop_invalid_points:
        assert (out.height, out.width) == (1, int((~invalid).sum())) and cloud.valid.all()
        assert cloud.columns["label"].min() >= 1
    else:
        assert (out.height, out.width) == (32, 1000)
        assert not out.is_dense
        assert (cloud.columns["label"][invalid] == 0).all() and (cloud.columns["score"][invalid] == 0).all()
        assert cloud.columns["label"][~invalid].min() >= 1


def test_bad_input_is_dropped_reported_and_the_node_keeps_going(frame):
    h = Harness({"afi.enabled": False, "output.diagnostics_period_s": 0.1})
    try:
        diags = h.listen("/diagnostics", DiagnosticArray)
        out = h.listen(OUT, PointCloud2)
        good = encode("nuscenes", frame.points[:2000], frame.intensity[:2000])
        empty = encode("nuscenes", frame.points[:0], frame.intensity[:0])
        short = encode("nuscenes", frame.points[:10], frame.intensity[:10])
        short.data = short.data[:-3]
        no_z = encode("nuscenes", frame.points[:10], frame.intensity[:10])
        no_z.fields = no_z.fields[:2]
        all_nan = encode("xyz", np.full((5, 3), np.nan, np.float32), np.zeros(5))
        for bad, reason in [(empty, "empty cloud"), (short, "data length"), (no_z, "no z field"),
                            (all_nan, "no finite point")]:
            h.node.on_cloud(to_rclpy(bad))
            assert h.node._stats["last_drop"].startswith(reason) or reason in h.node._stats["last_drop"]

        def warned():
            return any(s.level == DiagnosticStatus.WARN and "4 frame(s) dropped" in s.message
                       for d in diags for s in d.status)

        assert h.spin_until(warned), [s.message for d in diags for s in d.status]
        assert h.node._stats["dropped"] == 4 and not out
        h.node.on_cloud(to_rclpy(good))
        assert h.spin_until(lambda: len(out) == 1)
        keys = {kv.key: kv.value for s in diags[-1].status for kv in s.values}
        assert {"dropped_total", "last_processing_ms", "backend", "no_pose_reason"} <= set(keys)
    finally:
        h.close()


def test_legend_is_latched_for_late_subscribers(harness, frame):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    _send(harness, to_rclpy(encode("nuscenes", frame.points[:3000], frame.intensity[:3000]), frame_id="LIDAR_TOP"))
    late = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    legend = harness.listen("/ssov_segmenter/output/legend", MarkerArray, late)
    assert harness.spin_until(lambda: legend)
    markers = legend[-1].markers
    spec = harness.node.spec
    assert [m.text for m in markers] == list(spec.class_names[1:])
    for m in markers:
        assert m.header.frame_id == "LIDAR_TOP" and m.type == 9 and m.color.a == 1.0 and m.scale.z > 0
        np.testing.assert_allclose([m.color.r, m.color.g, m.color.b], spec.palette[m.id] / 255.0)
    assert len({round(m.pose.position.z, 3) for m in markers}) == len(markers)  # one line each


def test_processing_time_topics(harness, frame):
    from std_msgs.msg import Float64

    total = harness.listen("/ssov_segmenter/debug/processing_time_ms/total", Float64)
    network = harness.listen("/ssov_segmenter/debug/processing_time_ms/network", Float64)
    cloud = to_rclpy(encode("nuscenes", frame.points[:3000], frame.intensity[:3000]))
    harness.node.on_cloud(cloud)  # creates the stage publishers
    harness.spin_until(lambda: harness.peer.count_publishers("/ssov_segmenter/debug/processing_time_ms/total") > 0)
    pub = harness.node._timing_publisher("total")
    assert harness.wait_matched(pub)
    harness.node.on_cloud(cloud)
    assert harness.spin_until(lambda: total and network)
    assert 0 < network[-1].data <= total[-1].data


def test_camera_overlay_matches_the_projection(frame):
    from sensor_msgs.msg import CameraInfo, Image

    from ssov_ros.overlay import camera_from_info, decode_image, render_overlay
    from ssov_train.geometry.transforms import matrix_to_quat

    cam = frame.cameras[0]
    q = matrix_to_quat(cam.lidar_to_camera[:3, :3])
    l2c = [*cam.lidar_to_camera[:3, 3], q[1], q[2], q[3], q[0]]
    h = Harness({"afi.enabled": False, "cameras.names": [cam.name], "cameras.lidar_to_camera": [float(v) for v in l2c],
                 "cameras.point_radius": 1})
    try:
        overlays = h.listen(f"/ssov_segmenter/output/{cam.name}/overlay", Image)
        img_pub = h.publisher(f"/ssov_segmenter/input/{cam.name}/image", Image)
        info_pub = h.publisher(f"/ssov_segmenter/input/{cam.name}/camera_info", CameraInfo)
        assert h.wait_matched(img_pub) and h.wait_matched(info_pub)
        rgb = cam.load_image()
        img = Image(height=cam.height, width=cam.width, encoding="rgb8", step=cam.width * 3)
        img.header.stamp.sec, img.header.stamp.nanosec = 1, 20_000_000  # 20 ms after the cloud: matched
        img.header.frame_id = cam.name
        import array
        buf = array.array("B")
        buf.frombytes(rgb.tobytes())
        img.data = buf
        info = CameraInfo(width=cam.width, height=cam.height, k=cam.intrinsics.ravel().tolist())
        info.header.frame_id = cam.name
        info_pub.publish(info)
        img_pub.publish(img)
        assert h.spin_until(lambda: h.node.sync.match(S, [cam.name]) and cam.name in h.node._camera_info)
        out = _send(h, to_rclpy(encode("nuscenes", frame.points, frame.intensity), stamp_ns=S))
        assert h.spin_until(lambda: overlays)
        got = decode_image(overlays[-1])
        labels = read_cloud(out).columns["label"]
        expected, drawn = render_overlay(rgb, camera_from_info(info, cam.lidar_to_camera), frame.points,
                                         h.node.spec.palette[labels], radius=1)
        assert drawn > 2000
        np.testing.assert_array_equal(got, expected)
        assert overlays[-1].header.frame_id == cam.name
    finally:
        h.close()


def _odometry(t_ns, pose, frame="odom", child="base_link"):
    from nav_msgs.msg import Odometry

    from ssov_train.geometry.transforms import matrix_to_quat

    m = Odometry()
    m.header.frame_id, m.child_frame_id = frame, child
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(t_ns), S)
    p, q = pose[:3, 3], matrix_to_quat(pose[:3, :3])
    m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = (float(v) for v in p)
    o = m.pose.pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in q)
    return m


def test_streaming_afi_is_aligned_by_odometry(frame, backend):
    """The ego drives 4 m and turns 8 deg between two sweeps of the same world; the node must hand the core the
    odometry pose chained with the lidar mounting (sensor_to_base) at each cloud's time."""
    from ssov_train.geometry.transforms import apply, invert, make_transform

    def yaw(deg, t):
        a = np.radians(deg)
        return make_transform(np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)]), np.asarray(t, float))

    lidar_to_base = make_transform(np.array([1.0, 0, 0, 0]), np.array([0.9, 0.0, 1.8]))
    base = {1: yaw(0, (0, 0, 0)), 2: yaw(8, (4, 0.3, 0))}  # odom <- base_link at t = 1 s and 2 s
    pose = {k: v @ lidar_to_base for k, v in base.items()}  # odom <- lidar
    world = apply(pose[1], frame.points)
    sweeps = {1: frame.points, 2: apply(invert(pose[2]), world).astype(np.float32)}

    h = Harness({"afi.enabled": True, "temporal.history": 2,
                 "temporal.sensor_to_base": [0.9, 0.0, 1.8, 0.0, 0.0, 0.0, 1.0]})
    try:
        odom_pub = h.publisher("/ssov_segmenter/input/odometry", type(_odometry(0, np.eye(4))))
        assert h.wait_matched(odom_pub)
        # odometry at 10 Hz from 0.9 s to 2.1 s along the interpolated path (best effort: resent until all arrived)
        from ssov_ros.tf_buffer import interpolate
        stamps = [900_000_000 + i * 100_000_000 for i in range(13)]
        path = {t: interpolate(base[1], base[2], min(max((t - S) / S, 0.0), 1.0)) for t in stamps}

        def received_all():
            return all(h.node.tf.lookup("odom", "base_link", t) is not None
                       and np.allclose(h.node.tf.lookup("odom", "base_link", t), path[t], atol=1e-12) for t in stamps)

        for _ in range(20):
            for t in stamps:
                odom_pub.publish(_odometry(t, path[t]))
            if h.spin_until(received_all, timeout=1.0):
                break
        assert received_all()
        outs = [read_cloud(_send(h, to_rclpy(encode("nuscenes", sweeps[k], frame.intensity), stamp_ns=k * S)))
                for k in (1, 2)]
        assert h.node._stats["posed"] == 2 and h.node._stats["unposed_reason"] == ""

        def reference(poses):
            seg = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=2))
            return [seg.segment(sweeps[k], frame.intensity, pose=poses[k]) for k in (1, 2)]

        aligned = reference(pose)
        np.testing.assert_array_equal(outs[1].columns["label"], aligned[1].labels)
        np.testing.assert_allclose(outs[1].columns["score"], aligned[1].scores, rtol=1e-5)
        # the pose matters: without ego motion compensation the previous sweep votes at the wrong places
        unaligned = reference({1: np.eye(4), 2: np.eye(4)})
        assert np.mean(unaligned[1].labels != aligned[1].labels) > 0.001
    finally:
        h.close()


def test_startup_errors_are_one_clear_error(tmp_path):
    from ssov_train.errors import ConfigError, DataError, SsovError

    with pytest.raises(SsovError, match="not found"):
        Harness({"model.path": str(tmp_path / "missing.pt")})
    with pytest.raises(ConfigError, match="not found .looked in"):
        Harness({"model.path": "models/missing.pt"})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        Harness({"model.path": str(bad)})
    with pytest.raises(ConfigError, match="model.expect_classes"):
        Harness({"model.expect_classes": ["ignore", "car"]})
    with pytest.raises(ConfigError, match="model.backend: 'openvino' is not one of"):  # the declared choices
        Harness({"model.backend": "openvino"})


def test_exported_package_through_the_onnxruntime_backend(frame, plain, tmp_path):
    """model.backend auto picks onnxruntime for an exported package (a directory); same labels as torch."""
    from ssov_export.onnx_export import export_package

    package, _ = export_package(DEMO_MODEL, tmp_path / "demo.ssovpkg", check=False)
    h = Harness({"model.path": str(package), "afi.enabled": False})
    try:
        assert h.node.segmenter.backend.name == "onnxruntime"
        out = read_cloud(_send(h, to_rclpy(encode("nuscenes", frame.points, frame.intensity))))
        assert np.mean(out.columns["label"] == plain.labels) > 0.999
    finally:
        h.close()
