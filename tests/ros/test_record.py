"""ssov-record: two processes over real DDS (this process publishes, the record CLI writes the bag)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from ssov_ros.bags import bag_info, read_messages  # noqa: E402
from ssov_ros.pointcloud import to_ros_cloud  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_record_writes_what_was_published(tmp_path):
    domain = random.randrange(100, 200)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("record_test", context=context)
    try:
        # latched before the recorder exists: it must still be caught (transient local subscription)
        legend = MarkerArray(markers=[Marker(ns="legend", id=3, text="car")])
        node.create_publisher(MarkerArray, "/legend", LATCHED).publish(legend)
        clouds = node.create_publisher(PointCloud2, "/points", qos_profile_sensor_data)
        bag = tmp_path / "out"
        proc = subprocess.Popen([sys.executable, "-m", "ssov_ros.record", str(bag), "--topics", "/points", "/legend",
                                 "/never"], env={**os.environ, "ROS_DOMAIN_ID": str(domain)}, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 60
        while clouds.get_subscription_count() == 0 and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.02)
        assert clouds.get_subscription_count() == 1, "the recorder never subscribed"
        sent = []
        for i in range(5):
            msg = to_ros_cloud(Header(frame_id="lidar"), {"x": np.arange(1000, dtype=np.float32) + i,
                                                          "y": np.zeros(1000, np.float32),
                                                          "z": np.ones(1000, np.float32)})
            clouds.publish(msg)
            sent.append(msg)
            time.sleep(0.05)  # best effort into a depth-10 reader: spacing keeps the test about recording
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert proc.returncode == 0, out
    assert "/never: 0 messages (never published)" in out
    info = bag_info(bag)
    assert set(info.topics) == {"/points", "/legend"}
    assert info.topics["/legend"].qos.durability == "transient_local"
    assert info.topics["/points"].qos.reliability == "best_effort"
    got = {}
    for topic, _, _, raw in read_messages(bag):
        got.setdefault(topic, []).append(raw)
    # Compared as messages: CDR alignment padding bytes are not defined (rclpy leaves them uninitialised)
    assert [deserialize_message(r, PointCloud2) for r in got["/points"]] == sent
    assert deserialize_message(got["/legend"][0], MarkerArray) == legend


def test_record_refuses_an_existing_bag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.record", str(tmp_path), "--topics", "/a"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_record_duration_ends_cleanly_with_an_empty_bag(tmp_path):
    domain = random.randrange(100, 200)
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.record", str(tmp_path / "b"), "--topics", "/a",
                           "--duration", "0.5"], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "ROS_DOMAIN_ID": str(domain)})
    assert proc.returncode == 0, proc.stderr
    assert bag_info(tmp_path / "b").message_count == 0
