"""The node in-process with rclpy: real sample in every layout, NaN / organised clouds, bad input, legend,
diagnostics, camera overlay and streaming AFI aligned by odometry."""

import time

import numpy as np
import pytest
from ros_test_utils import (DEMO_MODEL, HAND_K, HAND_LIDAR_TO_CAMERA_XYZ_QUAT, HAND_PIXELS, HAND_POINTS, HAND_SIZE, OUT,
                            S, Harness, encode, hand_image, to_rclpy)

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from ssov_ros.pointcloud import read_cloud  # noqa: E402
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
    # intensity goes out as received: float32 layouts exactly, the uint16 layout as its truncated integers
    sent = frame.intensity.astype(np.uint16) if layout == "xyz_f64" else frame.intensity
    np.testing.assert_array_equal(cloud.columns["intensity"], sent.astype(np.float32))
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
    # Autoware layouts store intensity as uint8: the received integers come back (as float32)
    sent = frame.intensity.astype(np.uint8) if layout.startswith("xyzirc") else np.zeros(len(frame.points))
    np.testing.assert_array_equal(out.columns["intensity"], sent.astype(np.float32))
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


def test_camera_overlay_of_hand_placed_points(frame):
    """The hand-made camera of ros_test_utils (intrinsics on camera_info, extrinsics as a parameter) and six
    hand-placed points: the overlay is the image with 3 x 3 squares in the labels' colours at the two pixels
    worked out by hand, nothing else (the hidden point, and those behind, beside or too near, are not drawn)."""
    from sensor_msgs.msg import CameraInfo, Image

    from ssov_ros.overlay import decode_image, image_to_ros

    name = "CAM_HAND"
    width, height = HAND_SIZE
    h = Harness({"afi.enabled": False, "cameras.names": [name], "cameras.lidar_to_camera": HAND_LIDAR_TO_CAMERA_XYZ_QUAT,
                 "cameras.point_radius": 1, "cameras.occlusion": True})
    try:
        overlays = h.listen(f"/ssov_segmenter/output/{name}/overlay", Image)
        img_pub = h.publisher(f"/ssov_segmenter/input/{name}/image", Image)
        info_pub = h.publisher(f"/ssov_segmenter/input/{name}/camera_info", CameraInfo)
        assert h.wait_matched(img_pub) and h.wait_matched(info_pub)
        background = hand_image()
        img = image_to_ros(Image().header, background)
        img.header.stamp.sec, img.header.stamp.nanosec = 1, 20_000_000  # 20 ms after the cloud: matched
        img.header.frame_id = name
        info = CameraInfo(width=width, height=height, k=HAND_K.ravel().tolist())
        info.header.frame_id = name
        info_pub.publish(info)
        img_pub.publish(img)
        assert h.spin_until(lambda: h.node.sync.match(S, [name]) and name in h.node._camera_info)
        out = _send(h, to_rclpy(encode("nuscenes", HAND_POINTS, np.full(len(HAND_POINTS), 10.0)), stamp_ns=S))
        assert h.spin_until(lambda: overlays)
        got = decode_image(overlays[-1])
        labels = read_cloud(out).columns["label"]
        assert labels.min() >= 1
        palette = h.node.spec.palette
        expected = background.copy()
        for point in (1, 0):  # far first: the nearer point's square on top
            r, c = HAND_PIXELS[point]
            expected[r - 1:r + 2, c - 1:c + 2] = palette[labels[point]]
        assert not np.array_equal(expected, background)
        np.testing.assert_array_equal(got, expected)
        assert overlays[-1].header.frame_id == name
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


def _yaw_pose(deg: float, t) -> np.ndarray:
    """A 4x4 pose turned ``deg`` about z and moved by ``t``, written out (cos, sin) rather than via the code."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0, t[0]], [s, c, 0, t[1]], [0, 0, 1, t[2]], [0, 0, 0, 1]], dtype=float)


def test_streaming_afi_is_aligned_by_odometry(frame):
    """The ego drives 4 m forward, 0.3 m left and turns 8 deg between t = 1 s and 2 s; odometry (odom <- base_link)
    is published at 10 Hz along that path, which at time 1 + f is a yaw of 8 f deg and a move of (4 f, 0.3 f, 0)
    (one constant turn: interpolating between the samples must give exactly these poses). The lidar is mounted
    0.9 m ahead of and 1.8 m above base_link (temporal.sensor_to_base). So the node must hand the core the pose
    odom <- lidar = odometry @ mounting: at t = 1 s the pure mounting (0.9, 0, 1.8), at t = 2 s the 8 deg turn
    with the mounting rotated, (4 + 0.9 cos 8 deg, 0.3 + 0.9 sin 8 deg, 1.8). (What the core does with the pose
    is checked by hand in tests/test_afi.py.)"""
    expected_pose = {1: _yaw_pose(0, (0.9, 0.0, 1.8)),
                     2: _yaw_pose(8, (4 + 0.9 * np.cos(np.radians(8)), 0.3 + 0.9 * np.sin(np.radians(8)), 1.8))}
    # sweep 2 holds sweep 1's points as seen from the moved lidar: p2 = inv(pose2) @ pose1 @ p1
    rel = np.linalg.inv(expected_pose[2]) @ expected_pose[1]
    sweeps = {1: frame.points, 2: (frame.points @ rel[:3, :3].T + rel[:3, 3]).astype(np.float32)}

    h = Harness({"afi.enabled": True, "temporal.history": 2,
                 "temporal.sensor_to_base": [0.9, 0.0, 1.8, 0.0, 0.0, 0.0, 1.0]})
    handed = []  # what the node passes to the core (the pose argument), recorded around the real call
    core = h.node.pipeline or h.node.segmenter  # the pipelined or the direct path, whichever the node runs
    method = "submit" if h.node.pipeline is not None else "segment"
    call = getattr(core, method)

    def recording(xyz, intensity, pose=None, **kwargs):
        handed.append(None if pose is None else np.array(pose))
        return call(xyz, intensity, pose=pose, **kwargs)

    setattr(core, method, recording)
    try:
        odom_pub = h.publisher("/ssov_segmenter/input/odometry", type(_odometry(0, np.eye(4))))
        assert h.wait_matched(odom_pub)
        # odometry at 10 Hz from 0.9 s to 2.1 s, constant before 1 s and after 2 s (best effort: resent until the
        # node holds all of it)
        stamps = [900_000_000 + i * 100_000_000 for i in range(13)]
        fraction = {t: min(max((t - S) / S, 0.0), 1.0) for t in stamps}
        path = {t: _yaw_pose(8 * f, (4 * f, 0.3 * f, 0.0)) for t, f in fraction.items()}

        def received_all():
            return all(h.node.tf.lookup("odom", "base_link", t) is not None
                       and np.allclose(h.node.tf.lookup("odom", "base_link", t), path[t], atol=1e-12) for t in stamps)

        give_up = time.monotonic() + 120  # generous: a loaded machine; a healthy one needs one round
        while not received_all():
            assert time.monotonic() < give_up, "the node never held the whole odometry path"
            for t in stamps:
                odom_pub.publish(_odometry(t, path[t]))
            h.spin_until(received_all, timeout=1.0)  # resent each second until all arrived (best effort)
        # between samples (1.55 s: 5.5 of the 10 steps) the buffer interpolates along the same constant turn
        np.testing.assert_allclose(h.node.tf.lookup("odom", "base_link", 1_550_000_000),
                                   _yaw_pose(8 * 0.55, (4 * 0.55, 0.3 * 0.55, 0.0)), atol=1e-9)
        outs = [read_cloud(_send(h, to_rclpy(encode("nuscenes", sweeps[k], frame.intensity), stamp_ns=k * S)))
                for k in (1, 2)]
        assert h.node._stats["posed"] == 2 and h.node._stats["unposed_reason"] == ""
        assert len(handed) == 2
        for got, k in zip(handed, (1, 2)):
            np.testing.assert_allclose(got, expected_pose[k], atol=1e-9)
        assert all(out.columns["label"].min() >= 1 for out in outs)  # AFI never outputs class 0 for real points
    finally:
        setattr(core, method, call)
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


def test_cpu_gemm_backend_and_voxel_budget(frame):
    """model.backend cpu-gemm and model.max_voxels reach the core: the node's labels are the core Segmenter's with
    the same backend and budget, and the points beyond the budget are not segmented (label 0)."""
    budget = 5000
    h = Harness({"model.backend": "cpu-gemm", "model.max_voxels": budget, "afi.enabled": False})
    try:
        assert h.node.segmenter.backend.name == "cpu-gemm" and h.node.segmenter.max_voxels == budget
        out = read_cloud(_send(h, to_rclpy(encode("nuscenes", frame.points, frame.intensity))))
        core = Segmenter(open_backend(DEMO_MODEL, "cpu-gemm"), max_voxels=budget).segment(frame.points,
                                                                                            frame.intensity)
        np.testing.assert_array_equal(out.columns["label"], core.labels)
        unlabelled = out.columns["label"] == 0
        assert 0 < unlabelled.mean() < 1  # the budget cut the far points, the near ones are segmented
        dist = np.linalg.norm(frame.points[:, :2], axis=1)
        assert dist[unlabelled].min() >= np.percentile(dist[~unlabelled], 90)  # it is a range cut
    finally:
        h.close()
