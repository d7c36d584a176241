"""CPU inference side by side: spconv eager (the torch backend) vs the exported package on onnxruntime and on the
cpu-gemm backend (ssov_export/gemm_backend.py), per stage, on the real nuScenes sweep with the demo model, in one
run.

Stages are the node's: message conversion (PointCloud2 bytes -> columns and labels/colours -> PointCloud2 bytes,
ssov_ros.pointcloud without rclpy), voxelize, kernel maps (ONNX only; spconv builds its rulebooks inside the
network call), network, softmax, AFI.  Both backends run through the same ``Segmenter`` and are interleaved
repeat by repeat, so machine load hits both alike; the minimum over repeats is the figure (the median is shown
too).  It also measures this machine's SGEMM rate with torch (bench/machine.py: the roofline reference) and reports
GFLOP/s of each network over the MACs spconv really does (occupied neighbours only), against the SGEMM at start
and against a torch SGEMM of the network's FLOPs run inside every repeat (same load; median of the ratios).

``--full-width`` adds MinkUNet34C at width 1 (network only): spconv eager vs cpu-gemm, interleaved.

    .venv/bin/python bench/bench_backends.py [--repeats 7] [--threads 2] [--package PKG [--checkpoint PT]]
                                             [--old-export DIR] [--full-width]

``--package`` benchmarks that package against the spconv model of the checkpoint it was exported from
(the sidecar's ``source``: name and sha256), so ratios, GFLOP and label agreement compare the same network.

``--old-export DIR`` adds a third column: another version of the ``ssov_export/`` package (a copy of the directory,
e.g. before a change), exporting its own package and running in the same interleaved loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ssov_export.kernel_maps import build_kernel_maps  # noqa: E402
from ssov_export.onnx_export import export_package  # noqa: E402
from ssov_export.package import load_package, sha256_of  # noqa: E402
from machine import machine_report  # noqa: E402
from ssov_train.afi import AFIConfig  # noqa: E402
from ssov_train.data.sample import SampleReader  # noqa: E402
from ssov_train.geometry.voxelize import voxelize  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402

DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
STAGES = ("message_in", "voxelize", "kernel_maps", "network", "softmax", "afi", "message_out")


def package_checkpoint(package: Path, given: Path | None) -> Path:
    """The checkpoint ``package`` was exported from (its sidecar's ``source``): ``given`` if it matches the
    recorded sha256, else a file of the recorded name in the package's folder or models/.  A benchmark against
    any other model's spconv would compare different networks."""
    sidecar = load_package(package, verify=False).sidecar
    source = sidecar.get("source") or {}
    name, sha = source.get("checkpoint"), source.get("checkpoint_sha256")
    if not name or not sha:
        raise SystemExit(f"{package}: the sidecar records no source checkpoint; pass --checkpoint")
    candidates = [given] if given else [package.parent / name, package / name, REPO / "models" / name]
    for path in candidates:
        if path and path.is_file():
            if sha256_of(path) == sha:
                return path
            if given:
                raise SystemExit(f"--checkpoint {given}: sha256 differs from the checkpoint {name} that "
                                 f"{package} was exported from")
    raise SystemExit(f"{package} was exported from {name} (sha256 {sha[:12]}...), not found next to the package "
                     f"or in models/; pass --checkpoint PATH")


def useful_macs(model, maps) -> int:
    """Multiply-accumulates of the MinkUNet on occupied sites / neighbours only (what spconv computes)."""
    sizes = maps.level_sizes
    pairs = [rb.num_pairs + sizes[lv] for lv, rb in enumerate(maps.subm)]  # neighbours + centre

    def conv_macs(conv, level_pairs: int) -> int:
        w = conv.weight
        return int(w.shape[0] * w.shape[-1] * level_pairs)

    macs = conv_macs(model.stem_conv, pairs[0])
    for i in range(4):
        macs += conv_macs(model.down[i].conv, sizes[i])  # one pair per fine site
        macs += conv_macs(model.up[i].conv, sizes[3 - i])
        for level, stage in ((i + 1, model.encoder[i]), (3 - i, model.decoder[i])):
            for blk in stage:
                macs += conv_macs(blk.conv1, pairs[level]) + conv_macs(blk.conv2, pairs[level])
                if blk.downsample is not None:
                    macs += conv_macs(blk.downsample[0], sizes[level])
    return macs + sizes[0] * model.final.in_features * model.final.out_features


def message_stages(xyz: np.ndarray, intensity: np.ndarray):
    """(parse PointCloud2 bytes, build the labelled output cloud) as the node does, without rclpy."""
    from types import SimpleNamespace

    from ssov_ros.pointcloud import pack_cloud, read_cloud, rgb_packed

    fields, step, data = pack_cloud({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": intensity,
                                     "ring": np.zeros(len(xyz), np.uint16)})
    msg = SimpleNamespace(height=1, width=len(xyz), point_step=step, row_step=step * len(xyz), is_bigendian=False,
                          data=data, fields=[SimpleNamespace(name=n, offset=o, datatype=d, count=c)
                                             for n, o, d, c in fields])

    def parse():
        return read_cloud(msg)

    def publish(labels, scores, palette):
        return pack_cloud({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "label": labels.astype(np.uint8),
                           "score": scores, "rgb": rgb_packed(palette[labels])})

    return parse, publish


def load_old_export(directory: Path):
    """Another copy of the ``export`` package, importable next to the current one as ``export_old``."""
    spec = importlib.util.spec_from_file_location("export_old", directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_old"] = module
    spec.loader.exec_module(module)
    return (importlib.import_module("export_old.onnx_export"), importlib.import_module("export_old.onnx_backend"))


def sgemm_equivalent(flops: float, threads: int):
    """A timer of one dense torch SGEMM doing ``flops`` (2048 x 2048 @ 2048 x n): run between the networks of every
    repeat, it meets the same machine load, so network rate / SGEMM rate per repeat is a fair ratio.  Returns its
    GFLOP/s over wall time and (``cpu=True``) over this thread's CPU time (one thread only: the time the core
    really spent, whatever else ran on it)."""
    import torch

    n = max(16, int(round(flops / (2 * 2048 * 2048))))
    a, b = torch.randn(2048, 2048), torch.randn(2048, n)
    torch.matmul(a, b)

    def run(cpu: bool = False) -> float:
        clock = time.thread_time if cpu else time.perf_counter
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            t = clock()
            torch.matmul(a, b)
            return 2 * 2048 * 2048 * n / (clock() - t) / 1e9
        finally:
            torch.set_num_threads(before)

    return run


def network_cpu_times(runs: dict, sgemm, repeats: int) -> tuple[dict, list]:
    """Thread CPU seconds of each callable in ``runs`` (one thread: what the core spent on it, robust to other
    jobs on the machine), interleaved repeat by repeat with the same-FLOP SGEMM's CPU-time rate."""
    times: dict = {name: [] for name in runs}
    rates = []
    for _ in range(repeats):
        rates.append(sgemm(cpu=True))
        for name, fn in runs.items():
            t = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t)
    return times, rates


def full_width(args) -> None:
    """MinkUNet34C at full width (37.8M parameters, random weights, BatchNorm statistics randomised so folding is
    exercised): spconv eager vs cpu-gemm vs an SGEMM of the same FLOPs, network only, interleaved."""
    import torch

    from ssov_export.gemm_backend import GemmNetwork, fold_weights
    from ssov_export.kernel_maps import build_pair_maps
    from ssov_export.onnx_export import compare
    from ssov_train.geometry.voxelize import VoxelConfig
    from ssov_train.models import MinkUNet, MinkUNetConfig

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    vox = voxelize(frame.points, VoxelConfig(), features=frame.intensity)
    torch.manual_seed(0)
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet34C", width=1.0, out_channels=17)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.1, 0.1)
    torch.set_num_threads(args.threads)
    network = GemmNetwork(fold_weights(model))
    feats, coords = torch.from_numpy(vox.features), torch.from_numpy(vox.coords)
    batch = torch.zeros(vox.num_voxels, dtype=torch.int32)

    def spconv_run() -> np.ndarray:
        with torch.inference_mode():
            return model(feats, coords, batch, list(vox.spatial_shape), 1).numpy()

    def gemm_run() -> np.ndarray:
        return network(vox.features, build_pair_maps(vox.coords))

    parity = compare(spconv_run(), gemm_run())
    maps = build_kernel_maps(vox.coords)
    flops = 2 * useful_macs(model, maps)
    sgemm = sgemm_equivalent(flops, args.threads)
    spconv_s, gemm_s, ratios, rates = [], [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        spconv_run()
        spconv_s.append(time.perf_counter() - t)
        rate = sgemm()
        t = time.perf_counter()
        gemm_run()
        gemm_s.append(time.perf_counter() - t)
        ratios.append(spconv_s[-1] / gemm_s[-1])
        rates.append(flops / gemm_s[-1] / 1e9 / rate)
    print(f"MinkUNet34C width 1 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random "
          f"weights), {vox.num_voxels} voxels, {flops / 1e9:.1f} GFLOP (occupied neighbours only), {args.threads} "
          f"threads, {args.repeats} interleaved repeats; load average now {os.getloadavg()[0]:.1f}; parity: {parity}")
    print(f"  wall, median (min) ms: spconv eager {1e3 * statistics.median(spconv_s):.0f} ({1e3 * min(spconv_s):.0f}), "
          f"cpu-gemm incl. kernel maps {1e3 * statistics.median(gemm_s):.0f} ({1e3 * min(gemm_s):.0f}) -> cpu-gemm "
          f"{statistics.median(ratios):.2f}x faster (median of per-repeat ratios; ratio of minima "
          f"{min(spconv_s) / min(gemm_s):.2f}x); cpu-gemm at {statistics.median(rates):.0%} of the same-FLOP SGEMM")
    if args.threads == 1:
        cpu, cpu_rates = network_cpu_times({"spconv": spconv_run, "cpu-gemm": gemm_run}, sgemm, args.repeats)
        print(f"  CPU time, median (min) ms: spconv eager {1e3 * statistics.median(cpu['spconv']):.0f} "
              f"({1e3 * min(cpu['spconv']):.0f}), cpu-gemm {1e3 * statistics.median(cpu['cpu-gemm']):.0f} "
              f"({1e3 * min(cpu['cpu-gemm']):.0f}) -> cpu-gemm "
              f"{statistics.median(a / b for a, b in zip(cpu['spconv'], cpu['cpu-gemm'])):.2f}x faster; rates / "
              f"same-FLOP SGEMM ({statistics.median(cpu_rates):.0f} GFLOP/s): " + ", ".join(
                  f"{n} {statistics.median(flops / t / 1e9 / r for t, r in zip(cpu[n], cpu_rates)):.0%}"
                  for n in cpu))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--package", type=Path, help="exported package (default: export the demo model to a temp dir); "
                    "spconv runs the checkpoint it was exported from (its sidecar's source)")
    ap.add_argument("--checkpoint", type=Path, help="the package's source checkpoint, if not next to it or in models/")
    ap.add_argument("--old-export", type=Path, help="a copy of another ssov_export/ version to compare in the same run")
    ap.add_argument("--full-width", action="store_true", help="also time MinkUNet34C at full width: spconv eager vs "
                    "cpu-gemm (network only)")
    args = ap.parse_args()

    machine = machine_report(args.threads)
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    xyz, intensity = frame.points, frame.intensity
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or export_package(DEMO, Path(tmp) / "demo.ssovpkg")[0]
        checkpoint = package_checkpoint(package, args.checkpoint) if args.package else DEMO
        backends = {"spconv CPU eager": open_backend(checkpoint, "torch", threads=args.threads),
                    "onnxruntime CPU": open_backend(package, "onnxruntime", threads=args.threads),
                    "cpu-gemm": open_backend(package, "cpu-gemm", threads=args.threads)}
        if args.old_export:
            old_export, old_backend = load_old_export(args.old_export.resolve())
            old_package = old_export.export_package(checkpoint, Path(tmp) / "old.ssovpkg",
                                                     sample_dir=REPO / "data" / "nuscenes_sample")[0]
            backends["onnxruntime CPU (old)"] = old_backend.OnnxRuntimeBackend(old_package, threads=args.threads)
        segmenters = {name: Segmenter(b, afi=AFIConfig()) for name, b in backends.items()}
        parse, publish = message_stages(xyz, intensity)
        results = {name: {s: [] for s in (*STAGES, "total")} for name in backends}
        labels = {}
        model = backends["spconv CPU eager"].model
        vox = voxelize(xyz, backends["onnxruntime CPU"].spec.voxel, features=intensity)
        macs = useful_macs(model, build_kernel_maps(vox.coords))
        sgemm = sgemm_equivalent(2 * macs, args.threads)
        sgemm_rates = []
        for name, seg in segmenters.items():  # warm-up
            seg.segment(xyz, intensity)
        for _ in range(args.repeats):
            sgemm_rates.append(sgemm())
            for name, seg in segmenters.items():
                t0 = time.perf_counter()
                cloud = parse()
                t1 = time.perf_counter()
                res = seg.segment(cloud.xyz, cloud.intensity)
                t2 = time.perf_counter()
                publish(res.labels, res.scores, seg.spec.palette)
                t3 = time.perf_counter()
                timings = dict(res.timings_ms, message_in=(t1 - t0) * 1e3, message_out=(t3 - t2) * 1e3)
                for stage in STAGES:
                    results[name][stage].append(timings.get(stage, 0.0))
                results[name]["total"].append((t3 - t0) * 1e3)
                labels[name] = res.labels

    names = list(backends)
    cfg = backends["spconv CPU eager"].spec.model
    print(f"real nuScenes sweep: {len(xyz)} points -> {vox.num_voxels} voxels; model {checkpoint.name} "
          f"({cfg.get('arch')} width {cfg.get('width')}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters; package {package.name if args.package else '(exported now)'}); {args.threads} threads; "
          f"{args.repeats} interleaved repeats, min (median) ms; AFI on; load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'stage':<14}" + "".join(f"{n:>26}" for n in names) + "".join(f"{'vs spconv':>11}" for _ in names[1:]))
    for stage in (*STAGES, "total"):
        mins = [min(results[n][stage]) for n in names]
        meds = [statistics.median(results[n][stage]) for n in names]
        ratios = [f"{mins[0] / m:.1f}x" if m > 0 and mins[0] > 0 else "" for m in mins[1:]]
        print(f"{stage:<14}" + "".join(f"{a:>15.1f} ({b:>7.1f})" for a, b in zip(mins, meds))
              + "".join(f"{r:>11}" for r in ratios))
    net = {n: min(results[n]["network"]) + min(results[n]["kernel_maps"]) for n in names}
    print("network incl. kernel maps, min ms: " + ", ".join(f"{n} {net[n]:.1f}" for n in names) + "; end to end "
          + ", ".join(f"{n} {1e3 / min(results[n]['total']):.1f} Hz" for n in names))
    print("labels identical to spconv's: " + ", ".join(
        f"{n} {100 * float(np.mean(labels[names[0]] == labels[n])):.3f}%" for n in names[1:]) + " of points")
    print(f"network work: {2 * macs / 1e9:.2f} GFLOP (occupied neighbours only); achieved (min) "
          + ", ".join(f"{n} {2 * macs / 1e6 / min(results[n]['network']):.0f} GFLOP/s" for n in names))
    gemm = machine["sgemm_gflops"]
    square = gemm[next(iter(gemm))]
    print(f"network rate / SGEMM 2048^3 at start ({square:.0f} GFLOP/s): " + ", ".join(
        f"{n} {2 * macs / 1e6 / min(results[n]['network']) / square:.0%}" for n in names))
    print(f"network rate / same-FLOP SGEMM run in each repeat (median of per-repeat ratios; SGEMM median "
          f"{statistics.median(sgemm_rates):.0f} GFLOP/s): " + ", ".join(
              f"{n} {statistics.median(2 * macs / 1e6 / t / r for t, r in zip(results[n]['network'], sgemm_rates)):.0%}"
              for n in names))
    if args.threads == 1:  # the network alone, CPU time (robust to other jobs on a shared machine)
        runs = {n: (lambda b=b: b.run(vox.features, vox.coords, vox.spatial_shape)) for n, b in backends.items()
                if n != "onnxruntime CPU (old)"}
        cpu, cpu_rates = network_cpu_times(runs, sgemm, args.repeats)
        print(f"network (incl. kernel maps) CPU time, median (min) ms: " + ", ".join(
            f"{n} {1e3 * statistics.median(cpu[n]):.1f} ({1e3 * min(cpu[n]):.1f})" for n in cpu)
              + f"; rate / same-FLOP SGEMM CPU-time rate ({statistics.median(cpu_rates):.0f} GFLOP/s), median: "
              + ", ".join(f"{n} {statistics.median(2 * macs / 1e9 / t / r for t, r in zip(cpu[n], cpu_rates)):.0%}"
                          for n in cpu))
    if args.full_width:
        full_width(args)


if __name__ == "__main__":
    main()
