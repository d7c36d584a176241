"""Kernel maps (ssov_export/kernel_maps.py, compiled) on the real nuScenes sweep, both flavours, against the
numpy implementation they replaced (kept as the reference in tests/export/test_kernel_maps_compiled.py), in one
run with interleaved repeats.  Goal: <= 5 ms per sweep.  Reported: min and median wall ms, and min CPU ms of
the calling thread (less sensitive to other processes on a shared machine), and the ratio to numpy.

    .venv/bin/python bench/bench_kernel_maps.py [--repeats 15] [--points N]   # N > 34,688: bench/clouds.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from clouds import dense_cloud  # noqa: E402
from machine import machine_report  # noqa: E402

from ssov_export.kernel_maps import FLAVOURS, build_kernel_maps  # noqa: E402
from ssov_train.data.sample import SampleReader  # noqa: E402
from ssov_train.geometry.voxelize import VoxelConfig, voxelize  # noqa: E402


def numpy_reference():
    path = REPO / "tests" / "export" / "test_kernel_maps_compiled.py"
    spec = importlib.util.spec_from_file_location("kernel_maps_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ref_build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--points", type=int, default=0, help="tile the sweep to this many points (bench/clouds.py)")
    args = ap.parse_args()
    machine_report(1)
    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    xyz, intensity = frame.points, frame.intensity
    if args.points:
        xyz, intensity = dense_cloud(xyz, intensity, args.points)
    vox = voxelize(xyz, VoxelConfig(), features=intensity)
    ref_build = numpy_reference()
    t = time.perf_counter()
    build_kernel_maps(vox.coords)
    print(f"{len(xyz):,} points -> {vox.num_voxels:,} voxels; first compiled call {1e3 * (time.perf_counter() - t):.0f} ms "
          f"(numba compiles once per machine, then loads from __pycache__); {args.repeats} interleaved repeats")
    for flavour in FLAVOURS:
        ref_build(vox.coords, flavour=flavour)
        wall = {"compiled": [], "numpy": []}
        cpu = {"compiled": [], "numpy": []}
        for _ in range(args.repeats):
            for name, fn in (("compiled", lambda: build_kernel_maps(vox.coords, flavour=flavour)),
                             ("numpy", lambda: ref_build(vox.coords, flavour=flavour))):
                c, w = time.thread_time(), time.perf_counter()
                fn()
                wall[name].append((time.perf_counter() - w) * 1e3)
                cpu[name].append((time.thread_time() - c) * 1e3)
        print(f"{flavour:>8}: compiled {min(wall['compiled']):6.2f} ms min, {statistics.median(wall['compiled']):6.2f} "
              f"median, {min(cpu['compiled']):6.2f} CPU ms | numpy {min(wall['numpy']):6.2f} min, "
              f"{statistics.median(wall['numpy']):6.2f} median, {min(cpu['numpy']):6.2f} CPU ms | "
              f"{min(cpu['numpy']) / min(cpu['compiled']):.1f}x (CPU), {min(wall['numpy']) / min(wall['compiled']):.1f}x (wall)")


if __name__ == "__main__":
    main()
