"""Starvation check of the ssov_segmenter node: the shipped synthetic street (40 sweeps at 10 Hz, 6 cameras,
odometry at 50 Hz) replayed at rate 1.0 into the node process while CPU-heavy jobs run beside it; reported: clouds
labelled, camera overlays per labelled cloud and clouds with a pose (from the node's /diagnostics), for the node as
shipped (its callback groups on a multi-threaded executor) and, in the same run, for the same node spun by a
single-threaded executor (every callback in turn: images and odometry wait behind the cloud in the network).

    .venv/bin/python bench/bench_node_replay.py [--rate 1.0] [--hogs 1] [--executors multi single]
                                                [--model models/ssov_synthetic_minkunet34c_w025.pt] [--repeats 1]

The goal (issue 12): overlays and poses for >= 90% of the labelled clouds at rate 1.0 on a busy machine.
Sets the network-safety environment (LOCALHOST discovery, the repository's Fast DDS profile) for itself and the node.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_local.xml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))

BAG = REPO / "rosbags" / "synthetic_street"
HOG = "while True: pass"


def serve_single(ros_args: list[str]) -> int:
    """The node spun by a single-threaded executor (the design before the callback groups), until SIGINT/TERM."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from ssov_ros.node import SegmenterNode
    from ssov_ros.shutdown import stop_on_signals

    rclpy.init(args=["ssov_segmenter", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop)
    node = SegmenterNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def wait_quiet(progress, quiet_s: float) -> None:
    """Until ``progress()`` has not changed for ``quiet_s`` seconds."""
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        now = progress()
        if now != last:
            last, quiet_since = now, time.monotonic()
        time.sleep(0.1)


def latest_values(diagnostics: list) -> dict:
    return {kv.key: kv.value for kv in diagnostics[-1].status[0].values} if diagnostics else {}


def run_once(executor_kind: str, model: Path, rate: float, hogs: int, workdir: Path, extra: dict) -> dict:
    import rclpy
    import yaml
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, PointCloud2

    from ssov_ros.bags import LIDAR_TOPIC, ODOM_TOPIC, calibration_params, camera_info_topic, image_topic
    from ssov_ros.demo import node_command
    from ssov_ros.replay import Replayer
    from ssov_ros.tf_buffer import stamp_ns
    from ssov_train.config import nest_dotted

    calib = calibration_params(BAG)
    cameras = calib["cameras.names"]
    params = workdir / f"params_{executor_kind}.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": nest_dotted(
        {**calib, "model.path": str(model), "output.diagnostics_period_s": 0.5, **extra})}}))
    cmd = node_command([REPO / "config" / "ssov_node.yaml", params], cameras)
    if executor_kind == "single":
        cmd = [sys.executable, __file__, "--serve-single", *cmd[cmd.index("--ros-args"):]]
    log_path = workdir / f"node_{executor_kind}.log"
    with open(log_path, "w") as log:
        node_proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    hog_procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    node = rclpy.create_node(f"bench_replay_{executor_kind}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    labelled: list[int] = []
    overlays = {c: 0 for c in cameras}
    diagnostics: list = []
    overlay_stamps: list = []
    node.create_subscription(PointCloud2, "/ssov_segmenter/output/points",
                             lambda m: labelled.append(round(stamp_ns(m.header.stamp) / 1e9 % 100, 3)), 10)
    for cam in cameras:
        node.create_subscription(Image, f"/ssov_segmenter/output/{cam}/overlay", lambda m, c=cam: (
            overlays.__setitem__(c, overlays[c] + 1),
            overlay_stamps.append(round(stamp_ns(m.header.stamp) / 1e9 % 100, 3))), 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)  # ends at executor.shutdown()
    spinner.start()
    try:
        topics = [LIDAR_TOPIC, ODOM_TOPIC, *(t for c in cameras for t in (image_topic(c), camera_info_topic(c)))]
        player = Replayer(node, BAG, topics, log=lambda m: None)
        missing = player.wait_for_readers(300.0)
        if missing or node_proc.poll() is not None:
            raise RuntimeError(f"node not ready ({missing}):\n{log_path.read_text()[-2000:]}")
        time.sleep(1.0)  # discovery completes on the node's side a moment after ours (as `ros2 bag play --delay`)
        # warm-up pass, unmeasured: the first sweeps (first-inference costs, late discovery of some topics)
        warm_stop = threading.Event()
        sweeps = []

        def on_publish(topic: str, t_ns: int, wall: float) -> None:
            if topic == LIDAR_TOPIC:
                sweeps.append(t_ns)
                if len(sweeps) >= 5:
                    warm_stop.set()

        player.play(rate, warm_stop, on_publish)
        wait_quiet(lambda: len(labelled) + sum(overlays.values()), 3.0)
        before = latest_values(diagnostics)
        labelled.clear()
        overlay_stamps.clear()
        overlays.update(dict.fromkeys(overlays, 0))
        t0 = time.monotonic()
        published = player.play(rate)
        play_s = time.monotonic() - t0
        wait_quiet(lambda: len(labelled) + sum(overlays.values()), 3.0)
        start = len(diagnostics)
        end = time.monotonic() + 5.0
        while len(diagnostics) == start and time.monotonic() < end:
            time.sleep(0.05)
        after = latest_values(diagnostics)
        values = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in
                  ("frames", "frames_with_pose", "missed_clouds_total", "skipped_overlays_total")}
        values.update({k: after.get(k, "") for k in ("last_overlay_skip", "no_pose_reason")})
    finally:
        executor.shutdown()
        spinner.join()
        for h in hog_procs:
            h.kill()
            h.wait()
        os.killpg(node_proc.pid, signal.SIGINT)
        try:
            node_proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node_proc.pid, signal.SIGKILL)
            node_proc.wait()
        node.destroy_node()
    clouds = player.info.topics[LIDAR_TOPIC].count
    frames = int(values.get("frames", 0))
    n = len(labelled)
    return {"executor": executor_kind, "clouds_in_bag": clouds, "messages_published": published,
            "replay_s": round(play_s, 2), "clouds_labelled": n, "labelled_stamps": labelled,
            "overlay_stamps": sorted(overlay_stamps), "overlays": dict(overlays),
            "overlays_per_labelled_cloud": round(sum(overlays.values()) / max(1, n * len(cameras)), 3),
            "frames_with_pose": int(values.get("frames_with_pose", 0)), "node_frames": frames,
            "posed_share": round(int(values.get("frames_with_pose", 0)) / max(1, frames), 3),
            "missed_clouds": int(values.get("missed_clouds_total", 0)),
            "skipped_overlays": int(values.get("skipped_overlays_total", 0)),
            "last_overlay_skip": values.get("last_overlay_skip", ""),
            "no_pose_reason": values.get("no_pose_reason", ""),
            "node_exit_code": node_proc.returncode}


def main() -> int:
    if "--serve-single" in sys.argv:
        return serve_single(sys.argv[sys.argv.index("--ros-args"):])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--hogs", type=int, default=1, help="CPU-bound processes running beside the node")
    ap.add_argument("--executors", nargs="+", choices=["multi", "single"], default=["multi", "single"])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--param", nargs="+", default=[], metavar="NAME:=VALUE",
                    help="node parameters on top of config/ssov_node.yaml and the bag's calibration (YAML values)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_node_replay.json")
    args = ap.parse_args()
    if not BAG.exists():
        from ssov_ros.bags import make_synthetic_bag

        make_synthetic_bag(BAG)
    import rclpy
    import yaml

    extra = {name: yaml.safe_load(value) for name, _, value in (p.partition(":=") for p in args.param)}
    rclpy.init()
    results = []
    try:
        logs = args.out.with_suffix("")  # node logs and parameters of each run
        logs.mkdir(parents=True, exist_ok=True)
        if True:
            for _ in range(args.repeats):
                for kind in args.executors:
                    r = run_once(kind, args.model, args.rate, args.hogs, logs, extra)
                    results.append(r)
                    print(f"{kind:6s} executor: {r['clouds_labelled']}/{r['clouds_in_bag']} clouds labelled, "
                          f"overlays {sum(r['overlays'].values())}/{r['clouds_labelled'] * len(r['overlays'])} "
                          f"({100 * r['overlays_per_labelled_cloud']:.0f}%), posed {r['frames_with_pose']}/"
                          f"{r['node_frames']} ({100 * r['posed_share']:.0f}%), missed in the input queue "
                          f"{r['missed_clouds']}, overlays skipped {r['skipped_overlays']}, node exit "
                          f"{r['node_exit_code']}", flush=True)
    finally:
        rclpy.try_shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rate": args.rate, "hogs": args.hogs, "params": extra, "cpus": os.cpu_count(),
                                    "loadavg_1min": os.getloadavg()[0], "runs": results}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
