"""The deployable runtime: with torch, spconv, open_clip, nuscenes-devkit, tqdm, scikit-learn and scipy made
unimportable, the node runs the exported demo package (in this process and as its own process) and publishes
exactly what it publishes in the full environment; an exported feature model answers text queries from the
embeddings its package carries.

The packages are exported in the full environment first (export needs torch: it traces the spconv model)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from runtime_blocker import BLOCKED, blocked, child_env
from runtime_scenario import PARAMS, REPO, drive, ros_arg, run_in_process, sweeps

rclpy = pytest.importorskip("rclpy")

DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
DOMAIN_ID = 20 + (os.getpid() + 41) % 80  # a DDS domain of this test process alone
# the node process's interpreter: this one (blocked), or a slim runtime venv's (docs/performance.md "Slim runtime")
NODE_PYTHON = os.environ.get("SSOV_NODE_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def demo_package(tmp_path_factory):
    from ssov_export.onnx_export import export_package

    package, _ = export_package(DEMO, tmp_path_factory.mktemp("runtime") / "demo.ssovpkg", check=False)
    return package


@pytest.fixture(scope="module")
def full_environment(demo_package):
    """What the node publishes in the full environment (the reference of every blocked run)."""
    return run_in_process(demo_package, DOMAIN_ID)


def test_the_blocker_blocks():
    import numpy
    import torch

    import ssov_train.afi

    with blocked() as blocker:
        for name in BLOCKED:
            with pytest.raises(ModuleNotFoundError):
                importlib.import_module(name)
        assert sorted(set(blocker.attempts)) == sorted(BLOCKED)
        import ssov_train.afi as fresh

        assert fresh is not ssov_train.afi and sys.modules["numpy"] is numpy  # the project's modules only, afresh
    # the originals are back
    assert sys.modules["torch"] is torch and sys.modules["ssov_train.afi"] is ssov_train.afi


def test_without_torch_a_checkpoint_is_refused_with_one_clear_error():
    with blocked():
        from ssov_train.errors import ConfigError
        from ssov_train.inference import open_backend

        with pytest.raises(ConfigError, match="backend 'torch' is not available here: No module named 'torch'"):
            open_backend(DEMO)


def test_the_full_environment_run_is_afi_then_streaming_afi(full_environment, demo_package):
    """The reference itself is the core's streaming AFI on the two posed sweeps, and the second sweep's labels
    are not those of AFI alone: the first sweep voted."""
    from dataclasses import replace

    from ssov_train.inference import Segmenter, open_backend
    from ssov_ros.params import NodeConfig

    assert int(full_environment["frames_with_pose"]) == 2
    points, intensity, pose, _ = sweeps()
    cfg = NodeConfig()
    streaming = Segmenter(open_backend(demo_package), afi=cfg.afi_config(),
                          temporal=replace(cfg.temporal_config(), history=PARAMS["temporal.history"]))
    car = list(streaming.spec.class_names).index("car")
    for k in (1, 2):
        expected = streaming.segment(points[k], intensity, pose=pose[k], keep_probs=True)
        np.testing.assert_array_equal(full_environment[f"labels_{k}"], expected.labels)
        np.testing.assert_array_equal(full_environment[f"similarity_{k}"], expected.probs[:, car])
    alone = Segmenter(open_backend(demo_package), afi=cfg.afi_config()).segment(points[2], intensity)
    assert np.mean(full_environment["labels_2"] != alone.labels) > 0.001


def test_node_in_process_without_the_training_stack(full_environment, demo_package):
    with blocked() as blocker:
        result = run_in_process(demo_package, DOMAIN_ID)
        leaked = sorted(k for k in sys.modules if k.partition(".")[0] in BLOCKED)
    assert not leaked
    print(f"blocked imports tried (and survived): {sorted(set(blocker.attempts)) or 'none'}")
    assert set(result) == set(full_environment)
    for key, expected in full_environment.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)


def test_node_process_without_the_training_stack(full_environment, demo_package, tmp_path):
    env = child_env(tmp_path / "blocker", env=dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID)))
    check = subprocess.run([NODE_PYTHON, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode == 1 and "No module named 'torch'" in check.stderr
    cmd = [NODE_PYTHON, "-m", "ssov_ros.node", "--ros-args", "-p", f"model.path:={demo_package}"]
    for name, value in PARAMS.items():
        cmd += ["-p", f"{name}:={ros_arg(value)}"]
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    try:
        result = drive(context, alive=lambda: proc.poll() is None)
    finally:
        rclpy.shutdown(context=context)
        proc.send_signal(signal.SIGINT)  # as ros2 launch stops a node
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # hung at shutdown: not left behind, and the assertion below fails
                proc.kill()
                proc.wait()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "via onnxruntime" in log
    for key, expected in full_environment.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)
