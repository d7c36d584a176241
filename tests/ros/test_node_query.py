"""The node's start-up (default model = the exported package, warm-up) and its text queries (``~/query`` ->
``~/output/query_points``), in-process with rclpy on the real sample."""

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, OUT, S, Harness, encode, make_tiny_model, to_rclpy

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ssov_ros import params  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402
from ssov_train.errors import ConfigError  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402
from ssov_train.openvocab.query import query_points  # noqa: E402

QUERY_OUT = "/ssov_segmenter/output/query_points"



@pytest.fixture(scope="module")
def harness():
    h = Harness({"afi.enabled": False})
    h.points = h.listen(OUT, PointCloud2)
    h.query_points = h.listen(QUERY_OUT, PointCloud2)
    h.query_pub = h.publisher("/ssov_segmenter/query", String)
    assert h.wait_matched(h.query_pub)
    yield h
    h.close()


def _diagnostic_values(node) -> dict:
    return {kv.key: kv.value for kv in node.diagnostic_status().values}


def _ask(h, text):
    """Publish a query and wait until the node has taken it (accepted, refused or cleared): /diagnostics counts
    the query messages received."""
    before = int(_diagnostic_values(h.node)["queries_total"])
    h.query_pub.publish(String(data=text))
    assert h.spin_until(lambda: int(_diagnostic_values(h.node)["queries_total"]) > before)


def _segment(h, msg):
    """Send one cloud through the node; (points output, query output or None)."""
    n_points, n_query = len(h.points), len(h.query_points)
    h.node.on_cloud(msg)
    assert h.spin_until(lambda: len(h.points) > n_points)
    h.spin_until(lambda: len(h.query_points) > n_query, timeout=1.0 if h.node._query else 0.3)
    return h.points[-1], (h.query_points[-1] if len(h.query_points) > n_query else None)


def test_query_scores_are_the_cores_class_probability(harness, frame):
    xyz = frame.points.copy()
    xyz[::50] = np.nan  # invalid points score 0, like their label
    msg = to_rclpy(encode("nuscenes", xyz, frame.intensity), stamp_ns=3 * S, frame_id="LIDAR_TOP")
    _ask(harness, "car")
    assert harness.node._query.class_index == harness.node.spec.class_names.index("car")
    points, query = _segment(harness, msg)
    assert query is not None and query.header.frame_id == "LIDAR_TOP" and query.header.stamp.sec == 3
    assert [(f.name, f.datatype) for f in query.fields] == [("x", 7), ("y", 7), ("z", 7), ("similarity", 7)]
    cloud = read_cloud(query)
    valid = np.isfinite(xyz).all(1)
    assert cloud.num_points == len(xyz)
    np.testing.assert_array_equal(cloud.xyz[valid], xyz[valid])
    similarity = cloud.columns["similarity"]
    assert (similarity[~valid] == 0).all()
    # the ROS-free core on the same points gives the same scores
    core = query_points(Segmenter(open_backend(DEMO_MODEL)), xyz[valid], "car", intensity=frame.intensity[valid])
    np.testing.assert_allclose(similarity[valid], core.scores, rtol=1e-5, atol=1e-6)
    # where the node says "car", the similarity is the label's own score; elsewhere it is lower on average
    out = read_cloud(points).columns
    car = out["label"] == harness.node.spec.class_names.index("car")
    assert car.sum() > 100
    np.testing.assert_allclose(similarity[car], out["score"][car], rtol=1e-6)
    assert similarity[car].mean() > 2 * similarity[valid & ~car].mean()
    # a prompt of the vocabulary scores by its class: "sedan" is a car
    _ask(harness, "  Sedan ")
    _, sedan = _segment(harness, msg)
    np.testing.assert_array_equal(read_cloud(sedan).columns["similarity"], similarity)
    assert "query" not in harness.node.diagnostic_status().message  # (a slow CPU frame may WARN "over budget")


def test_unknown_text_is_refused_and_an_empty_one_clears(harness, frame):
    msg = to_rclpy(encode("nuscenes", frame.points[:4000], frame.intensity[:4000]), stamp_ns=4 * S)
    _ask(harness, "traffic cone")
    assert _segment(harness, msg)[1] is not None
    _ask(harness, "a purple unicorn")  # not a class, category or prompt: a class model cannot score it
    assert harness.node._query is None and "unicorn" in harness.node._query_error
    points, query = _segment(harness, msg)  # the node keeps segmenting, without query output
    assert query is None and read_cloud(points).num_points == 4000
    status = harness.node.diagnostic_status()
    values = _diagnostic_values(harness.node)
    assert status.level == DiagnosticStatus.WARN and "query refused" in status.message
    assert "feature-head model" in values["query_error"] and values["query"] == ""
    _ask(harness, "sky")  # a vocabulary prompt of the ignore class: refused with its own reason
    assert "ignore class" in harness.node._query_error
    _ask(harness, "pedestrian")
    assert _segment(harness, msg)[1] is not None
    assert "query" not in harness.node.diagnostic_status().message
    _ask(harness, "")
    assert harness.node._query is None and harness.node._query_error == ""
    assert _segment(harness, msg)[1] is None


def test_a_huge_query_is_refused_in_a_short_message(harness, frame):
    msg = to_rclpy(encode("nuscenes", frame.points[:4000], frame.intensity[:4000]), stamp_ns=5 * S)
    _ask(harness, "car")
    assert _segment(harness, msg)[1] is not None
    _ask(harness, "car " * 250_000)  # a million characters: a class name repeated, so only the length refuses it
    assert harness.node._query is None  # the previous query is cleared, as for any refused text
    status = harness.node.diagnostic_status()
    assert "1000000 characters (at most 256)" in status.message
    assert len(status.message) < 300 and all(len(kv.value) < 300 for kv in status.values)
    assert _segment(harness, msg)[1] is None
    _ask(harness, " " * 100 + "car" + " " * 153)  # 256 characters are accepted
    assert harness.node._query is not None and harness.node._query_error == ""


def test_warm_up_at_start_up_leaves_no_streaming_history():
    h = Harness({"afi.enabled": True, "temporal.history": 2})
    try:
        assert h.node.warmup_ms > 0 and not h.node.segmenter.afi._history
    finally:
        h.close()
    h = Harness({"afi.enabled": False, "model.warmup": False})
    try:
        assert h.node.warmup_ms is None
    finally:
        h.close()


def test_default_model_is_the_exported_package(tmp_path, monkeypatch, frame):
    """The default model.path names the package `make export` writes; it runs on onnxruntime. Without it, but
    with its checkpoint (a colcon install without `make export`), the checkpoint runs on torch (a stand-in
    repository in tmp_path)."""
    pytest.importorskip("onnxruntime")
    from ssov_export.onnx_export import export_package

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(params, "REPO", tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "no_ament"))
    default = params.NodeConfig().model.path
    checkpoint = make_tiny_model(tmp_path / default.replace(".ssovpkg", ".pt"))
    h = Harness({"model.path": None, "afi.enabled": False, "model.warmup": False})  # None: the node's own default
    try:
        assert h.node.segmenter.backend.name == "torch" and h.node.segmenter.backend.path == checkpoint
    finally:
        h.close()
    export_package(checkpoint, tmp_path / default, check=False)
    for path in (None, f"{default}/model.yaml"):
        h = Harness({"model.path": path, "afi.enabled": False})
        try:
            assert h.node.segmenter.backend.name == "onnxruntime"
            assert h.node.segmenter.backend.package.root == tmp_path / default
            out = h.listen(OUT, PointCloud2)
            h.node.on_cloud(to_rclpy(encode("nuscenes", frame.points[:5000], frame.intensity[:5000])))
            assert h.spin_until(lambda: out)
            labels = read_cloud(out[-1]).columns["label"]
            assert len(labels) == 5000 and labels.min() >= 1
        finally:
            h.close()
