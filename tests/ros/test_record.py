"""ssov-record: two processes over real DDS (this process publishes, the record CLI writes the bag)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_test_utils import DOMAIN_ID

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from ssov_ros.bags import bag_info, read_messages  # noqa: E402
from ssov_ros.pointcloud import to_ros_cloud  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
ACKED = Duration(seconds=60)  # generous: a loaded machine may take long, a healthy one answers in milliseconds


def _record(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssov_ros.record", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID)})


class Peer:
    """A private rclpy context on the session's DDS domain; waits spin it until a condition holds."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("record_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def wait_for(self, condition, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
        """Spin until ``condition()``; fail naming ``what`` if the recorder exits or the timeout passes first."""
        end = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, f"the recorder exited before {what}: {proc.communicate()[0]}"
            assert time.monotonic() < end, f"{what} did not happen within {timeout} s"
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _cloud(i: int) -> PointCloud2:
    return to_ros_cloud(Header(frame_id="lidar"), {"x": np.arange(1000, dtype=np.float32) + i,
                                                   "y": np.zeros(1000, np.float32), "z": np.ones(1000, np.float32)})


def test_record_writes_what_was_published(tmp_path):
    """A latched legend published before the recorder exists, reliable clouds and a best-effort topic: the
    recorder mirrors each topic's QoS and stops by itself after 5 messages per topic (--max-messages), so the
    test waits on events (matching, acknowledgements, the recorder's exit), never on a clock."""
    peer = Peer()
    bag = tmp_path / "out"
    try:
        legend_pub = peer.node.create_publisher(MarkerArray, "/legend", LATCHED)
        legends = [MarkerArray(markers=[Marker(ns="legend", id=i, text=f"class {i}")]) for i in range(5)]
        legend_pub.publish(legends[0])  # before the recorder exists: caught through transient local
        clouds = peer.node.create_publisher(PointCloud2, "/points", RELIABLE)
        scans = peer.node.create_publisher(PointCloud2, "/scan", qos_profile_sensor_data)
        proc = _record([str(bag), "--topics", "/points", "/legend", "/scan", "--max-messages", "5"])
        for pub in (legend_pub, clouds, scans):
            peer.wait_for(lambda: pub.get_subscription_count() == 1, proc, f"the recorder subscribing {pub.topic}")
        # the latched legend reaches the late-joining recorder before the next one replaces it (writer depth 1)
        assert legend_pub.wait_for_all_acked(ACKED), "the recorder never acknowledged the latched legend"
        for legend in legends[1:]:  # one at a time: a depth-1 latched writer keeps only the newest sample
            legend_pub.publish(legend)
            assert legend_pub.wait_for_all_acked(ACKED), "the recorder never acknowledged a legend"
        sent = [_cloud(i) for i in range(5)]
        for msg in sent:
            clouds.publish(msg)
        assert clouds.wait_for_all_acked(ACKED), "the recorder never acknowledged the clouds"
        # best effort may lose a sample on a loaded machine: keep publishing until the recorder has its 5
        scan_sent = []

        def scan_and_check() -> bool:
            scan_sent.append(_cloud(100 + len(scan_sent)))
            scans.publish(scan_sent[-1])
            return proc.poll() is not None

        end = time.monotonic() + 120
        while not scan_and_check():
            if time.monotonic() > end:
                proc.send_signal(signal.SIGINT)
                out = proc.communicate(timeout=60)[0]
                pytest.fail(f"the recorder never stopped after 5 messages per topic:\n{out}")
            peer.executor.spin_once(timeout_sec=0.05)
        out, _ = proc.communicate(timeout=60)
    finally:
        peer.close()
    assert proc.returncode == 0, out
    info = bag_info(bag)
    assert set(info.topics) == {"/points", "/legend", "/scan"}
    assert info.topics["/legend"].qos.durability == "transient_local"
    assert info.topics["/points"].qos.reliability == "reliable"
    assert info.topics["/scan"].qos.reliability == "best_effort"
    got = {}
    for topic, _, _, raw in read_messages(bag):
        got.setdefault(topic, []).append(raw)
    # Compared as messages: CDR alignment padding bytes are not defined (rclpy leaves them uninitialised)
    assert [deserialize_message(r, PointCloud2) for r in got["/points"]] == sent
    assert [deserialize_message(r, MarkerArray) for r in got["/legend"]] == legends
    scan_got = [deserialize_message(r, PointCloud2) for r in got["/scan"]]
    assert len(scan_got) >= 5
    positions = [scan_sent.index(m) for m in scan_got]  # each one published, in publishing order
    assert positions == sorted(set(positions))


def test_record_stops_cleanly_on_ctrl_c(tmp_path):
    """SIGINT once the recorder has subscribed and acknowledged a cloud: exit 0, the bag written with the topic."""
    peer = Peer()
    bag = tmp_path / "out"
    try:
        pub = peer.node.create_publisher(PointCloud2, "/points", RELIABLE)
        proc = _record([str(bag), "--topics", "/points"])
        peer.wait_for(lambda: pub.get_subscription_count() == 1, proc, "the recorder subscribing /points")
        pub.publish(_cloud(0))
        assert pub.wait_for_all_acked(ACKED), "the recorder never acknowledged the cloud"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        peer.close()
    assert proc.returncode == 0, out
    info = bag_info(bag)
    assert set(info.topics) == {"/points"} and info.message_count <= 1  # acknowledged, maybe not yet taken
    assert "/points:" in out and "Traceback" not in out


def test_record_refuses_an_existing_bag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.record", str(tmp_path), "--topics", "/a"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_record_duration_ends_cleanly_with_an_empty_bag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.record", str(tmp_path / "b"), "--topics", "/a",
                           "--duration", "0.5"], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID)})
    assert proc.returncode == 0, proc.stderr
    assert "/a: 0 messages (never published)" in proc.stderr
    assert bag_info(tmp_path / "b").message_count == 0
