"""The node as its own process, started as users start it (params file, console script), talked to over DDS."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ros_test_utils import DEMO_MODEL, DOMAIN_ID, REPO, encode, to_rclpy

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from ssov_ros.pointcloud import read_cloud  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402


def _env():
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    # the network-safety variables come from tests/conftest.py; the node itself must never need them
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    return env


def _start(*ros_args):
    # the demo checkpoint: the default, its exported package, may not be there
    cmd = [sys.executable, "-m", "ssov_ros.node", "--ros-args", "--params-file", str(REPO / "config" / "ssov_node.yaml"),
           "-p", f"model.path:={DEMO_MODEL}", *ros_args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_real_sample_round_trip(frame):
    proc = _start("-p", "afi.enabled:=false", "-p", "output.diagnostics_period_s:=0.2")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = rclpy.create_node("ssov_test_driver", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        outs, diags = [], []
        node.create_subscription(PointCloud2, "/ssov_segmenter/output/points", outs.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        pub = node.create_publisher(PointCloud2, "/ssov_segmenter/input/points", rclpy.qos.qos_profile_sensor_data)

        def spin_until(pred, timeout):
            end = time.monotonic() + timeout
            while not pred() and time.monotonic() < end and proc.poll() is None:
                ex.spin_once(timeout_sec=0.05)
            return pred()

        # start-up loads torch and the model: generous timeout, polled
        assert spin_until(lambda: pub.get_subscription_count() > 0 and node.count_publishers(
            "/ssov_segmenter/output/points") > 0, 120), proc.stderr.read() if proc.poll() is not None else "no match"
        msg = to_rclpy(encode("xyzircaedt", frame.points, frame.intensity), stamp_ns=42 * 10**9, frame_id="LIDAR_TOP")
        for _ in range(30):  # best-effort input: resend until an answer comes back
            pub.publish(msg)
            if spin_until(lambda: outs, 2.0):
                break
        assert outs, "no output from the node process"
        out = outs[0]
        assert out.header.frame_id == "LIDAR_TOP" and out.header.stamp.sec == 42
        labels = read_cloud(out).columns["label"]
        # same model, same input (uint8 intensity of the Autoware layout) through the in-process core
        expected = Segmenter(open_backend(DEMO_MODEL)).segment(frame.points, read_cloud(msg).intensity).labels
        assert np.mean(labels == expected) > 0.999  # thread counts may differ: float sums, rare flips
        assert spin_until(lambda: any(s.level == DiagnosticStatus.OK and s.message == "ok"
                                      for d in diags for s in d.status), 10)
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    assert rc == 0, proc.stderr.read()


def test_console_script_fails_fast_with_one_clear_line(tmp_path):
    script = shutil.which("ssov_segmenter", path=os.path.dirname(sys.executable))
    assert script, "console script ssov_segmenter not installed (pip install -e .)"
    missing = tmp_path / "nope.pt"
    r = subprocess.run([script, "--ros-args", "-p", f"model.path:={missing}"], env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ssov_segmenter: model file") and "not found" in last and str(missing) in last
    assert "Traceback" not in r.stderr
