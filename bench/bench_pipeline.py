"""Throughput of the inference pipeline without ROS: serial ``Segmenter.segment`` vs ``PipelinedSegmenter`` (AFI
of frame t on a worker thread while the network runs frame t+1), on the real nuScenes sweep with the demo model
(exported ONNX package, onnxruntime, 1 intra-op thread as the node runs it), per-frame AFI and streaming AFI
(temporal history 3, every frame posed).  Serial and pipelined runs are interleaved repeat by repeat so machine
load hits both alike; the figure is the minimum ms/frame over repeats (median shown too).  The pipelined labels
are checked equal to the serial ones on every frame.

    .venv/bin/python bench/bench_pipeline.py [--frames 20] [--repeats 5] [--threads 1] [--package PKG]
                                             [--backend auto|cpu-gemm|...]

Writes runs/bench_pipeline/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from machine import machine_report  # noqa: E402
sys.path.insert(0, str(REPO))

from ssov_train.afi import AFIConfig, TemporalConfig  # noqa: E402
from ssov_train.data.sample import SampleReader  # noqa: E402
from ssov_train.inference import PipelinedSegmenter, Segmenter, open_backend  # noqa: E402
from ssov_train.io import write_json_atomic  # noqa: E402

PACKAGE = REPO / "models" / "ssov_synthetic_minkunet34c_w025.ssovpkg"


def serial(seg: Segmenter, xyz, intensity, poses) -> tuple[float, list]:
    seg.reset()
    t = time.perf_counter()
    labels = [seg.segment(xyz, intensity, pose=pose).labels for pose in poses]
    return (time.perf_counter() - t) * 1000 / len(poses), labels


def pipelined(seg: Segmenter, xyz, intensity, poses) -> tuple[float, list]:
    seg.reset()
    outcomes = []
    t = time.perf_counter()
    with PipelinedSegmenter(seg, outcomes.append, drop_stale=False) as pipe:
        for pose in poses:
            pipe.submit(xyz, intensity, pose=pose)
    ms = (time.perf_counter() - t) * 1000 / len(poses)
    errors = [o.error for o in outcomes if o.error is not None]
    if errors:
        raise errors[0]
    return ms, [o.result.labels for o in outcomes]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20, help="frames per timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (the node's model.threads)")
    p.add_argument("--backend", default="auto", help="the node's model.backend (auto: onnxruntime for a package)")
    p.add_argument("--package", default=str(PACKAGE), help="exported model package (or a .pt for torch)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_pipeline"))
    args = p.parse_args()
    machine = machine_report(args.threads)  # CPU model, flags, SGEMM: compare runs as ratios
    from tqdm import tqdm

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    xyz, intensity = frame.points, frame.intensity
    backend = open_backend(args.package, args.backend, threads=args.threads)
    results = {}
    for name, history in (("afi_per_frame", 0), ("afi_streaming_history_3", 3)):
        seg = Segmenter(backend, afi=AFIConfig(), temporal=TemporalConfig(history=history))
        poses = [np.eye(4)] * args.frames if history else [None] * args.frames
        stages = seg.segment(xyz, intensity).timings_ms  # warm: arenas, AFI tables
        times = {"serial": [], "pipelined": []}
        for _ in tqdm(range(args.repeats), desc=name, unit="repeat"):
            ms_s, labels_s = serial(seg, xyz, intensity, poses)
            ms_p, labels_p = pipelined(seg, xyz, intensity, poses)
            if not all(np.array_equal(a, b) for a, b in zip(labels_s, labels_p)):
                raise SystemExit(f"{name}: pipelined labels differ from serial ones")
            times["serial"].append(ms_s)
            times["pipelined"].append(ms_p)
        best = {k: min(v) for k, v in times.items()}
        results[name] = {"ms_per_frame_min": best, "ms_per_frame_median": {k: statistics.median(v)
                                                                           for k, v in times.items()},
                         "hz_min_time": {k: 1000 / v for k, v in best.items()},
                         "speedup": best["serial"] / best["pipelined"],
                         "stage_ms_one_serial_frame": stages}
        print(f"{name}: serial {best['serial']:.1f} ms/frame ({1000 / best['serial']:.1f} Hz), pipelined "
              f"{best['pipelined']:.1f} ms/frame ({1000 / best['pipelined']:.1f} Hz), x{results[name]['speedup']:.2f};"
              f" medians {statistics.median(times['serial']):.1f} / {statistics.median(times['pipelined']):.1f}")
    results["setup"] = {"model": str(args.package), "backend": backend.describe(), "threads": args.threads,
                        "frames": args.frames, "repeats": args.repeats, "points": int(len(xyz)),
                        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
                        "machine_report": machine}
    write_json_atomic(Path(args.out) / "bench_pipeline.json", results)
    print(f"-> {args.out}/bench_pipeline.json ({results['setup']['machine']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
