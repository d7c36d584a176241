"""3D boxes (x, y, z centre, dx, dy, dz, yaw about z) in the lidar frame."""

from __future__ import annotations

import numpy as np


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Index of the box containing each point, -1 for none (the first box wins where boxes overlap)."""
    out = np.full(len(points), -1, dtype=np.int64)
    if len(boxes) == 0:
        return out
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    for i in range(len(boxes) - 1, -1, -1):  # reversed so the first box wins overlaps
        x, y, z, dx, dy, dz, yaw = boxes[i]
        c, s = np.cos(yaw), np.sin(yaw)
        rel = pts - (x, y, z)
        local_x = rel[:, 0] * c + rel[:, 1] * s
        local_y = -rel[:, 0] * s + rel[:, 1] * c
        inside = (np.abs(local_x) <= dx / 2) & (np.abs(local_y) <= dy / 2) & (np.abs(rel[:, 2]) <= dz / 2)
        out[inside] = i
    return out


def box_corners(box: np.ndarray) -> np.ndarray:
    """(8, 3) corners of one box."""
    x, y, z, dx, dy, dz, yaw = box
    sx, sy, sz = np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")
    local = np.stack([sx.ravel() * dx, sy.ravel() * dy, sz.ravel() * dz], axis=1)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return local @ rot.T + (x, y, z)
