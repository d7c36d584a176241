"""Dense-sensor point clouds from the shipped nuScenes sweep, for the scale bench: the real 32-beam sweep
(34,688 points) tiled and jittered to any size, the way a denser sensor samples the same street.

Copy j of the sweep is tilted by j/k of the HDL-32E's 1.33 deg beam spacing (elevation: new rings between the
real ones, as a 64- or 128-beam head has) and turned by a fraction of its 0.33 deg azimuth step (new columns),
then gets 1 cm of range noise; so k copies look like one scan of a sensor with k times the rings x columns,
not k stacked duplicates.  Fewer points than the sweep: a random subset (a sparser sensor).  Deterministic per
seed.  A real 128-beam sweep of ~200k points gave 93,122 voxels (issue 14); check the printed voxel counts
against that when comparing sensors.
"""

from __future__ import annotations

import numpy as np

BEAM_SPACING_DEG = 41.33 / 31  # HDL-32E: 32 rings over -30.67 .. +10.67 deg
AZIMUTH_STEP_DEG = 360.0 / 1084  # the sweep's columns


MODES = ("interleaved", "composite")


def dense_cloud(xyz: np.ndarray, intensity: np.ndarray, num_points: int, seed: int = 0,
                mode: str = "composite") -> tuple[np.ndarray, np.ndarray]:
    """(xyz (num_points, 3) float32, intensity (num_points,) float32) from one real sweep.

    ``interleaved``: copies fill rings and columns between the real ones (the same street, sampled denser:
    few new voxels, a lower bound on a dense sensor's voxel count).  ``composite``: each copy is also turned
    by a golden-ratio fraction of a full turn, so it lands on other voxels, as the far larger scene a 128-beam
    sensor sees does (200k points -> about 90k voxels, near the real 128-beam sweep's 93,122)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    n = len(xyz)
    if num_points <= n:
        keep = np.sort(rng.choice(n, num_points, replace=False))
        return xyz[keep].astype(np.float32), intensity[keep].astype(np.float32)
    copies = -(-num_points // n)
    r_xy = np.hypot(xyz[:, 0], xyz[:, 1])
    elevation = np.arctan2(xyz[:, 2], r_xy)
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    rng_3d = np.linalg.norm(xyz, axis=1)
    parts, parts_i = [], []
    for j in range(copies):
        tilt = np.deg2rad(BEAM_SPACING_DEG * j / copies)
        turn = np.deg2rad(AZIMUTH_STEP_DEG * ((j * 0.618034) % 1.0))
        if mode == "composite" and j:
            turn += 2 * np.pi * ((j * 0.618034) % 1.0)
        r = rng_3d + rng.normal(0.0, 0.01, n)
        el, az = elevation + tilt, azimuth + turn
        parts.append(np.c_[r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)])
        parts_i.append(intensity)
    out, out_i = np.concatenate(parts)[:num_points], np.concatenate(parts_i)[:num_points]
    return out.astype(np.float32), out_i.astype(np.float32)
