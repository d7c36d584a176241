"""Approximate time matching of camera messages to a cloud, ROS-free (message_filters has no wheel).

Policy: each stream keeps its last ``depth`` messages; a cloud at time t takes, per stream, the message whose
stamp is nearest to t, provided |stamp - t| <= ``tolerance_ns``. Unlike message_filters' ApproximateTime it
never waits for a late image: the cloud is processed at once and a camera without a match is skipped for that
frame (the node must not add latency to the segmentation for an optional overlay).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")


class StampedQueue(Generic[T]):
    """Last ``depth`` (stamp_ns, item) pairs of one stream, sorted by stamp."""

    def __init__(self, depth: int = 10):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self._stamps: list[int] = []
        self._items: list[T] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self, after_ns: Optional[int] = None) -> None:
        """Forget every item, or with ``after_ns`` those stamped later than it."""
        keep = 0 if after_ns is None else bisect.bisect_right(self._stamps, after_ns)
        del self._stamps[keep:], self._items[keep:]

    def push(self, t_ns: int, item: T) -> None:
        i = bisect.bisect_right(self._stamps, t_ns)
        self._stamps.insert(i, int(t_ns))
        self._items.insert(i, item)
        if len(self._stamps) > self.depth:  # forget the oldest
            del self._stamps[0], self._items[0]

    def nearest(self, t_ns: int, tolerance_ns: int) -> Optional[tuple[int, T]]:
        """(stamp, item) nearest to t_ns within tolerance, or None."""
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, t_ns)
        best = min((j for j in (i - 1, i) if 0 <= j < len(self._stamps)), key=lambda j: abs(self._stamps[j] - t_ns))
        if abs(self._stamps[best] - t_ns) > tolerance_ns:
            return None
        return self._stamps[best], self._items[best]

    def latest(self) -> Optional[tuple[int, T]]:
        return (self._stamps[-1], self._items[-1]) if self._stamps else None


class ApproximateSync:
    """Named streams (e.g. ``CAM_FRONT/image``) matched to a reference time.  Thread-safe: images are pushed
    from one callback thread while the cloud callback matches."""

    def __init__(self, tolerance_ns: int, depth: int = 10):
        self.tolerance_ns = int(tolerance_ns)
        self.depth = depth
        self._streams: dict[str, StampedQueue[Any]] = {}
        self._lock = threading.Lock()

    def push(self, stream: str, t_ns: int, item: Any) -> None:
        with self._lock:
            self._streams.setdefault(stream, StampedQueue(self.depth)).push(t_ns, item)

    def match(self, t_ns: int, streams: list[str]) -> Optional[dict[str, Any]]:
        """Items of all ``streams`` nearest to t_ns, or None when one of them has no message within tolerance."""
        out = {}
        with self._lock:
            for name in streams:
                q = self._streams.get(name)
                hit = q.nearest(t_ns, self.tolerance_ns) if q is not None else None
                if hit is None:
                    return None
                out[name] = hit[1]
        return out

    def clear(self, after_ns: Optional[int] = None) -> None:
        """Forget every item, or with ``after_ns`` those stamped later than it."""
        with self._lock:
            for q in self._streams.values():
                q.clear(after_ns)
