"""MinkUNet speed on CPU (spconv CPU build + ssov's fixes) on the real nuScenes sample.

One scan = the 34,688-point sweep voxelized on the reference's cylindrical grid (0.1 m, 1 deg, 0.1 m) -> 15,947
voxels, intensity as the single input feature, 17 outputs.  "eval" = model.eval() forward under no_grad;
"train step" = forward + cross-entropy + backward + SGD (momentum 0.9) step.  Rulebooks are rebuilt every call,
as they are for every new scan.  Median and minimum of --repeats after one warm-up (the minimum is the better
estimate when other processes share the cores), torch threads = --threads (default 2, this machine's cores).

    .venv/bin/python bench/bench_models.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from machine import machine_report  # noqa: E402
sys.path.insert(0, str(REPO))

from ssov_train.geometry.voxelize import VoxelConfig, voxelize  # noqa: E402
from ssov_train.models import MinkUNet, MinkUNetConfig, count_parameters  # noqa: E402

CONFIGS = [("MinkUNet34C", 1.0), ("MinkUNet34C", 0.5), ("MinkUNet34C", 0.25), ("MinkUNet18", 0.5)]


def timings(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) seconds over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    machine = machine_report(args.threads)  # CPU model, flags, SGEMM: compare runs as ratios
    torch.set_num_threads(args.threads)

    sweep = np.fromfile(next((REPO / "data" / "nuscenes_sample").glob("*.pcd.bin")), dtype=np.float32)
    sweep = sweep.reshape(-1, 5)
    vox_time, _ = timings(lambda: voxelize(sweep[:, :3], VoxelConfig(), features=sweep[:, 3]), 20)
    v = voxelize(sweep[:, :3], VoxelConfig(), features=sweep[:, 3])
    feats, coords = torch.from_numpy(v.features), torch.from_numpy(v.coords)
    batch = torch.zeros(v.num_voxels, dtype=torch.int32)
    labels = torch.randint(0, 17, (v.num_voxels,), generator=torch.Generator().manual_seed(0))
    print(f"{len(sweep)} points -> {v.num_voxels} voxels (voxelize {vox_time * 1e3:.1f} ms); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {args.repeats} repeats")
    print(f"{'arch':<12} {'width':>5} {'params':>9} {'eval fwd s (med/min)':>21} {'train step s (med/min)':>23}")
    for arch, width in CONFIGS:
        model = MinkUNet(MinkUNetConfig(arch=arch, width=width, out_channels=17))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def forward() -> None:
            with torch.no_grad():
                model(feats, coords, batch, v.spatial_shape, 1)

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(feats, coords, batch, v.spatial_shape, 1), labels)
            loss.backward()
            opt.step()

        model.train()
        t_train = timings(train_step, args.repeats)
        model.eval()
        t_eval = timings(forward, args.repeats)
        print(f"{arch:<12} {width:>5.2f} {count_parameters(model) / 1e6:>8.2f}M "
              f"{t_eval[0]:>14.3f} / {t_eval[1]:.3f} {t_train[0]:>16.3f} / {t_train[1]:.3f}")


if __name__ == "__main__":
    main()
