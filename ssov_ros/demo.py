"""`make demo`: the shipped bags replayed through the ssov_segmenter node, two processes over real DDS.

For each bag in ``rosbags/`` (the real nuScenes keyframe, then 40 sweeps of a synthetic street at 10 Hz):

1. start the node (``python -m ssov_ros.node``) with config/ssov_node.yaml, the demo weights and the bag's
   calibration as parameters (``ssov_ros.bags.calibration_params``: tf2_msgs, and so /tf_static, has no wheel);
2. once it has subscribed, replay the bag (``ssov_ros.replay``) and record the node's outputs
   (``ssov_ros.record``) into ``<out>/<bag>/output_bag``;
3. write a bird's-eye view coloured by label with a legend, the camera overlays as PNGs, and the latency
   per stage (p50/p95, from the node's ``~/debug/processing_time_ms/*`` topics, plus end to end: replay
   publish -> labelled cloud received here) into ``<out>/latency.json`` and a printed table.

Run: ``python -m ssov_ros.demo --out demo_out`` (the bags are generated first if missing).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from ssov_train.config import nest_dotted
from ssov_train.errors import SsovError
from ssov_train.io import write_json_atomic, write_text_atomic

from .bags import (CAMERAS, LIDAR_TOPIC, ODOM_TOPIC, SHIPPED, BagWriter, bag_info, calibration_params,
                   camera_info_topic, deserialize, first_message, image_topic, read_messages, shipped_bags)
from .overlay import decode_image
from .params import DEFAULT_MODEL as DEFAULT_NODE_MODEL
from .params import resolve_model_path
from .tf_buffer import stamp_ns

REPO = Path(__file__).resolve().parents[1]
NODE = "ssov_segmenter"
OUT_POINTS, OUT_LEGEND = f"/{NODE}/output/points", f"/{NODE}/output/legend"
TIMING_PREFIX, PIPELINE_LATENCY = f"/{NODE}/debug/processing_time_ms/", f"/{NODE}/debug/pipeline_latency_ms"
DEFAULT_MODEL = REPO / DEFAULT_NODE_MODEL  # the exported package (`make export`), onnxruntime on CPU


def overlay_topic(camera: str) -> str:
    return f"/{NODE}/output/{camera}/overlay"


def node_command(params_files: Sequence[Path], cameras: Sequence[str]) -> list[str]:
    """The node's command line: the demo's parameter files and remappings of its inputs to the bag topics."""
    cmd = [sys.executable, "-m", "ssov_ros.node", "--ros-args"]
    for p in params_files:
        cmd += ["--params-file", str(p)]
    remaps = {"~/input/points": LIDAR_TOPIC, "~/input/odometry": ODOM_TOPIC}
    for cam in cameras:
        remaps[f"~/input/{cam}/image"] = image_topic(cam)
        remaps[f"~/input/{cam}/camera_info"] = camera_info_topic(cam)
    for src, dst in remaps.items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def percentiles(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"count": 0}
    return {"count": int(v.size), "p50": round(float(np.percentile(v, 50)), 2),
            "p95": round(float(np.percentile(v, 95)), 2), "mean": round(float(v.mean()), 2),
            "max": round(float(v.max()), 2)}


@dataclass
class Outputs:
    """What the driver collected from the node for one bag (filled from the executor thread)."""

    clouds: list = field(default_factory=list)  # (stamp_ns, xyz (N,3), labels (N,)) per labelled cloud
    legend: Optional[bytes] = None
    overlays: dict = field(default_factory=dict)  # camera -> last overlay (raw)
    timing: dict = field(default_factory=dict)  # stage -> [ms]
    end_to_end_ms: list = field(default_factory=list)
    published: dict = field(default_factory=dict)  # lidar stamp -> wall time the replay last published it
    sweeps_published: int = 0
    last_stamp: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset_measurements(self) -> None:
        with self.lock:
            self.clouds.clear()
            self.timing.clear()
            self.end_to_end_ms.clear()
            self.sweeps_published = 0

    def on_message(self, topic: str, raw: bytes, t_ns: int) -> None:
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import Float64

        from .pointcloud import read_cloud

        received = t_ns / 1e9
        if topic == OUT_POINTS:
            from sensor_msgs.msg import PointCloud2

            msg = deserialize_message(raw, PointCloud2)
            stamp = stamp_ns(msg.header.stamp)
            cloud = read_cloud(msg, fields=("label",))
            with self.lock:
                self.clouds.append((stamp, cloud.xyz, cloud.columns["label"].astype(np.int64)))
                if stamp in self.published:
                    self.end_to_end_ms.append(1000 * (received - self.published[stamp]))
        elif topic == OUT_LEGEND:
            self.legend = raw
        elif topic.startswith(TIMING_PREFIX) or topic == PIPELINE_LATENCY:
            # pipeline_latency_ms is "now - header stamp": meaningful live, not for a bag replayed with its
            # original stamps, so it is recorded in the bag but not summarised.
            if not topic.startswith(TIMING_PREFIX):
                return
            stage = topic[len(TIMING_PREFIX):]
            with self.lock:
                self.timing.setdefault(stage, []).append(float(deserialize_message(raw, Float64).data))
        else:
            for cam in CAMERAS:
                if topic == overlay_topic(cam):
                    self.overlays[cam] = raw

    def on_publish(self, topic: str, t_ns: int, wall: float) -> None:
        if topic == LIDAR_TOPIC:
            with self.lock:
                self.published[t_ns] = wall
                self.sweeps_published += 1
                self.last_stamp = t_ns


def _legend(raw: Optional[bytes]) -> tuple[list[str], np.ndarray]:
    """Class names and palette (indexed by label) from the node's legend MarkerArray (id = label)."""
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    if raw is None:
        raise SsovError("the node published no legend")
    markers = [m for m in deserialize_message(raw, MarkerArray).markers if m.text]
    size = max(m.id for m in markers) + 1
    names, palette = ["unlabelled"] * size, np.full((size, 3), 128, np.uint8)
    for m in markers:
        names[m.id] = m.text
        palette[m.id] = np.round(np.array([m.color.r, m.color.g, m.color.b]) * 255).astype(np.uint8)
    return names, palette


def write_pictures(outputs: Outputs, bag: Path, out: Path, title: str, has_odometry: bool,
                   lidar_to_base: Sequence[float]) -> list[Path]:
    """bev.png (the last labelled cloud), street_map.png (every labelled cloud placed by the bag's odometry)
    and overlay_<CAM>.png (each camera's last overlay)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from ssov_train.evaluation.plots import bev_labels, image_with_legend

    pictures = []
    if outputs.clouds:
        names, palette = _legend(outputs.legend)
        _, xyz, labels = outputs.clouds[-1]
        labels = np.where(labels < len(names), labels, 0)
        pictures.append(bev_labels(xyz, labels, palette, names, out / "bev.png",
                                   f"{title}: ssov_segmenter output, last of {len(outputs.clouds)} sweep(s)"))
    if len(outputs.clouds) > 1 and has_odometry:
        pictures.append(write_street_map(outputs, bag, out / "street_map.png", title, lidar_to_base))
    if outputs.overlays:  # with a legend of the classes in the last labelled cloud
        names, palette = _legend(outputs.legend)
        present = np.unique(outputs.clouds[-1][2]) if outputs.clouds else np.arange(len(names))
        legend = {names[c]: palette[c] for c in present.tolist() if 0 < c < len(names)}
    for cam, raw in sorted(outputs.overlays.items()):
        image = np.ascontiguousarray(decode_image(deserialize_message(raw, Image)))
        pictures.append(image_with_legend(image, legend, out / f"overlay_{cam}.png"))
    return pictures


def place_clouds(bag: Path, clouds: Sequence[tuple[int, np.ndarray, np.ndarray]], lidar_to_base: Sequence[float]
                 ) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], str]:
    """Clouds (stamp, xyz in the lidar frame, labels) moved into the odometry frame of ``bag`` (poses from its
    /odom, interpolated at each stamp; lidar -> base from /tf_static). Returns ([(index, xyz, base -> odom pose)]
    for the clouds that have a pose, the odometry frame)."""
    from ssov_train.geometry.transforms import apply

    from .tf_buffer import TransformBuffer, xyz_quat_matrix

    poses = TransformBuffer(cache_ns=1 << 62)
    fixed = base = None
    for _, msgtype, _, raw in read_messages(bag, [ODOM_TOPIC]):
        fixed, base = poses.add_odometry(deserialize(raw, msgtype))
    sensor_to_base = xyz_quat_matrix(lidar_to_base)
    placed = []
    for i, (stamp, points, _) in enumerate(clouds):
        pose = poses.lookup(fixed, base, stamp) if fixed else None
        if pose is not None:
            placed.append((i, apply(pose @ sensor_to_base, points), pose))
    return placed, fixed or "odom"


def write_street_map(outputs: Outputs, bag: Path, path: Path, title: str, lidar_to_base: Sequence[float]) -> Path:
    """Every labelled cloud placed by the bag's odometry, centred on the middle of the drive: the street the
    node labelled, sweep after sweep."""
    from ssov_train.evaluation.plots import bev_labels

    names, palette = _legend(outputs.legend)
    placed, fixed = place_clouds(bag, outputs.clouds, lidar_to_base)
    if not placed:
        raise SsovError(f"bag {bag}: no odometry at the labelled sweeps' stamps")
    labels = np.concatenate([outputs.clouds[i][2] for i, _, _ in placed])
    labels = np.where(labels < len(names), labels, 0)
    xyz = np.concatenate([xyz for _, xyz, _ in placed])
    route = np.array([pose[:2, 3] for _, _, pose in placed])
    xyz[:, :2] -= (route.max(0) + route.min(0)) / 2  # centred on the middle of the drive
    return bev_labels(xyz, labels, palette, names, path,
                      f"{title}: {len(placed)} labelled sweeps placed by odometry ({fixed} frame)", extent=60.0)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_bag(bag: Path, out: Path, model: Path, rate: float, max_sweeps: int = 0, min_sweeps: int = 5,
            node_timeout_s: float = 180.0, drain_timeout_s: float = 60.0) -> dict:
    """Replay one bag through a fresh node process; collect, record and draw its outputs; return the summary."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .record import Recorder
    from .replay import Replayer

    out.mkdir(parents=True, exist_ok=True)
    calib = calibration_params(bag)
    cameras = calib["cameras.names"]
    if cameras:  # 2-pixel points (the node's default) suit 1600x900; small images get 1-pixel points
        width = first_message(bag, camera_info_topic(cameras[0]))[1].width
        calib["cameras.point_radius"] = 2 if width >= 800 else 1
    # the node runs in the repository (cwd=REPO): paths the user gave relative to their directory are made absolute
    params = out.resolve() / "node_params.yaml"
    node_params = nest_dotted({**calib, "model.path": str(Path(model).resolve())})
    write_text_atomic(params, yaml.safe_dump({"/**": {"ros__parameters": node_params}}, sort_keys=False))
    log_path = out / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(node_command([REPO / "config" / "ssov_node.yaml", params], cameras),
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    outputs = Outputs()
    node = rclpy.create_node("ssov_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    t_start = time.monotonic()
    try:
        with BagWriter(out / "output_bag", overwrite=True) as writer:
            wanted = [OUT_POINTS, OUT_LEGEND, PIPELINE_LATENCY, *(overlay_topic(c) for c in cameras)]
            recorder = Recorder(node, writer, wanted, on_message=outputs.on_message)
            topics = [LIDAR_TOPIC, ODOM_TOPIC, *(t for c in cameras for t in (image_topic(c), camera_info_topic(c)))]
            available = bag_info(bag).topics
            player = Replayer(node, bag, [t for t in topics if t in available], log=lambda m: None)
            spinner.start()
            # The node is ready once it subscribes to the cloud; its outputs exist by then.
            deadline = time.monotonic() + node_timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SsovError(f"the node exited with code {proc.returncode}:\n{_log_tail(log_path)}")
                recorder.discover()
                if not player.wait_for_subscribers([LIDAR_TOPIC], 0.1) and OUT_POINTS not in recorder.pending:
                    break
            else:
                raise SsovError(f"the node did not subscribe within {node_timeout_s:.0f} s:\n{_log_tail(log_path)}")
            ready_s = time.monotonic() - t_start
            _wait_matched(recorder.subscriptions[OUT_POINTS], 10.0)
            # Warm-up: one sweep, unmeasured (first-inference costs), so the node's lazily created timing
            # topics exist and can be subscribed before the measured replay.
            _play_and_drain(player, outputs, rate, 1, node_timeout_s)
            if not outputs.clouds:
                raise SsovError(f"the node did not answer the first sweep within {node_timeout_s:.0f} s:\n"
                                f"{_log_tail(log_path)}")
            deadline = time.monotonic() + 15.0  # the timing publishers are new: let discovery catch up
            while time.monotonic() < deadline:
                recorder.add_topics([t for t, _ in node.get_topic_names_and_types() if t.startswith(TIMING_PREFIX)])
                pending = recorder.discover()
                if f"{TIMING_PREFIX}total" in recorder.subscriptions and \
                        not any(t.startswith(TIMING_PREFIX) for t in pending):
                    break
                time.sleep(0.05)
            for sub in recorder.subscriptions.values():
                _wait_matched(sub, 5.0)
            outputs.reset_measurements()
            sweeps = player.info.topics[LIDAR_TOPIC].count
            sweeps = min(sweeps, max_sweeps) if max_sweeps else sweeps
            passes = max(1, -(-min_sweeps // sweeps))  # a one-sweep bag is replayed a few times for percentiles
            print(f"  node ready after {ready_s:.1f} s; replaying {bag.name} at x{rate:g}"
                  f"{f' {passes} times' if passes > 1 else ''}")
            t_play = time.monotonic()
            for _ in range(passes):
                _play_and_drain(player, outputs, rate, sweeps, drain_timeout_s)
            play_s = time.monotonic() - t_play
            # The overlays and timings of a sweep follow its cloud: wait for the last one's total time.
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and len(outputs.timing.get("total", [])) < len(outputs.clouds):
                time.sleep(0.05)
            spinning.clear()
            spinner.join()
    finally:
        spinning.clear()
        if spinner.is_alive():
            spinner.join()
        _stop(proc)
        executor.remove_node(node)
        node.destroy_node()
    pictures = write_pictures(outputs, bag, out, bag.name, ODOM_TOPIC in player.info.topics,
                              calib.get("temporal.sensor_to_base", []))
    summary = {
        "bag": str(bag), "sweeps_published": outputs.sweeps_published, "clouds_labelled": len(outputs.clouds),
        "rate": rate, "node_ready_s": round(ready_s, 1), "replay_s": round(play_s, 2),
        "latency_ms": {**{stage: percentiles(v) for stage, v in sorted(outputs.timing.items())},
                       "end_to_end": percentiles(outputs.end_to_end_ms)},
        "pictures": [str(p) for p in pictures], "output_bag": str(out / "output_bag"),
    }
    return summary


def _play_and_drain(player, outputs: Outputs, rate: float, sweeps: int, timeout_s: float) -> None:
    """Replay up to ``sweeps`` sweeps, then wait until the node has answered the last one (or gone quiet)."""
    stop = threading.Event()
    before_pub, before_out = outputs.sweeps_published, len(outputs.clouds)

    def on_publish(topic: str, t_ns: int, wall: float) -> None:
        outputs.on_publish(topic, t_ns, wall)
        if topic == LIDAR_TOPIC and outputs.sweeps_published - before_pub >= sweeps:
            stop.set()  # the sweep just published is the last one wanted

    player.play(rate, stop, on_publish)
    published = outputs.sweeps_published - before_pub
    last_count, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with outputs.lock:
            count = len(outputs.clouds) - before_out
            done = count >= published or (count > 0 and outputs.clouds[-1][0] == outputs.last_stamp)
        if done:
            return
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        # Sweeps that arrive while the node is busy are dropped (keep-last-1 input) and never answered: once
        # answers came, stop waiting when nothing more came for several frame times.
        elif count and time.monotonic() - quiet_since > max(5.0 + 1.0 / rate,
                                                            3e-3 * max(outputs.end_to_end_ms, default=2000)):
            return
        time.sleep(0.02)


def _wait_matched(subscription, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while subscription.get_publisher_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def latency_table(summaries: dict) -> str:
    rows = [f"{'bag':18s} {'stage':22s} {'n':>4s} {'p50 ms':>8s} {'p95 ms':>8s}"]
    for name, s in summaries.items():
        for stage, p in s["latency_ms"].items():
            if p.get("count"):
                rows.append(f"{name:18s} {stage:22s} {p['count']:4d} {p['p50']:8.1f} {p['p95']:8.1f}")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssov_ros.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="model for the node: an exported package (default: the demo model's) or a .pt checkpoint")
    ap.add_argument("--bags", nargs="+", choices=sorted(SHIPPED), default=list(SHIPPED), help="which shipped bags")
    ap.add_argument("--rate", type=float, default=0.5,
                    help="replay speed (default 0.5: 5 Hz sweeps, which the node keeps up with on 2 CPU cores)")
    ap.add_argument("--frames", type=int, default=0, help="replay at most this many sweeps per bag (0 = all)")
    ap.add_argument("--min-sweeps", type=int, default=5,
                    help="replay a shorter bag several times until this many sweeps went through (latency statistics)")
    args = ap.parse_args(argv)
    # Network safety for this demo and the node it starts: DDS stays on this machine (the node never sets it).
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_local.xml"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t0 = time.monotonic()
    try:
        model = resolve_model_path(str(args.model))  # a missing package names the command that exports it
        for bag in shipped_bags():
            if bag.name in args.bags and not bag.exists():
                print(f"generating {bag} ...")
                SHIPPED[bag.name](bag)
        import rclpy

        rclpy.init()
        summaries = {}
        try:
            for bag in shipped_bags():
                if bag.name in args.bags:
                    print(f"== {bag.name} ==")
                    summaries[bag.name] = run_bag(bag, args.out / bag.name, model, args.rate,
                                                  args.frames, args.min_sweeps)
        finally:
            rclpy.try_shutdown()
    except SsovError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    result = {"seconds": round(time.monotonic() - t0, 1), "bags": summaries}
    write_json_atomic(args.out / "latency.json", result)
    print("\n" + latency_table(summaries))
    print(f"\n{sum(s['clouds_labelled'] for s in summaries.values())} labelled clouds in {result['seconds']} s. "
          f"Pictures:")
    for s in summaries.values():
        print("  " + "\n  ".join(s["pictures"]))
    print(f"Latency summary: {args.out / 'latency.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
