"""pipeline.enabled: the node's outputs (labels, scores, query similarity) are the same with the AFI stage on the
worker thread as without, streaming AFI with odometry poses and a bag restart included; the worker stops with
the node."""

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, OUT, S, Harness, encode, to_rclpy

pytest.importorskip("rclpy")

from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from test_node import _odometry  # noqa: E402

from ssov_ros.pointcloud import read_cloud  # noqa: E402



@pytest.fixture(scope="module")
def clouds(frame):
    """Five sweeps of a vehicle driving along x (each a different subset of the real sweep, in the sensor frame),
    stamped 1..4 s and then 1 s again (a bag restart: the node must reset the streaming history)."""
    rng = np.random.default_rng(3)
    out = []
    for k, t in enumerate((1, 2, 3, 4, 1)):
        idx = rng.choice(len(frame.points), 6000, replace=False)
        xyz = frame.points[idx] - np.array([0.5 * t, 0, 0], np.float32)
        xyz[::97] = np.nan  # invalid points keep label 0 in both modes
        out.append((t * S, encode("nuscenes", xyz, frame.intensity[idx])))
    return out


def _run(clouds, pipeline: bool):
    h = Harness({"afi.enabled": True, "temporal.history": 2, "temporal.pose_source": "odometry",
                 "temporal.sensor_to_base": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], "pipeline.enabled": pipeline})
    try:
        assert (h.node.pipeline is not None) == pipeline
        points = h.listen(OUT, PointCloud2)
        query = h.listen("/ssov_segmenter/output/query_points", PointCloud2)
        wait = h.listen("/ssov_segmenter/debug/processing_time_ms/wait", Float64)
        odom_pub = h.publisher("/ssov_segmenter/input/odometry", type(_odometry(0, np.eye(4))))
        query_pub = h.publisher("/ssov_segmenter/query", String)
        assert h.wait_matched(odom_pub) and h.wait_matched(query_pub)
        stamps = [900_000_000 + i * 100_000_000 for i in range(33)]

        def path(t):
            pose = np.eye(4)
            pose[0, 3] = 0.5 * t / S
            return pose

        for _ in range(20):  # best effort: resent until every pose arrived
            for t in stamps:
                odom_pub.publish(_odometry(t, path(t)))
            if h.spin_until(lambda: all(h.node.tf.lookup("odom", "base_link", t) is not None for t in stamps), 1.0):
                break
        query_pub.publish(String(data="car"))
        assert h.spin_until(lambda: h.node._query is not None)
        for t_ns, cloud in clouds:
            n = len(points)
            h.node.on_cloud(to_rclpy(cloud, stamp_ns=t_ns, frame_id="lidar"))
            assert h.spin_until(lambda: len(points) > n and len(query) > n, timeout=60)
        assert h.node.wait_idle(60)
        stats = h.node._stats
        assert stats["frames"] == len(clouds) and stats["dropped"] == 0
        assert stats["posed"] == len(clouds) - 1  # the restart cleared the poses (no odometry resent)
        if pipeline:
            assert h.spin_until(lambda: len(wait) > 0)
        worker = h.node.pipeline._worker if pipeline else None
    finally:
        h.close()
    if worker is not None:
        assert not worker.is_alive()  # destroy_node joined it
    return [read_cloud(p).columns for p in points], [read_cloud(q).columns["similarity"] for q in query]


def test_pipeline_on_and_off_publish_the_same_clouds(clouds):
    on_points, on_query = _run(clouds, pipeline=True)
    off_points, off_query = _run(clouds, pipeline=False)
    assert len(on_points) == len(off_points) == len(clouds)
    for a, b, qa, qb in zip(on_points, off_points, on_query, off_query):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
        np.testing.assert_allclose(qa, qb, rtol=1e-6)
    # the streaming history was used: frame 3 alone (per-frame AFI) scores differently
    from ssov_train.afi import AFIConfig
    from ssov_train.inference import Segmenter, open_backend

    cloud = read_cloud(clouds[2][1])
    alone = Segmenter(open_backend(DEMO_MODEL), afi=AFIConfig()).segment(cloud.xyz[cloud.valid],
                                                                         cloud.intensity[cloud.valid])
    assert not np.allclose(on_points[2]["score"][cloud.valid], alone.scores)
