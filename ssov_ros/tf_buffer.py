"""A small transform buffer (static + time-stamped transforms, lookup by time with interpolation), ROS-free.

tf2_ros has no wheel on PyPI, so the node keeps its own: transforms come from nav_msgs/Odometry, from
tf2_msgs/TFMessage (/tf, /tf_static, when that message package is installed) or from parameters. Messages are
read duck-typed (rclpy and rosbags objects alike). Convention as in tf2: ``lookup(target, source, t)`` is the
4x4 matrix that maps points in ``source`` coordinates to ``target`` coordinates at time ``t``.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from ssov_train.geometry.transforms import invert, make_transform, matrix_to_quat


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def pose_matrix(translation: Any, rotation: Any) -> np.ndarray:
    """4x4 from a geometry_msgs Vector3/Point and Quaternion (x, y, z, w) — message attributes, duck-typed."""
    q = np.array([rotation.w, rotation.x, rotation.y, rotation.z], dtype=np.float64)
    t = np.array([translation.x, translation.y, translation.z], dtype=np.float64)
    if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) < 1e-9:
        raise ValueError("transform has a non-finite value or a zero quaternion")
    return make_transform(q, t)


def matrix_xyz_quat(matrix: np.ndarray) -> list[float]:
    """[x, y, z, qx, qy, qz, qw] of a rigid 4x4: the inverse of :func:`xyz_quat_matrix`."""
    w, x, y, z = matrix_to_quat(matrix[:3, :3])
    return [float(v) for v in (*matrix[:3, 3], x, y, z, w)]


def xyz_quat_matrix(values: Iterable[float]) -> np.ndarray:
    """4x4 from [x, y, z, qx, qy, qz, qw] (the order of a ROS static_transform_publisher / URDF-free param)."""
    v = [float(x) for x in values]
    if len(v) != 7:
        raise ValueError(f"expected 7 numbers [x, y, z, qx, qy, qz, qw], got {len(v)}")
    x, y, z, qx, qy, qz, qw = v
    if np.linalg.norm([qw, qx, qy, qz]) < 1e-9:
        raise ValueError("zero quaternion")
    return make_transform(np.array([qw, qx, qy, qz]), np.array([x, y, z]))


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (w, x, y, z), shortest path."""
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly equal: linear is exact enough and avoids 0/0
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(d)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


def interpolate(m0: np.ndarray, m1: np.ndarray, a: float) -> np.ndarray:
    """Rigid transform a of the way from m0 to m1 (slerp rotation, lerp translation)."""
    q = _slerp(matrix_to_quat(m0[:3, :3]), matrix_to_quat(m1[:3, :3]), a)
    return make_transform(q, (1 - a) * m0[:3, 3] + a * m1[:3, 3])


@dataclass
class _Edge:
    """parent <- child: one static matrix, or time-sorted samples."""

    static: Optional[np.ndarray] = None
    times: list[int] = field(default_factory=list)
    mats: list[np.ndarray] = field(default_factory=list)


class TransformBuffer:
    """Transforms between named frames; each child has one parent (a tree, as in tf2).

    ``cache_ns``: samples older than the newest one by more than this are forgotten.
    ``extrapolation_ns``: a lookup up to this far past the newest (or before the oldest) sample of an edge
    uses that sample instead of failing (clouds are stamped while the odometry of that instant is in flight).
    Thread-safe: the node fills it from the odometry / tf callbacks while the cloud callback looks poses up.
    """

    def __init__(self, cache_ns: int = 10_000_000_000, extrapolation_ns: int = 100_000_000):
        self.cache_ns = int(cache_ns)
        self.extrapolation_ns = int(extrapolation_ns)
        self._edges: dict[str, tuple[str, _Edge]] = {}  # child -> (parent, edge)
        self._lock = threading.RLock()
        self._added = threading.Condition(self._lock)  # notified on every new sample (wait_lookup)

    def clear(self) -> None:
        """Forget the dynamic samples (static transforms stay), e.g. after time jumped backwards."""
        with self._lock:
            for _, edge in self._edges.values():
                edge.times.clear()
                edge.mats.clear()

    def _edge(self, parent: str, child: str) -> _Edge:
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} <- {child!r}")
        old = self._edges.get(child)
        if old is None or old[0] != parent:  # a re-parented frame starts over, as in tf2
            self._edges[child] = (parent, _Edge())
        return self._edges[child][1]

    def set_static(self, parent: str, child: str, matrix: np.ndarray) -> None:
        with self._lock:
            edge = self._edge(parent, child)
            edge.static = np.asarray(matrix, dtype=np.float64)
            edge.times.clear()
            edge.mats.clear()
            self._added.notify_all()

    def add(self, parent: str, child: str, t_ns: int, matrix: np.ndarray) -> None:
        """A time-stamped parent <- child transform; out-of-order samples are inserted in place."""
        with self._lock:
            edge = self._edge(parent, child)
            edge.static = None
            i = bisect.bisect_right(edge.times, t_ns)
            if i > 0 and edge.times[i - 1] == t_ns:
                edge.mats[i - 1] = np.asarray(matrix, dtype=np.float64)
            else:
                edge.times.insert(i, int(t_ns))
                edge.mats.insert(i, np.asarray(matrix, dtype=np.float64))
                cut = bisect.bisect_left(edge.times, edge.times[-1] - self.cache_ns)
                if cut:
                    del edge.times[:cut], edge.mats[:cut]
            self._added.notify_all()

    def _at(self, edge: _Edge, t_ns: int) -> Optional[np.ndarray]:
        if edge.static is not None:
            return edge.static
        times = edge.times
        if not times:
            return None
        if t_ns >= times[-1]:
            return edge.mats[-1] if t_ns - times[-1] <= self.extrapolation_ns else None
        if t_ns <= times[0]:
            return edge.mats[0] if times[0] - t_ns <= self.extrapolation_ns else None
        i = bisect.bisect_right(times, t_ns)
        t0, t1 = times[i - 1], times[i]
        return interpolate(edge.mats[i - 1], edge.mats[i], (t_ns - t0) / (t1 - t0))

    def _to_root(self, frame: str, t_ns: int) -> tuple[list[str], list[Optional[np.ndarray]]]:
        """Frames from ``frame`` up to its root and each frame's root <- frame transform (None: unknown at t)."""
        chain, mats = [frame], [np.eye(4)]
        while chain[-1] in self._edges and len(chain) <= len(self._edges):
            parent, edge = self._edges[chain[-1]]
            m = self._at(edge, t_ns)
            prev = mats[-1]
            mats.append(None if m is None or prev is None else m @ prev)
            chain.append(parent)
        return chain, mats

    def lookup(self, target: str, source: str, t_ns: int) -> Optional[np.ndarray]:
        """target <- source at time t_ns, or None when the frames are not connected or a link has no data then."""
        if target == source:
            return np.eye(4)
        with self._lock:
            s_chain, s_mats = self._to_root(source, t_ns)
            t_chain, t_mats = self._to_root(target, t_ns)
        common = next((f for f in s_chain if f in t_chain), None)
        if common is None:
            return None
        s_m, t_m = s_mats[s_chain.index(common)], t_mats[t_chain.index(common)]
        if s_m is None or t_m is None:
            return None
        return invert(t_m) @ s_m

    def wait_lookup(self, target: str, source: str, t_ns: int, timeout_s: float) -> Optional[np.ndarray]:
        """:meth:`lookup`, waiting up to ``timeout_s`` for the samples that make it possible (as tf2's
        waitForTransform: the pose of a cloud's instant may arrive just after the cloud, from another thread)."""
        deadline = time.monotonic() + timeout_s
        with self._added:
            while True:
                pose = self.lookup(target, source, t_ns)
                remaining = deadline - time.monotonic()
                if pose is not None or remaining <= 0:
                    return pose
                self._added.wait(remaining)

    def can_transform(self, target: str, source: str, t_ns: int) -> bool:
        return self.lookup(target, source, t_ns) is not None

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {parent for parent, _ in self._edges.values()}

    # --- message ingestion (duck-typed) ---

    def add_tf_message(self, msg: Any, static: bool = False) -> int:
        """tf2_msgs/TFMessage: every geometry_msgs/TransformStamped in ``msg.transforms``; returns how many
        were taken (a malformed entry is skipped, not fatal)."""
        taken = 0
        for ts in getattr(msg, "transforms", ()):
            try:
                m = pose_matrix(ts.transform.translation, ts.transform.rotation)
                parent, child = str(ts.header.frame_id).lstrip("/"), str(ts.child_frame_id).lstrip("/")
                if static:
                    self.set_static(parent, child, m)
                else:
                    self.add(parent, child, stamp_ns(ts.header.stamp), m)
                taken += 1
            except (AttributeError, TypeError, ValueError):
                continue
        return taken

    def add_odometry(self, msg: Any, default_child: str = "base_link") -> tuple[str, str]:
        """nav_msgs/Odometry: header.frame_id <- child_frame_id at header.stamp (raises ValueError when bad).
        Returns (parent, child)."""
        parent = str(msg.header.frame_id).lstrip("/") or "odom"
        child = str(msg.child_frame_id).lstrip("/") or default_child
        pose = msg.pose.pose
        self.add(parent, child, stamp_ns(msg.header.stamp), pose_matrix(pose.position, pose.orientation))
        return parent, child


class TimeJumpDetector:
    """Tells when message time went backwards (a bag restarted): the buffer and the streaming history must go."""

    def __init__(self, tolerance_ns: int = 1_000_000_000):
        self.tolerance_ns = tolerance_ns
        self._last: Optional[int] = None

    @property
    def last_ns(self) -> Optional[int]:
        """The latest time seen (None before the first)."""
        return self._last

    def jumped_back(self, t_ns: int) -> bool:
        back = self._last is not None and t_ns < self._last - self.tolerance_ns
        self._last = t_ns
        return back
