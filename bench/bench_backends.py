"""CPU inference side by side: spconv eager (the torch backend) vs the exported ONNX package (onnxruntime), per
stage, on the real nuScenes sweep with the demo model, in one run.

Stages are the node's: message conversion (PointCloud2 bytes -> columns and labels/colours -> PointCloud2 bytes,
ssov_ros.pointcloud without rclpy), voxelize, kernel maps (ONNX only; spconv builds its rulebooks inside the
network call), network, softmax, AFI.  Both backends run through the same ``Segmenter`` and are interleaved
repeat by repeat, so machine load hits both alike; the minimum over repeats is the figure (the median is shown
too).  It also measures this machine's SGEMM rate with torch (bench/machine.py: the roofline reference) and reports
GFLOP/s of each network over the MACs spconv really does (occupied neighbours only).

    .venv/bin/python bench/bench_backends.py [--repeats 7] [--threads 2] [--package PKG [--checkpoint PT]]
                                             [--old-export DIR]

``--package`` benchmarks that package against the spconv model of the checkpoint it was exported from
(the sidecar's ``source``: name and sha256), so ratios, GFLOP and label agreement compare the same network.

``--old-export DIR`` adds a third column: another version of the ``ssov_export/`` package (a copy of the directory,
e.g. before a change), exporting its own package and running in the same interleaved loop.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--package", type=Path, help="exported package (default: export the demo model to a temp dir); "
                    "spconv runs the checkpoint it was exported from (its sidecar's source)")
    ap.add_argument("--checkpoint", type=Path, help="the package's source checkpoint, if not next to it or in models/")
    ap.add_argument("--old-export", type=Path, help="a copy of another ssov_export/ version to compare in the same run")
    args = ap.parse_args()

    machine = machine_report(args.threads)
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    xyz, intensity = frame.points, frame.intensity
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or export_package(DEMO, Path(tmp) / "demo.ssovpkg")[0]
        checkpoint = package_checkpoint(package, args.checkpoint) if args.package else DEMO
        backends = {"spconv CPU eager": open_backend(checkpoint, "torch", threads=args.threads),
                    "onnxruntime CPU": open_backend(package, "onnxruntime", threads=args.threads)}
        if args.old_export:
            old_export, old_backend = load_old_export(args.old_export.resolve())
            old_package = old_export.export_package(checkpoint, Path(tmp) / "old.ssovpkg",
                                                     sample_dir=REPO / "data" / "nuscenes_sample")[0]
            backends["onnxruntime CPU (old)"] = old_backend.OnnxRuntimeBackend(old_package, threads=args.threads)
        segmenters = {name: Segmenter(b, afi=AFIConfig()) for name, b in backends.items()}
        parse, publish = message_stages(xyz, intensity)
        results = {name: {s: [] for s in (*STAGES, "total")} for name in backends}
        labels = {}
        for name, seg in segmenters.items():  # warm-up
            seg.segment(xyz, intensity)
        for _ in range(args.repeats):
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
        model = backends["spconv CPU eager"].model
        vox = voxelize(xyz, backends["onnxruntime CPU"].spec.voxel, features=intensity)
        macs = useful_macs(model, build_kernel_maps(vox.coords))

    names = list(backends)
    agree = min(float(np.mean(labels[names[0]] == labels[n])) for n in names[1:])
    cfg = backends["spconv CPU eager"].spec.model
    print(f"real nuScenes sweep: {len(xyz)} points -> {vox.num_voxels} voxels; model {checkpoint.name} "
          f"({cfg.get('arch')} width {cfg.get('width')}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters; package {package.name if args.package else '(exported now)'}); {args.threads} threads; "
          f"{args.repeats} interleaved repeats, min (median) ms; AFI on")
    print(f"{'stage':<14}" + "".join(f"{n:>26}" for n in names) + f"{'speed-up':>10}"
          + "".join(f"{'vs old':>10}" for _ in names[2:]))
    for stage in (*STAGES, "total"):
        mins = [min(results[n][stage]) for n in names]
        meds = [statistics.median(results[n][stage]) for n in names]
        ratios = [f"{mins[0] / mins[1]:.1f}x" if mins[1] > 0 and mins[0] > 0 else ""]
        ratios += [f"{m / mins[1]:.2f}x" if mins[1] > 0 and m > 0 else "" for m in mins[2:]]  # old / new
        print(f"{stage:<14}" + "".join(f"{a:>15.1f} ({b:>7.1f})" for a, b in zip(mins, meds))
              + "".join(f"{r:>10}" for r in ratios))
    net = {n: min(results[n]["network"]) + min(results[n]["kernel_maps"]) for n in names}
    print("network incl. kernel maps: " + " vs ".join(f"{net[n]:.1f}" for n in names)
          + f" ms -> {net[names[0]] / net[names[1]]:.1f}x; end to end "
          + " vs ".join(f"{1e3 / min(results[n]['total']):.1f}" for n in names)
          + f" Hz; labels identical on {100 * agree:.3f}% of points")
    print(f"network work: {2 * macs / 1e9:.2f} GFLOP (occupied neighbours only); achieved "
          + ", ".join(f"{n} {2 * macs / 1e6 / min(results[n]['network']):.0f} GFLOP/s" for n in names))
    gemm = machine["sgemm_gflops"]
    square = gemm[next(iter(gemm))]
    print("network rate / SGEMM (2048^3): " + ", ".join(
        f"{n} {2 * macs / 1e6 / min(results[n]['network']) / square:.0%}" for n in names))


if __name__ == "__main__":
    main()
