"""Latency and memory against cloud size: 15k / 35k / 70k / 120k / 200k / 1M points, end to end through the
node's core (Segmenter: voxelize, kernel maps, network, softmax, AFI) with the exported demo package on
onnxruntime CPU (``--backend cpu-gemm``: the fused gather-GEMM-scatter backend), with and without the voxel budget
(Segmenter ``max_voxels``, the node's ``model.max_voxels``).

Clouds are the real nuScenes sweep tiled and jittered (bench/clouds.py; ``composite`` by default: about 90k
voxels at 200k points, near a real 128-beam sweep's 93,122).  Every size runs in a fresh process, so its peak
RSS is its own; the figure is the minimum over ``--repeats`` (median shown), and the process CPU time of the same
call (with one thread: what the scan costs a core, whatever else runs on the machine).  The budget's accuracy cost is the
share of points whose label equals the uncapped run's on the same cloud (points beyond the budget are label 0,
so they count as disagreeing), and the same share among the points the budget keeps, for the network's own
labels (AFI off) and for the AFI-refined labels (AFI re-samples the whole cloud, so any change to the point set
moves many of its labels: dropping 50 random points of the real sweep moves about a quarter).

    .venv/bin/python bench/bench_scale.py [--sizes 15000,34688,...] [--max-voxels 60000] [--repeats 3]
                                          [--threads 2] [--package PKG] [--backend onnxruntime|cpu-gemm]
                                          [--mode composite|interleaved]
                                          [--plot docs/scale.png]

Writes runs/bench_scale/bench_scale.json and the plot (latency and peak RSS vs points, both runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from clouds import MODES, dense_cloud  # noqa: E402
from machine import machine_report  # noqa: E402

DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
SIZES = (15_000, 34_688, 70_000, 120_000, 200_000, 1_000_000)
STAGES = ("voxelize", "kernel_maps", "network", "softmax", "afi")


def child(args) -> None:
    """One size, one setting, in this process: timings, peak RSS, labels (to --labels-out)."""
    from ssov_train.afi import AFIConfig
    from ssov_train.data.sample import SampleReader
    from ssov_train.inference import Segmenter, open_backend

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    xyz, intensity = dense_cloud(frame.points, frame.intensity, args.child, mode=args.mode)
    backend = open_backend(args.package, args.backend, threads=args.threads)
    seg = Segmenter(backend, afi=AFIConfig(), max_voxels=args.max_voxels or None)
    seg.segment(xyz, intensity)  # warm-up (sessions, arenas, compiled kernels)
    totals, cpu, stages = [], [], {s: [] for s in STAGES}
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        res = seg.segment(xyz, intensity)
        totals.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
        for s in STAGES:
            stages[s].append(res.timings_ms.get(s, 0.0))
    network_only = Segmenter(backend, afi=None, max_voxels=args.max_voxels or None).segment(xyz, intensity)
    np.save(args.labels_out, np.stack([res.labels, network_only.labels]).astype(np.uint8))
    print(json.dumps({"points": len(xyz), "voxels": res.num_voxels, "total_ms": min(totals),
                      "total_median_ms": statistics.median(totals), "cpu_ms": min(cpu),
                      "stages_ms": {s: min(v) for s, v in stages.items()},
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(args, size: int, max_voxels: int, labels_out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), "--max-voxels", str(max_voxels), "--package",
           str(args.package), "--backend", args.backend, "--repeats", str(args.repeats), "--threads",
           str(args.threads), "--mode", args.mode,
           "--labels-out", str(labels_out)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"size {size} (max_voxels {max_voxels}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results: list[dict], max_voxels: int, path: Path, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    pts = [r["points"] for r in results]
    for key, label, style in (("full", "no budget", "o-"), ("capped", f"max_voxels {max_voxels:,}", "s--")):
        ax_t.plot(pts, [r[key]["total_ms"] for r in results], style, label=f"end to end, {label}")
        ax_m.plot(pts, [r[key]["peak_rss_mb"] for r in results], style, label=f"peak RSS, {label}")
    ax_t.plot(pts, [r["full"]["stages_ms"]["kernel_maps"] + r["full"]["stages_ms"]["network"] for r in results],
              "^:", label="kernel maps + network, no budget")
    ax_t.axhline(100, color="grey", lw=0.8)
    ax_t.axhline(300, color="grey", lw=0.8, ls="--")
    for ax, ylabel in ((ax_t, "ms per cloud (min of repeats)"), (ax_m, "MB")):
        ax.set_xscale("log")
        ax.set_xlabel("points per cloud (real sweep tiled + jittered)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_yscale("log")
    fig.suptitle(f"Demo model (MinkUNet34C w0.25), {machine['backend']}, {machine['threads']} threads, AFI on - "
                 f"{machine['cpu']}, SGEMM {next(iter(machine['sgemm_gflops'].values())):.0f} GFLOP/s, "
                 f"load {machine['load_average']:.1f}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    ap.add_argument("--max-voxels", type=int, default=60_000, help="the budget to compare (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--package", type=Path, help="model package (default: export the demo model to a temp dir)")
    ap.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "cpu-gemm"))
    ap.add_argument("--mode", choices=MODES, default="composite")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "scale.png")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_scale")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--labels-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    machine = dict(machine_report(args.threads), backend=args.backend)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.package is None:
            from ssov_export.onnx_export import export_package

            args.package = export_package(DEMO, Path(tmp) / "demo.ssovpkg")[0]
        print(f"clouds: real sweep tiled ({args.mode}); package {args.package.name} on {args.backend}; "
              f"{args.repeats} repeats, min (median) ms, CPU ms = process CPU time; peak RSS per fresh process; "
              f"budget max_voxels {args.max_voxels:,}")
        print(f"{'points':>9} {'voxels':>8} {'total ms':>18} {'CPU ms':>7} {'maps':>6} {'net':>7} {'afi':>6} "
              f"{'RSS MB':>7} | "
              f"{'capped vox':>10} {'total ms':>9} {'CPU ms':>7} {'RSS MB':>7} {'kept pts':>8} {'net agree':>9} "
              f"{'AFI agree':>9} {'all pts':>8}")
        print(f"{'':>66}   (agreement with the uncapped run: network labels / AFI labels on kept points; "
              f"AFI labels on all points)")
        for size in sizes:
            full = run_child(args, size, 0, Path(tmp) / "full.npy")
            capped = run_child(args, size, args.max_voxels, Path(tmp) / "capped.npy")
            (a, a_net), (b, b_net) = np.load(Path(tmp) / "full.npy"), np.load(Path(tmp) / "capped.npy")
            kept = b > 0
            row = {"points": full["points"], "full": full, "capped": capped, "kept_points": float(np.mean(kept)),
                   "agree_all": float(np.mean(a == b)), "agree_kept": float(np.mean(a[kept] == b[kept])),
                   "network_agree_kept": float(np.mean(a_net[kept] == b_net[kept]))}
            results.append(row)
            st = full["stages_ms"]
            print(f"{full['points']:>9,} {full['voxels']:>8,} {full['total_ms']:>8.0f} "
                  f"({full['total_median_ms']:>7.0f}) {full['cpu_ms']:>7.0f} {st['kernel_maps']:>6.0f} "
                  f"{st['network']:>7.0f} {st['afi']:>6.0f} {full['peak_rss_mb']:>7.0f} | {capped['voxels']:>10,} "
                  f"{capped['total_ms']:>9.0f} {capped['cpu_ms']:>7.0f} {capped['peak_rss_mb']:>7.0f} "
                  f"{row['kept_points']:>8.1%} {row['network_agree_kept']:>9.2%} {row['agree_kept']:>9.2%} "
                  f"{row['agree_all']:>8.2%}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scale.json").write_text(json.dumps({"machine": machine, "mode": args.mode,
                                                           "backend": args.backend, "max_voxels": args.max_voxels,
                                                           "results": results}, indent=1))
    plot(results, args.max_voxels, args.plot, machine)
    print(f"-> {args.out}/bench_scale.json, {args.plot}")


if __name__ == "__main__":
    main()
