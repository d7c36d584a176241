"""Ctrl-C and SIGTERM: the node, ssov-replay and ssov-record end cleanly (exit code 0, no traceback, the frame in
flight published or dropped quietly).  Each process runs in a session of its own and the signal goes to its
process group, as a terminal's Ctrl-C does; the test waits on the processes' output, never on fixed sleeps."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from ros_test_utils import DEMO_MODEL, REPO, encode, reserve_domain, to_rclpy

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from ssov_ros.bags import bag_info  # noqa: E402

SYNTH_BAG = REPO / "rosbags" / "synthetic_street"
SIGNALS = [signal.SIGINT, signal.SIGTERM]
BAD_OUTPUT = ("Traceback", "KeyboardInterrupt", "Failed to publish", "context is invalid")


class Process:
    """A child in its own session (process group); its merged output is collected line by line."""

    def __init__(self, args: list[str], domain: int):
        self.proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "ROS_DOMAIN_ID": str(domain)},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        self._eof = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)
        self._eof.set()

    def wait_for(self, text: str, timeout: float = 120.0) -> bool:
        """Until a line containing ``text`` was printed (False when the process ended or time ran out first)."""
        if any(text in line for line in self.lines):
            return True
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._new.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                return False
            if text in line:
                return True
        return False

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self._eof.wait(10.0)  # the reader has every line
        return rc, "".join(self.lines)


def _assert_clean(rc: int, out: str) -> None:
    assert rc == 0, out
    for bad in BAD_OUTPUT:
        assert bad not in out, out


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_replay_stops_cleanly_while_playing(sig):
    p = Process([sys.executable, "-m", "ssov_ros.replay", str(SYNTH_BAG), "--loop"], reserve_domain())
    assert p.wait_for("playing"), "".join(p.lines)
    p.signal_group(sig)
    rc, out = p.finish()
    _assert_clean(rc, out)
    assert "(stopped)" in out


def test_replay_stops_cleanly_while_waiting_for_subscribers():
    p = Process([sys.executable, "-m", "ssov_ros.replay", str(SYNTH_BAG), "--wait-for-subscribers", "300"],
                reserve_domain())
    assert p.wait_for("waiting up to 300 s for a subscriber on /lidar_top/points"), "".join(p.lines)
    p.signal_group(signal.SIGINT)
    rc, out = p.finish(timeout=30)  # well before the 300 s
    _assert_clean(rc, out)
    assert "published 0 messages (stopped)" in out


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_record_stops_cleanly_and_writes_its_bag(tmp_path, sig):
    bag = tmp_path / "out"
    p = Process([sys.executable, "-m", "ssov_ros.record", str(bag), "--topics", "/nothing_here"],
                reserve_domain())
    assert p.wait_for("recording /nothing_here"), "".join(p.lines)
    p.signal_group(sig)
    rc, out = p.finish()
    _assert_clean(rc, out)
    assert bag_info(bag).message_count == 0  # the bag is complete (written when recording ends)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_node_stops_cleanly_with_clouds_in_flight(frame, sig):
    """Clouds keep coming while the signal arrives (one is in the network or AFI): it is published or dropped
    quietly, and the node exits 0 without a traceback."""
    domain = reserve_domain()
    p = Process([sys.executable, "-m", "ssov_ros.node", "--ros-args", "--params-file",
                 str(REPO / "config" / "ssov_node.yaml"), "-p", f"model.path:={DEMO_MODEL}"], domain)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("shutdown_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    outputs: list = []
    try:
        node.create_subscription(PointCloud2, "/ssov_segmenter/output/points", outputs.append, 10)
        clouds = node.create_publisher(PointCloud2, "/ssov_segmenter/input/points", qos_profile_sensor_data)
        assert p.wait_for("pipeline on"), "".join(p.lines)  # the start-up line: model loaded, subscribed
        msg = to_rclpy(encode("nuscenes", frame.points, frame.intensity), frame_id="LIDAR_TOP")
        end = time.monotonic() + 120
        while len(outputs) < 2 and time.monotonic() < end and p.proc.poll() is None:
            clouds.publish(msg)  # best effort, 10 Hz: the node drops what it cannot take
            executor.spin_once(timeout_sec=0.1)
        assert len(outputs) >= 2, "".join(p.lines)
        clouds.publish(msg)
        executor.spin_once(timeout_sec=0.05)
        p.signal_group(sig)
        while p.proc.poll() is None and time.monotonic() < end:
            clouds.publish(msg)  # clouds arriving during shutdown are ignored quietly
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    rc, out = p.finish()
    _assert_clean(rc, out)
