"""Rigid transforms (4x4 homogeneous, row-major: p_dst = M @ [p_src, 1]) and the lidar -> camera chain."""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q_wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (nuScenes' convention)."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    r = np.asarray(r, dtype=np.float64)
    t = np.trace(r)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k]) * 2
        q = np.zeros(4)
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q, dtype=np.float64)
    return q * (1 if q[0] >= 0 else -1) / np.linalg.norm(q)


def make_transform(rotation, translation) -> np.ndarray:
    """4x4 transform from a quaternion (w, x, y, z) or 3x3 matrix and a translation."""
    rot = np.asarray(rotation, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(rot) if rot.shape == (4,) else rot
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points (float64 math, result float64)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def lidar_to_camera_chain(lidar_to_ego: np.ndarray, ego_to_global_at_lidar: np.ndarray,
                          ego_to_global_at_camera: np.ndarray, camera_to_ego: np.ndarray) -> np.ndarray:
    """The full chain lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera as one 4x4.

    Cameras and the lidar fire at different times (up to ~45 ms apart on nuScenes); going through the
    global frame carries the ego motion between them.
    """
    return invert(camera_to_ego) @ invert(ego_to_global_at_camera) @ ego_to_global_at_lidar @ lidar_to_ego
