"""ssov-replay: two processes over real DDS (the replay CLI publishes, this process subscribes raw)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, PointCloud2  # noqa: E402

from ssov_ros.bags import read_messages  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE_BAG, SYNTH_BAG = REPO / "rosbags" / "nuscenes_sample", REPO / "rosbags" / "synthetic_street"


class Listener:
    """A private rclpy context on its own DDS domain, subscribing raw to some topics."""

    def __init__(self, topics: dict):
        self.domain = random.randrange(100, 200)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain)
        self.node = rclpy.create_node("replay_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list] = {t: [] for t in topics}
        for topic, cls in topics.items():
            self.node.create_subscription(cls, topic, lambda raw, t=topic: self.received[t].append(
                (time.monotonic(), raw)), qos_profile_sensor_data, raw=True)

    def env(self) -> dict:
        return {**os.environ, "ROS_DOMAIN_ID": str(self.domain)}

    def spin_until(self, predicate, proc: subprocess.Popen, timeout: float = 60.0, drain: float = 5.0) -> None:
        """Spin until ``predicate()``; once the replay has exited, keep draining for up to ``drain`` seconds
        (a 1.1 MB cloud can still be in flight on a loaded machine)."""
        end = time.monotonic() + timeout
        while not predicate() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
            if proc.poll() is not None:
                end = min(end, time.monotonic() + drain)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _replay(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssov_ros.replay", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_replay_publishes_the_recorded_bytes():
    topics = {"/lidar_top/points": PointCloud2, "/cam_front/image_raw/compressed": CompressedImage}
    listener = Listener(topics)
    try:
        proc = _replay([str(SAMPLE_BAG), "--topics", *topics, "--wait-for-subscribers", "30", "--delay", "1"],
                       listener.env())
        listener.spin_until(lambda: all(listener.received.values()), proc)
        # the replay's publishers offer the recorded QoS (sensor data: best effort)
        offered = {i.qos_profile.reliability.name for i in
                   listener.node.get_publishers_info_by_topic("/lidar_top/points")}
        out, _ = proc.communicate(timeout=30)
    finally:
        listener.close()
    assert proc.returncode == 0, out
    expected = {t: raw for t, _, _, raw in read_messages(SAMPLE_BAG, list(topics))}
    for topic in topics:
        assert [bytes(r) for _, r in listener.received[topic]] == [expected[topic]], topic
    assert "published 2 messages" in out
    assert offered in ({"BEST_EFFORT"}, set())  # empty if the replay had already exited


def test_replay_skips_topics_without_a_python_type():
    """tf2_msgs has no PyPI wheel: /tf and /tf_static are skipped with one warning, the rest is played."""
    try:
        import tf2_msgs.msg  # noqa: F401
        pytest.skip("tf2_msgs is installed here: nothing is skipped")
    except ImportError:
        pass
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.replay", str(SAMPLE_BAG), "--rate", "10"],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "ROS_DOMAIN_ID": str(random.randrange(100, 200))})
    assert proc.returncode == 0, proc.stderr
    assert "skipping /tf, /tf_static: no Python module for tf2_msgs/msg/TFMessage" in proc.stderr
    assert "published 13 messages" in proc.stderr  # 21 in the bag, less 7 /tf and 1 /tf_static


def test_replay_keeps_the_timing_scaled_by_rate():
    """40 sweeps at 10 Hz played at x4: never faster than the schedule (1 s from first to last), all arrive."""
    listener = Listener({"/lidar_top/points": PointCloud2})
    got = listener.received["/lidar_top/points"]
    try:
        proc = _replay([str(SYNTH_BAG), "--rate", "4", "--topics", "/lidar_top/points",
                        "--wait-for-subscribers", "30", "--delay", "1"], listener.env())
        listener.spin_until(lambda: len(got) >= 40, proc)
        out, _ = proc.communicate(timeout=30)
    finally:
        listener.close()
    assert proc.returncode == 0, out
    assert len(got) >= 38, out  # best effort on a loaded machine: allow a lost sample or two
    # Arrival times, not publish times: the first may be late, so only half the schedule is a safe bound (a
    # replay that ignored the timing would deliver everything in a few milliseconds).
    span = got[-1][0] - got[0][0]
    assert span >= 0.5 * (len(got) - 1) * 0.1 / 4
    print(f"{len(got)} sweeps over {span:.2f} s (schedule: {(len(got) - 1) * 0.025:.2f} s)")


@pytest.mark.parametrize("make_bad", ["missing", "corrupt"])
def test_replay_of_a_bad_bag_fails_with_one_line(tmp_path, make_bad):
    bag = tmp_path / "bag"
    if make_bad == "corrupt":
        bag.mkdir()
        (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, storage_identifier: mcap, "
                                           "relative_file_paths: [x.mcap], topics_with_message_count: []}")
        (bag / "x.mcap").write_bytes(b"\x89MCAP0\r\n garbage")
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.replay", str(bag)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ssov-replay: error: bag {bag}") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_replay_rejects_unknown_topics():
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.replay", str(SAMPLE_BAG), "--topics", "/nope"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "no topic /nope" in proc.stderr


def test_replay_waits_only_for_topics_someone_reads():
    """The synthetic street has 16 topics; only its cloud is read here: the replay plays as soon as that is
    matched, long before the 600 s it was allowed to wait (it used to wait for a subscriber on every topic)."""
    listener = Listener({"/lidar_top/points": PointCloud2})
    got = listener.received["/lidar_top/points"]
    try:
        proc = _replay([str(SYNTH_BAG), "--rate", "4", "--wait-for-subscribers", "600", "--delay", "1"],
                       listener.env())
        listener.spin_until(lambda: len(got) >= 20, proc, timeout=120)
        proc.terminate()  # SIGTERM: a clean stop
        out, _ = proc.communicate(timeout=30)
    finally:
        listener.close()
    assert proc.returncode == 0, out
    assert len(got) >= 20, out
    assert "waiting up to 600 s for a subscriber on /lidar_top/points" in out and "no subscriber" not in out


def test_replay_says_which_cloud_topic_nobody_reads():
    proc = subprocess.run([sys.executable, "-m", "ssov_ros.replay", str(SAMPLE_BAG), "--rate", "10",
                           "--wait-for-subscribers", "1"], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "ROS_DOMAIN_ID": str(random.randrange(100, 200))})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "no subscriber" in ln]
    assert len(lines) == 1 and "no subscriber after 1 s on /lidar_top/points (is the node running" in lines[0]
    assert "/cam_front" not in lines[0]  # camera topics nobody reads are not waited for
