"""AFI's stability on the real nuScenes sweep: how many output labels change when a few random points are dropped.

A refinement step should change little where its input changed little. The sweep (34,688 points) is segmented
by the shipped demo model, then again with ``--drop`` random points removed (``--repeats`` draws); printed per
AFI setting: the share of the kept points whose label changed (mean and worst draw), next to the same figure for
the network alone, and for AFI fed the *same* network output on the kept points (AFI's own sensitivity, the
network's changes taken out). Also printed: how often AFI agrees with the network, over all points and beyond
``input_min_range`` (2 m: nearer returns are the ego vehicle's body, whose inputs AFI drops by design, as the
reference does).

``--reference`` also prints how far AFI (exact FPS, no ground step, per-point decoder) is from the dense
transcription of the reference's formulas in tests/test_afi.py on this sweep, and how many labels change when
FPS starts from another point (same input: what a new set of centres alone does on this model's output).

    .venv/bin/python bench/bench_afi_stability.py [--drop 50] [--repeats 5] [--reference]

Label shares, not timings: the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ssov_train.afi as afi_module  # noqa: E402
from ssov_train.afi import AFIConfig, afi_refine  # noqa: E402
from ssov_train.data.sample import load_pcd_bin  # noqa: E402
from ssov_train.inference import Segmenter, open_backend  # noqa: E402

MODEL = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
SAMPLE = REPO / "data" / "nuscenes_sample"

SETTINGS = {  # name: (AFI config, input: "probs" = the network's probabilities, "labels" = its one-hot argmax)
    "grid sampler (default), probabilities": (AFIConfig(), "probs"),
    "grid sampler (default), one-hot labels": (AFIConfig(), "labels"),
    "exact FPS (reference), one-hot labels": (AFIConfig(sampler="fps"), "labels"),
}


def afi_labels(xyz: np.ndarray, probs: np.ndarray, cfg: AFIConfig, feed: str) -> np.ndarray:
    prediction = probs if feed == "probs" else probs.argmax(1)
    return afi_refine(xyz, prediction, cfg, probs.shape[1])[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drop", type=int, default=50, help="random points dropped per draw")
    ap.add_argument("--repeats", type=int, default=5, help="draws (seeds 0..repeats-1)")
    ap.add_argument("--reference", action="store_true",
                    help="also compare with the dense reference transcription and FPS from another start point")
    args = ap.parse_args()

    scan = load_pcd_bin(next(SAMPLE.glob("*LIDAR_TOP*.pcd.bin")))
    xyz, intensity = np.ascontiguousarray(scan[:, :3]), np.ascontiguousarray(scan[:, 3])
    segmenter = Segmenter(open_backend(MODEL), afi=None)
    probs = segmenter.infer(xyz, intensity).probs
    net = probs.argmax(1)
    n = len(xyz)
    beyond = np.hypot(xyz[:, 0], xyz[:, 1]) > AFIConfig().input_min_range
    print(f"real nuScenes sweep, {n} points ({np.mean(~beyond):.1%} within {AFIConfig().input_min_range} m: the "
          f"ego body); model {MODEL.name}; {args.repeats} draws of {args.drop} dropped points "
          f"({args.drop / n:.2%})")

    draws = []
    for seed in range(args.repeats):
        keep = np.sort(np.random.default_rng(seed).choice(n, n - args.drop, replace=False))
        draws.append((keep, segmenter.infer(xyz[keep], intensity[keep]).probs))
    net_changed = [np.mean(p.argmax(1) != net[keep]) for keep, p in draws]
    print(f"{'network alone':42s} labels changed: mean {np.mean(net_changed):6.2%}, worst {np.max(net_changed):6.2%}")

    for name, (cfg, feed) in SETTINGS.items():
        full = afi_labels(xyz, probs, cfg, feed)
        changed, own = [], []
        for keep, p in draws:
            changed.append(np.mean(afi_labels(xyz[keep], p, cfg, feed) != full[keep]))
            own.append(np.mean(afi_labels(xyz[keep], probs[keep], cfg, feed) != full[keep]))
        print(f"AFI, {name:37s} labels changed: mean {np.mean(changed):6.2%}, worst {np.max(changed):6.2%}; "
              f"same network output: mean {np.mean(own):6.2%}, worst {np.max(own):6.2%}; agrees with the "
              f"network on {np.mean(full == net):.1%} of points, {np.mean(full[beyond] == net[beyond]):.1%} "
              f"beyond {cfg.input_min_range} m")
    if args.reference:
        reference(xyz, net, probs.shape[1])
    return 0


def reference(xyz: np.ndarray, net: np.ndarray, c: int) -> None:
    """AFI against the dense transcription of the reference (tests/test_afi.py) and FPS from another start."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_afi import _dense_reference

    cfg = AFIConfig(sampler="fps", ground="none", input_min_range=0.0, decoder_cell=0.0)
    labels, probs = afi_refine(xyz, net, cfg, c)
    ref = _dense_reference(xyz, np.eye(c)[net], cfg)
    ref[:, 0] = 0  # AFI drops class 0 for real-class inputs and renormalises
    ref /= np.maximum(ref.sum(1, keepdims=True), 1e-30)
    print(f"dense reference (exact FPS, no ground step, per-point decoder, one-hot): max |AFI - reference| "
          f"{np.abs(probs - ref).max():.1e}, labels equal on {np.mean(ref.argmax(1) == labels):.2%}")
    fps = afi_module.farthest_point_sample
    afi_module.farthest_point_sample = lambda points, m: fps(points, m, start=len(points) // 2)
    try:
        other = afi_refine(xyz, net, AFIConfig(sampler="fps"), c)[0]
    finally:
        afi_module.farthest_point_sample = fps
    start0 = afi_refine(xyz, net, AFIConfig(sampler="fps"), c)[0]
    print(f"exact FPS from each level's middle point instead of point 0 (same input): labels changed "
          f"{np.mean(other != start0):.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
