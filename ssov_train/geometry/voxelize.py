"""The one voxelizer used by training, evaluation, export and the ROS node.

Reference behaviour (UOV / SLidR, method.md §6): cylindrical grid of rho / 0.1 m, atan2(y, x) in 1-degree bins and
z / 0.1 m, floored; the **first point** of each voxel represents it (its features are the voxel's features) and
per-voxel predictions go back to points through the inverse map.  Sharing one implementation keeps the grid,
the representative point and the label rule identical wherever a network sees a scan.

Coordinates are computed in float32 with the reference's operation order (torch on the float32 sweep), so
points on a bin edge fall into the same voxel as there (the nuScenes sample gives the reference's 15,947
voxels; one multiply by 180/pi instead of two steps gives 15,948).  Voxels come out sorted by coordinate.

spconv needs non-negative indices while the reference grid has negative ones (phi, z).  ``Voxels.coords`` are
the absolute grid indices minus ``Voxels.offset``, where the offset is the per-axis minimum rounded *down to a
multiple of* :data:`GRID_ALIGN` (16 = 2^4, the MinkUNet's total stride).  A multiple of 16 keeps every stride-2
level's 2x2x2 cells exactly where they are on the absolute grid, so the network computes the same function as
on MinkowskiEngine's signed coordinates; shifting by the plain minimum would regroup cells depending on where
the scan happens to start.  ``spatial_shape`` is rounded up to a multiple of 16 for the same reason: spconv
drops strided-conv outputs that fall outside floor(shape / 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from ..errors import ConfigError, DataError

GRID_ALIGN = 16
DEFAULT_SIZES = {"cylindrical": (0.1, 1.0, 0.1), "cartesian": (0.1, 0.1, 0.1)}
_MAX_INDEX = 2**30  # |grid index| bound so shifted coords and spatial_shape fit spconv's int32


@dataclass(frozen=True)
class VoxelConfig:
    """Grid definition.  ``size`` is (rho m, phi degrees, z m) for 'cylindrical', (x, y, z) metres for
    'cartesian'; left out, it is the reference's (0.1, 1.0, 0.1) or (0.1, 0.1, 0.1)."""

    mode: Literal["cylindrical", "cartesian"] = "cylindrical"
    size: Optional[tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        if self.mode not in DEFAULT_SIZES:
            raise ConfigError(f"voxel mode must be one of {sorted(DEFAULT_SIZES)}, got {self.mode!r}")
        size = DEFAULT_SIZES[self.mode] if self.size is None else tuple(float(s) for s in self.size)
        if len(size) != 3 or not all(np.isfinite(s) and s > 0 for s in size):
            raise ConfigError(f"voxel size must be three positive numbers, got {self.size!r}")
        object.__setattr__(self, "size", size)


@dataclass
class Voxels:
    """One voxelized scan.  ``coords + offset`` are the absolute grid indices."""

    coords: np.ndarray  # (V, 3) int32, non-negative, in axis order (rho, phi, z) or (x, y, z)
    offset: np.ndarray  # (3,) int64, a multiple of GRID_ALIGN per axis
    spatial_shape: tuple[int, int, int]  # bounds coords, multiple of GRID_ALIGN per axis
    point_to_voxel: np.ndarray  # (N,) int64: voxel of every input point
    voxel_to_point: np.ndarray  # (V,) int64: representative (first) point of every voxel
    features: Optional[np.ndarray] = None  # (V, F) float32: the representative point's features
    labels: Optional[np.ndarray] = None  # (V,) voxel labels, input dtype

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def to_points(self, voxel_values: np.ndarray) -> np.ndarray:
        """Broadcast per-voxel values (V, ...) back to the N input points."""
        if voxel_values.shape[0] != self.num_voxels:
            raise ValueError(f"expected {self.num_voxels} voxel values, got {voxel_values.shape[0]}")
        return voxel_values[self.point_to_voxel]


def _grid_axes(points_xyz: np.ndarray, cfg: VoxelConfig) -> np.ndarray:
    """Absolute (signed) float32 grid coordinates before flooring, axis-major (3, N) for fast per-axis reductions."""
    p = np.ascontiguousarray(points_xyz.T, dtype=np.float32)
    size = np.asarray(cfg.size, dtype=np.float32)[:, None]
    if cfg.mode == "cartesian":
        return p / size
    x, y, z = p
    rho = np.sqrt(x * x + y * y)
    # Two float32 steps (* 180, / pi) as in the reference; one multiply by 180/pi moves edge points across bins.
    phi = np.arctan2(y, x) * np.float32(180.0) / np.float32(np.pi)
    return np.stack([rho, phi, z]) / size


def voxelize(points_xyz: np.ndarray, cfg: VoxelConfig, features: Optional[np.ndarray] = None,
             labels: Optional[np.ndarray] = None, label_rule: Literal["majority", "first"] = "majority",
             ignore_index: int = 0) -> Voxels:
    """Quantise a scan onto ``cfg``'s grid, keeping the first point of every voxel.

    ``label_rule='first'`` takes the representative point's label (the reference).  ``'majority'`` votes over
    the voxel's points whose label is not ``ignore_index`` (ties -> smallest class id); a voxel with only
    ignored points gets ``ignore_index``.
    """
    points_xyz = np.asarray(points_xyz)
    if points_xyz.ndim != 2 or points_xyz.shape[1] != 3:
        raise DataError(f"voxelize: points must be (N, 3), got {points_xyz.shape}")
    n = points_xyz.shape[0]
    if n == 0:
        raise DataError("voxelize: empty point cloud")
    if not np.isfinite(points_xyz).all():
        raise DataError(f"voxelize: {int((~np.isfinite(points_xyz)).any(1).sum())} points have NaN/Inf coordinates")
    if features is not None:
        features = np.asarray(features, dtype=np.float32)
        features = features[:, None] if features.ndim == 1 else features
        if features.ndim != 2 or features.shape[0] != n:
            raise DataError(f"voxelize: features must be (N,) or (N, F) with N={n}, got {features.shape}")
        if not np.isfinite(features).all():
            raise DataError("voxelize: point features contain NaN/Inf")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise DataError(f"voxelize: labels must be integer (N,) with N={n}, got {labels.dtype} {labels.shape}")
    if label_rule not in ("majority", "first"):
        raise ConfigError(f"label_rule must be 'majority' or 'first', got {label_rule!r}")

    grid = np.floor(_grid_axes(points_xyz, cfg))
    lo, hi = grid.min(1), grid.max(1)
    if max(np.abs(lo).max(), np.abs(hi).max()) > _MAX_INDEX:
        raise DataError(f"voxelize: points span grid indices {lo} .. {hi}, beyond int32 at voxel size {cfg.size}")
    offset = np.floor_divide(lo.astype(np.int64), GRID_ALIGN) * GRID_ALIGN
    shape = -(-(hi.astype(np.int64) - offset + 1) // GRID_ALIGN) * GRID_ALIGN
    if float(shape[0]) * float(shape[1]) * float(shape[2]) >= 2.0**62:
        raise DataError(f"voxelize: grid of {shape.tolist()} cells is too large for packed keys")
    shifted = grid.astype(np.int64) - offset[:, None]
    keys = (shifted[0] * shape[1] + shifted[1]) * shape[2] + shifted[2]
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    coords = np.ascontiguousarray(shifted[:, first].T, dtype=np.int32)

    voxel_labels = None
    if labels is not None:
        voxel_labels = labels[first] if label_rule == "first" else _majority(inverse, labels, len(uniq), ignore_index)
    return Voxels(coords=coords, offset=offset, spatial_shape=tuple(int(s) for s in shape),
                  point_to_voxel=inverse.astype(np.int64).reshape(-1), voxel_to_point=first.astype(np.int64),
                  features=None if features is None else features[first], labels=voxel_labels)


def nearest_voxels(vox: Voxels, points_xyz: np.ndarray, max_voxels: int) -> tuple[Voxels, np.ndarray]:
    """The voxel budget: the ``max_voxels`` voxels nearest the sensor (horizontal range of each voxel's
    representative point; ties by voxel order), i.e. a range cut chosen per scan so the network's cost stays
    bounded on dense sensors.  Returns the reduced voxels (coords still sorted; ``point_to_voxel`` and
    ``voxel_to_point`` over the kept points) and the indices of the kept points in ``points_xyz``."""
    if max_voxels < 1:
        raise ConfigError(f"max_voxels must be >= 1, got {max_voxels}")
    if vox.num_voxels <= max_voxels:
        return vox, np.arange(len(vox.point_to_voxel))
    rep = np.asarray(points_xyz, np.float32)[vox.voxel_to_point]
    horizontal = np.hypot(rep[:, 0], rep[:, 1])
    keep = np.sort(np.argsort(horizontal, kind="stable")[:max_voxels])
    new_index = np.full(vox.num_voxels, -1, np.int64)
    new_index[keep] = np.arange(len(keep))
    point_voxel = new_index[vox.point_to_voxel]
    kept_points = np.flatnonzero(point_voxel >= 0)
    point_rank = np.full(len(point_voxel), -1, np.int64)
    point_rank[kept_points] = np.arange(len(kept_points))
    return Voxels(coords=vox.coords[keep], offset=vox.offset, spatial_shape=vox.spatial_shape,
                  point_to_voxel=point_voxel[kept_points], voxel_to_point=point_rank[vox.voxel_to_point[keep]],
                  features=None if vox.features is None else vox.features[keep],
                  labels=None if vox.labels is None else vox.labels[keep]), kept_points


def _majority(point_to_voxel: np.ndarray, labels: np.ndarray, num_voxels: int, ignore_index: int) -> np.ndarray:
    """Most frequent non-ignored label per voxel, ties to the smallest id; all-ignored voxels -> ignore_index."""
    out = np.full(num_voxels, ignore_index, dtype=labels.dtype)
    keep = labels != ignore_index
    if not keep.any():
        return out
    vox, lab = point_to_voxel[keep].astype(np.int64), labels[keep].astype(np.int64)
    lab_min = lab.min()
    span = int(lab.max() - lab_min) + 1
    pairs, counts = np.unique(vox * span + (lab - lab_min), return_counts=True)
    pair_vox, pair_lab = pairs // span, pairs % span + lab_min
    order = np.lexsort((pair_lab, -counts, pair_vox))  # by voxel, then count descending, then label ascending
    pair_vox, pair_lab = pair_vox[order], pair_lab[order]
    winner = np.ones(len(order), dtype=bool)
    winner[1:] = pair_vox[1:] != pair_vox[:-1]
    out[pair_vox[winner]] = pair_lab[winner].astype(labels.dtype)
    return out
