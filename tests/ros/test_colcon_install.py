"""What a ROS user does, with what installs here: colcon builds the package into a temporary prefix, and from
another directory, with only that prefix on AMENT_PREFIX_PATH, the installed node starts with the installed params
file, finds the default model, labels the shipped bag's cloud and answers the parameter services as `ros2 param`
calls them (list, get, set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_test_utils import DOMAIN_ID, REPO

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from ssov_ros.bags import LIDAR_TOPIC, read_messages  # noqa: E402
from ssov_ros.pointcloud import read_cloud  # noqa: E402

COLCON = Path(sys.executable).with_name("colcon")
NODE = "/ssov_segmenter"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    """`colcon build` of the source tree into a fresh prefix (merged install layout), run from elsewhere."""
    if not COLCON.exists():
        pytest.skip("colcon is not installed in this environment (requirements.txt)")
    work = tmp_path_factory.mktemp("colcon_ws")
    env = dict(os.environ, AMENT_PREFIX_PATH=sysconfig.get_paths()["data"])  # the underlay: rclpy's prefix
    r = subprocess.run([str(COLCON), "--log-base", "log", "build", "--base-paths", str(REPO), "--build-base", "build",
                        "--install-base", "install", "--merge-install", "--event-handlers", "console_direct-"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work / "install"


def installed_env(prefix: Path) -> dict:
    """Only the install prefix on AMENT_PREFIX_PATH, its site-packages first on the Python path (the venv's own
    `pip install -e .` must not be what runs), plus the network-safety variables of the test session."""
    keep = ("PATH", "HOME", "LANG", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE",
            "HF_HUB_OFFLINE", "NUMBA_CACHE_DIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=str(prefix / SITE), ROS_DOMAIN_ID=str(DOMAIN_ID))
    return env


def test_installed_layout(install):
    share = install / "share" / "ssov_ros"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "ssov_ros").is_file()
    assert (share / "package.xml").is_file() and (share / "config" / "ssov_node.yaml").is_file()
    assert {p.name for p in (share / "launch").glob("*.launch.py")} == {"ssov.launch.py", "replay.launch.py"}
    assert (share / "models" / "ssov_synthetic_minkunet34c_w025.pt").is_file()
    for script in ("ssov_segmenter", "ssov-replay", "ssov-record"):
        assert os.access(install / "lib" / "ssov_ros" / script, os.X_OK), script


def _call(node, executor, srv_type, name: str, request, timeout: float = 60.0):
    client = node.create_client(srv_type, f"{NODE}/{name}")
    assert client.wait_for_service(timeout_sec=timeout), f"{name} not offered"
    future = client.call_async(request)
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    assert future.done(), f"{name} did not answer"
    return future.result()


def _set(name: str, value) -> SetParameters.Request:
    kind, field = ((ParameterType.PARAMETER_DOUBLE, "double_value") if isinstance(value, float)
                   else (ParameterType.PARAMETER_STRING, "string_value"))
    msg = ParameterMsg(name=name, value=ParameterValue(type=kind))
    setattr(msg.value, field, value)
    return SetParameters.Request(parameters=[msg])


def test_installed_node_labels_the_shipped_bag_and_serves_its_parameters(install, tmp_path):
    env = installed_env(install)
    where = subprocess.run([sys.executable, "-c", "import ssov_ros, ssov_train; print(ssov_ros.__file__); "
                            "print(ssov_train.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0 and all(line.startswith(str(install)) for line in where.stdout.split()), where
    params_file = install / "share" / "ssov_ros" / "config" / "ssov_node.yaml"
    proc = subprocess.Popen([str(install / "lib" / "ssov_ros" / "ssov_segmenter"), "--ros-args", "--params-file",
                             str(params_file)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, _, _, raw = next(read_messages(REPO / "rosbags" / "synthetic_street", [LIDAR_TOPIC]))
    cloud = deserialize_message(raw, PointCloud2)
    xyz = read_cloud(cloud).xyz
    far = np.linalg.norm(xyz, axis=1) > 10.0
    assert far.any() and (~far).any()

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    try:
        peer = rclpy.create_node("colcon_install_peer", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(peer)
        outputs: dict[int, PointCloud2] = {}
        peer.create_subscription(PointCloud2, f"{NODE}/output/points",
                                 lambda m: outputs.__setitem__(m.header.stamp.sec, m), 10)
        pub = peer.create_publisher(PointCloud2, f"{NODE}/input/points", rclpy.qos.qos_profile_sensor_data)

        def label(stamp_sec: int, timeout: float) -> np.ndarray:
            """Publish the cloud under a stamp of its own (re-sent: best-effort input) until its labels return."""
            cloud.header.stamp.sec = stamp_sec
            end = peer.get_clock().now().nanoseconds + int(timeout * 1e9)
            while stamp_sec not in outputs and proc.poll() is None and peer.get_clock().now().nanoseconds < end:
                if pub.get_subscription_count():
                    pub.publish(cloud)
                executor.spin_once(timeout_sec=2.0)
            assert stamp_sec in outputs, proc.stderr.read() if proc.poll() is not None else "no labelled cloud"
            return read_cloud(outputs[stamp_sec]).columns["label"]

        labels = label(1, timeout=300)  # start-up: the default model found in share/ssov_ros/models
        assert len(labels) == len(xyz) and (labels[far] > 0).all() and (labels[~far] > 0).mean() > 0.9

        # `ros2 param dump`: every declared name has a value, the installed params file's
        names = _call(peer, executor, ListParameters, "list_parameters", ListParameters.Request()).result.names
        values = _call(peer, executor, GetParameters, "get_parameters", GetParameters.Request(names=names)).values
        assert len(values) == len(names) and all(v.type != ParameterType.PARAMETER_NOT_SET for v in values)
        got = dict(zip(names, values))
        in_file = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
        assert got["model.path"].string_value == in_file["model"]["path"]
        assert got["input.max_range"].double_value == in_file["input"]["max_range"]
        assert list(got["cameras.names"].string_array_value) == in_file["cameras"]["names"] == []

        # a runtime parameter changes the next output; a read-only one is refused with the reason
        ok = _call(peer, executor, SetParameters, "set_parameters", _set("input.max_range", 10.0)).results[0]
        assert ok.successful, ok.reason
        labels = label(2, timeout=120)
        assert (labels[far] == 0).all() and (labels[~far] > 0).mean() > 0.9
        refused = _call(peer, executor, SetParameters, "set_parameters", _set("model.path", "x.pt")).results[0]
        assert not refused.successful and "read-only" in refused.reason
    finally:
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    # the start-up line names what it listens to (resolved names: remappings show)
    assert "subscribed: /ssov_segmenter/input/points, /ssov_segmenter/query" in log, log[-3000:]
    assert "parameters changed: input.max_range=10.0" in log
    # the default model: the exported package where `make export` built it before the build, else its checkpoint
    if (REPO / "models" / "ssov_synthetic_minkunet34c_w025.ssovpkg" / "model.yaml").is_file():
        assert "model ssov_synthetic_minkunet34c_w025.ssovpkg via onnxruntime" in log
    else:
        assert "model ssov_synthetic_minkunet34c_w025.pt via torch" in log and "not installed" in log
