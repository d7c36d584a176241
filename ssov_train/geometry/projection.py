"""Lidar -> camera projection: the one implementation used by superpoints, overlays, evaluation and the node.

Conventions: a point is in a camera when its camera-frame depth z > ``min_depth`` and its continuous
pixel coordinates satisfy 0 <= u < W, 0 <= v < H; it falls in pixel (row, col) = (floor(v), floor(u)).
(The reference code uses the stricter 0 < u < W-1 with rounding; on the real sample this keeps 3,056
instead of 3,067 CAM_FRONT points.)

Occlusion: lidar and camera sit at different places, so a point the lidar sees can be hidden from the
camera behind a nearer object, and teacher masks bleed over silhouettes.  With the z-buffer test on, a
point is dropped from a camera when a projected point within ``occlusion_radius_px`` is nearer by more
than ``occlusion_rel_tol * depth + occlusion_abs_tol``; it then does not inherit the foreground mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .transforms import apply


@dataclass
class ProjectionConfig:
    min_depth: float = 1.0  # metres; the reference value (points closer are dropped)
    occlusion: bool = True  # z-buffer test (the reference has none)
    occlusion_radius_px: float = 6.0  # neighbourhood radius at 1600 px image width; scales with width
    occlusion_rel_tol: float = 0.10  # a nearer point hides this one if nearer by > rel * depth + abs
    occlusion_abs_tol: float = 0.5  # metres
    multi_camera: Literal["vote", "last"] = "vote"  # "last" = reference behaviour (later camera wins)

    def check(self) -> None:
        if self.min_depth < 0:
            raise ValueError(f"min_depth must be >= 0, got {self.min_depth}")
        if self.occlusion_radius_px <= 0:
            raise ValueError(f"occlusion_radius_px must be > 0, got {self.occlusion_radius_px}")
        if self.occlusion_rel_tol < 0 or self.occlusion_abs_tol < 0:
            raise ValueError("occlusion tolerances must be >= 0")


@dataclass
class CameraProjection:
    """Points of one scan that land in one camera image."""

    point_index: np.ndarray  # (M,) int64 indices into the scan
    uv: np.ndarray  # (M, 2) float32 continuous pixel coordinates (u = column, v = row)
    depth: np.ndarray  # (M,) float32 camera-frame depth in metres

    @property
    def pixel_rc(self) -> np.ndarray:
        """(M, 2) int64 (row, col) pixel indices."""
        return np.floor(self.uv[:, ::-1]).astype(np.int64)

    def subset(self, keep: np.ndarray) -> "CameraProjection":
        return CameraProjection(self.point_index[keep], self.uv[keep], self.depth[keep])


def project_points(points: np.ndarray, lidar_to_camera: np.ndarray, intrinsics: np.ndarray,
                   width: int, height: int, min_depth: float = 1.0) -> CameraProjection:
    """Project (N, 3) lidar-frame points into one pinhole camera; keep those in front and inside the image."""
    cam = apply(lidar_to_camera, points)
    depth = cam[:, 2]
    in_front = depth > min_depth
    idx = np.flatnonzero(in_front)
    p = cam[idx] @ np.asarray(intrinsics, dtype=np.float64).T
    # Bounds are tested on the stored float32 values: a float64 v of 359.99999 becomes 360.0 in float32 and
    # would index past the last row.
    u = (p[:, 0] / p[:, 2]).astype(np.float32)
    v = (p[:, 1] / p[:, 2]).astype(np.float32)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return CameraProjection(idx[inside], np.stack([u[inside], v[inside]], 1), depth[idx[inside]].astype(np.float32))


def min_filter_3x3(grid: np.ndarray) -> np.ndarray:
    """Minimum over each cell's 3x3 neighbourhood, cells outside the grid counting as +inf (what
    ``scipy.ndimage.minimum_filter(grid, size=3, mode="constant", cval=np.inf)`` gives; numpy, so the node's
    overlays do not need scipy).  Separable: rows, then columns; exact, as a minimum is."""
    padded = np.pad(grid, 1, constant_values=np.inf)
    rows = np.minimum(np.minimum(padded[:-2], padded[1:-1]), padded[2:])
    return np.minimum(np.minimum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def occluded_mask(proj: CameraProjection, width: int, height: int, radius_px: float,
                  rel_tol: float, abs_tol: float) -> np.ndarray:
    """(M,) bool: the point has a clearly nearer neighbour within ~radius_px in the image (z-buffer test).

    Depths are min-pooled into cells of ``radius_px`` and a 3x3-cell minimum filter gives each point the
    nearest depth in its neighbourhood: O(M + cells), no per-point search.
    """
    if len(proj.depth) == 0:
        return np.zeros(0, dtype=bool)
    cell = max(float(radius_px), 1.0)
    rows = (proj.uv[:, 1] / cell).astype(np.int64)
    cols = (proj.uv[:, 0] / cell).astype(np.int64)
    grid_h, grid_w = int(np.ceil(height / cell)) + 1, int(np.ceil(width / cell)) + 1
    zbuf = np.full((grid_h, grid_w), np.inf, dtype=np.float32)
    np.minimum.at(zbuf, (rows, cols), proj.depth)
    nearest = min_filter_3x3(zbuf)[rows, cols]
    return proj.depth > nearest * (1.0 + rel_tol) + abs_tol


def project_to_camera(points: np.ndarray, camera, cfg: ProjectionConfig) -> tuple[CameraProjection, int]:
    """Project into a :class:`CameraView`, applying the occlusion test when configured.

    Returns the projection and how many in-image points the occlusion test removed.
    """
    proj = project_points(points, camera.lidar_to_camera, camera.intrinsics, camera.width, camera.height,
                          cfg.min_depth)
    if not cfg.occlusion:
        return proj, 0
    radius = cfg.occlusion_radius_px * camera.width / 1600.0
    hidden = occluded_mask(proj, camera.width, camera.height, radius, cfg.occlusion_rel_tol, cfg.occlusion_abs_tol)
    return proj.subset(~hidden), int(hidden.sum())


def project_frame(frame, cfg: ProjectionConfig) -> list[CameraProjection]:
    """One :class:`CameraProjection` per camera of the frame, in camera order."""
    return [project_to_camera(frame.points, cam, cfg)[0] for cam in frame.cameras]
