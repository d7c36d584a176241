"""Superpoint generation speed on the real nuScenes sample (6 cameras, 34,688 points).

Teacher outputs are CAT-Seg-like: every pixel of every 1600x900 image belongs to one of ~15 class-region
masks, each with a 768-d feature, stored in the ssov format. One "sample" = read the scan, read six
teacher outputs, project with the occlusion test, vote, and write the compressed superpoints file: the
whole per-sample cost of `ssov-train superpoints`. Goal: 20 samples/s per core.

    .venv/bin/python bench/bench_superpoints.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the goal is per core
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from machine import machine_report  # noqa: E402
sys.path.insert(0, str(REPO))

from ssov_train.data.sample import SampleReader  # noqa: E402
from ssov_train.geometry.projection import ProjectionConfig  # noqa: E402
from ssov_train.superpoints import compute_superpoints, save_superpoints  # noqa: E402
from ssov_train.teachers.format import TeacherImage, TeacherStore  # noqa: E402
from ssov_train.vocab import load_dictionary  # noqa: E402


def class_region_masks(h: int, w: int, n: int, rng) -> np.ndarray:
    """A full-coverage mask map of ``n`` regions (nearest of n random seeds on a coarse grid, upsampled)."""
    seeds = rng.uniform([0, 0], [h, w], size=(n, 2))
    gy, gx = np.mgrid[0:h:8, 0:w:8]
    d = (gy[..., None] - seeds[:, 0]) ** 2 + (gx[..., None] - seeds[:, 1]) ** 2
    coarse = (d.argmin(-1) + 1).astype(np.uint16)
    return np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--masks", type=int, default=15)
    ap.add_argument("--feature-dim", type=int, default=768)
    args = ap.parse_args()
    machine = machine_report(1)  # CPU model, flags, SGEMM: compare runs as ratios

    dictionary = load_dictionary("nuscenes")
    reader = SampleReader(REPO / "data" / "nuscenes_sample", dictionary)
    frame = reader.load(reader.token)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        te = rng.normal(size=(dictionary.num_prompts, args.feature_dim)).astype(np.float32)
        te /= np.linalg.norm(te, axis=1, keepdims=True)
        store = TeacherStore.create(Path(tmp) / "teacher", "bench", dictionary.name, dictionary.num_prompts,
                                    args.feature_dim, te)
        for cam in frame.cameras:
            feats = rng.normal(size=(args.masks, args.feature_dim)).astype(np.float32)
            store.write(cam.token, TeacherImage(
                class_region_masks(cam.height, cam.width, args.masks, rng),
                rng.choice(dictionary.num_prompts, args.masks, replace=False).astype(np.int32),
                rng.uniform(0.3, 1, args.masks).astype(np.float32),
                feats / np.linalg.norm(feats, axis=1, keepdims=True)))

        for occlusion in (False, True):
            cfg = ProjectionConfig(occlusion=occlusion)
            stages = {"read scan": 0.0, "compute (teacher read + project + vote)": 0.0, "write npz": 0.0}
            t_all = time.perf_counter()
            for i in range(args.repeats):
                t0 = time.perf_counter()
                f = reader.load(reader.token)
                t1 = time.perf_counter()
                sp = compute_superpoints(f, store, dictionary, cfg)
                t2 = time.perf_counter()
                save_superpoints(Path(tmp) / f"sp{i % 2}.npz", sp)
                t3 = time.perf_counter()
                for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                    stages[k] += dt
            total = time.perf_counter() - t_all
            size_kb = (Path(tmp) / "sp0.npz").stat().st_size / 1024
            print(f"occlusion={occlusion}: {args.repeats / total:.1f} samples/s on one core "
                  f"({1000 * total / args.repeats:.1f} ms/sample; goal 20 samples/s = 50 ms), "
                  f"{sp.stats['num_pairings']} pairings, {sp.stats['num_superpoints']} superpoints, "
                  f"{size_kb:.0f} KB per file")
            for k, v in stages.items():
                print(f"    {k:42s} {1000 * v / args.repeats:7.1f} ms")


if __name__ == "__main__":
    main()
