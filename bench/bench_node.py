"""The ssov_segmenter node end to end: the real nuScenes sweep (34,688 points, Autoware XYZIRCAEDT layout) is
published at 10 Hz to the node running as its own process, as deployed; reported: end-to-end latency (cloud
stamp -> segmented cloud received), frames answered / sent (the input is keep_last(1): a node slower than the
period answers the newest cloud and skips the rest), the node's CPU use (cores) and its resident memory over
the run (growth = a leak), plus the per-stage times the node publishes on ~/debug/processing_time_ms/*.
``--pipeline both`` (the default) runs the node twice in one go, pipeline.enabled true then false.

    .venv/bin/python bench/bench_node.py [--duration 30 | --five-minutes] [--afi on|off] [--rate 10]
                                          [--pipeline both|on|off] [--threads N] [--backend auto|cpu-gemm|...]
                                          [--fuzz N] [--out runs/bench_node]

Writes <out>/bench_node.json and <out>/bench_node_pipeline_<on|off>.png (latency per frame, RSS over time).
``--fuzz N`` also feeds N mutated clouds (ssov_ros.fuzz) to an in-process node and reports how many were
segmented / dropped.
Sets the network-safety environment (LOCALHOST discovery, big-SHM Fast DDS profile) for itself and the node.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from machine import machine_report  # noqa: E402
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_local.xml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "ros"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(user + system CPU seconds, resident MiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss_kb / 1024.0


def run_live(args, pipeline: str) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64
    from tqdm import tqdm

    from ros_test_utils import encode, real_sample, to_rclpy

    frame = real_sample()
    cmd = [sys.executable, "-m", "ssov_ros.node", "--ros-args", "--params-file", str(REPO / "config" / "ssov_node.yaml"),
           "-p", f"afi.enabled:={'true' if args.afi == 'on' else 'false'}", "-p", f"model.threads:={args.threads}",
           "-p", f"pipeline.enabled:={'true' if pipeline == 'on' else 'false'}", "-p", f"model.backend:={args.backend}"]
    node_proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    driver = rclpy.create_node("ssov_bench_driver")
    ex = SingleThreadedExecutor()
    ex.add_node(driver)
    latencies: list[tuple[float, float]] = []  # (send wall time, latency ms)
    stages: dict[str, list[float]] = {}
    sent: dict[int, float] = {}

    def on_out(msg):
        t_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        if t_ns in sent:
            latencies.append((sent[t_ns], (time.time_ns() - t_ns) / 1e6))

    driver.create_subscription(PointCloud2, "/ssov_segmenter/output/points", on_out, 10)
    diagnostics: list = []
    driver.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.append(
        {kv.key: kv.value for s in m.status for kv in s.values} | {"message": m.status[0].message}), 10)
    for stage in ("read", "voxelize", "kernel_maps", "network", "softmax", "wait", "afi", "publish", "total"):
        driver.create_subscription(Float64, f"/ssov_segmenter/debug/processing_time_ms/{stage}",
                                   lambda m, s=stage: stages.setdefault(s, []).append(m.data), 10)
    pub = driver.create_publisher(PointCloud2, "/ssov_segmenter/input/points", qos_profile_sensor_data)
    template = to_rclpy(encode("xyzircaedt", frame.points, frame.intensity), frame_id="LIDAR_TOP")
    try:
        end = time.monotonic() + 180
        while pub.get_subscription_count() == 0 or driver.count_publishers("/ssov_segmenter/output/points") == 0:
            if node_proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"node did not come up: {node_proc.stderr.read()}")
            ex.spin_once(timeout_sec=0.1)
        cpu0, _ = proc_cpu_rss(node_proc.pid)
        t0 = time.monotonic()
        period = 1.0 / args.rate
        rss: list[tuple[float, float]] = []
        n_frames = int(args.duration * args.rate)
        next_rss = t0
        for i in tqdm(range(n_frames), desc=f"{args.rate:g} Hz x {args.duration:g} s, pipeline {pipeline}",
                      unit="frame"):
            target = t0 + i * period
            while time.monotonic() < target:
                ex.spin_once(timeout_sec=max(0.0, min(0.01, target - time.monotonic())))
            now_ns = time.time_ns()
            template.header.stamp.sec, template.header.stamp.nanosec = divmod(now_ns, 10**9)
            sent[now_ns] = time.monotonic() - t0
            pub.publish(template)
            if time.monotonic() >= next_rss:
                rss.append((time.monotonic() - t0, proc_cpu_rss(node_proc.pid)[1]))
                next_rss += 1.0
        drain = time.monotonic() + 5.0
        while time.monotonic() < drain:
            ex.spin_once(timeout_sec=0.05)
        wall = time.monotonic() - t0
        cpu1, rss_end = proc_cpu_rss(node_proc.pid)
        rss.append((wall, rss_end))
    finally:
        ex.shutdown()
        driver.destroy_node()
        rclpy.shutdown()
        node_proc.send_signal(signal.SIGINT)
        try:
            node_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node_proc.kill()
    lat = np.array([l for _, l in latencies]) if latencies else np.zeros(1)
    rss_arr = np.array([r for _, r in rss])
    after_warmup = rss_arr[min(len(rss_arr) // 10 + 1, len(rss_arr) - 1)]  # first inferences allocate for good
    result = {
        "afi": args.afi, "pipeline": pipeline, "rate_hz": args.rate, "duration_s": args.duration, "sent": n_frames,
        "answered": len(latencies), "latency_ms": {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                                                    "max": float(lat.max())},
        "node_cpu_cores": (cpu1 - cpu0) / wall, "rss_mib": {"start": float(rss_arr[0]), "end": float(rss_arr[-1]),
                                                             "max": float(rss_arr.max()),
                                                             "growth_after_first_10pct": float(rss_arr[-1] - after_warmup)},
        "stage_ms_median": {k: float(np.median(v)) for k, v in stages.items()},
        "node_diagnostics_last": diagnostics[-1] if diagnostics else None,
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
    }
    _plot(latencies, rss, result, Path(args.out) / f"bench_node_pipeline_{pipeline}.png")
    return result


def _plot(latencies, rss, result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    if latencies:
        t, l = zip(*latencies)
        a.plot(t, l, ".", ms=3)
    a.set_xlabel("time since start (s)")
    a.set_ylabel("end-to-end latency (ms)")
    a.set_title(f"answered {result['answered']}/{result['sent']} at {result['rate_hz']:g} Hz, AFI {result['afi']}, "
                f"pipeline {result['pipeline']}",
                fontsize=10)
    a.grid(alpha=0.3)
    t, r = zip(*rss)
    b.plot(t, r, "-o", ms=2)
    b.set_xlabel("time since start (s)")
    b.set_ylabel("node RSS (MiB)")
    b.set_title(f"CPU {result['node_cpu_cores']:.2f} cores; RSS {r[0]:.0f} -> {r[-1]:.0f} MiB", fontsize=10)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_fuzz(n: int) -> dict:
    from ros_test_utils import Harness, encode, real_sample
    from tqdm import tqdm

    from ssov_ros.fuzz import mutate_cloud

    frame = real_sample()
    rng = np.random.default_rng(0)
    seeds = [encode(layout, frame.points[idx], frame.intensity[idx], big_endian=be)
             for layout, be in (("nuscenes", False), ("xyzirc", True), ("xyzircaedt", False), ("pcl_xyzi", True))
             for idx in [rng.choice(len(frame.points), 512, replace=False)]]
    h = Harness({"afi.enabled": False})
    try:
        for i in tqdm(range(n), desc="fuzz", unit="msg"):
            h.node.on_cloud(mutate_cloud(seeds[i % len(seeds)], rng)[0])
        h.node.wait_idle(60)
        s = h.node._stats
        return {"rounds": n, "segmented": s["frames"], "dropped": s["dropped"], "internal_errors": s["internal_errors"]}
    finally:
        h.close()


def main() -> int:
    from ssov_train.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of 10 Hz input (default 30)")
    p.add_argument("--five-minutes", action="store_true", help="the 5-minute RSS run (--duration 300)")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--afi", choices=("on", "off"), default="on")
    p.add_argument("--pipeline", choices=("both", "on", "off"), default="both",
                   help="pipeline.enabled of the node; both = one run each, on first")
    p.add_argument("--threads", type=int, default=1, help="model.threads of the node (0 = library default: all cores)")
    p.add_argument("--backend", default="auto", help="model.backend of the node (auto: onnxruntime for the package)")
    p.add_argument("--fuzz", type=int, default=0, help="also feed N mutated clouds to an in-process node")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_node"))
    args = p.parse_args()
    if args.five_minutes:
        args.duration = 300.0
    machine = machine_report(max(1, args.threads))  # CPU model, flags, SGEMM: compare runs as ratios
    modes = ("on", "off") if args.pipeline == "both" else (args.pipeline,)
    result = {f"live_pipeline_{m}": run_live(args, m) for m in modes}
    if args.fuzz:
        result["fuzz"] = run_fuzz(args.fuzz)
    result["machine_report"] = machine
    write_json_atomic(Path(args.out) / "bench_node.json", result)
    for m in modes:
        live = result[f"live_pipeline_{m}"]
        print(f"pipeline {m}: answered {live['answered']}/{live['sent']} clouds at {args.rate:g} Hz (AFI {args.afi}); "
              f"latency median {live['latency_ms']['median']:.0f} ms, p95 {live['latency_ms']['p95']:.0f} ms; node CPU "
              f"{live['node_cpu_cores']:.2f} cores; RSS {live['rss_mib']['start']:.0f} -> {live['rss_mib']['end']:.0f} "
              f"MiB (max {live['rss_mib']['max']:.0f}); stages (median ms) "
              + ", ".join(f"{k} {v:.1f}" for k, v in live["stage_ms_median"].items()))
    if args.fuzz:
        print(f"fuzz: {result['fuzz']}")
    print(f"-> {args.out}/bench_node.json, bench_node_pipeline_*.png ({live['machine']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
