"""Cubic-voxel grouping of a point cloud and the centre samplers built on it (AFI's pyramid; numba, one thread).

This is not the network's voxelizer (:mod:`.voxelize`: cylindrical or Cartesian grid, sorted voxels, spconv
offsets). AFI only needs points grouped by cubic cells of a size searched per scan, in O(N): voxels are found by
hashing (an open-addressing table that grows with the number of occupied voxels, so it stays in cache) and the
points are then counting-sorted by voxel. Voxels are numbered in order of first appearance; within a voxel,
points keep their input order, so every result is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..jit import inline, jit

_AXIS_BITS = 21  # voxel coordinate bits per axis in a key
_AXIS_VOXELS = 1 << _AXIS_BITS
_MIN_VOXEL = 1e-30  # metres: far below lidar precision; a smaller extent is one location (one voxel, size 1)
_EMPTY = -1
_LADDER = 32  # voxel sizes searched by grid_sample are 2**(j / _LADDER) metres (steps of 2.2%)
_WINDOW = 3  # rungs on each side of the searched size that search_voxel_size compares



@inline
def _hash(key: int, mask: int) -> int:
    h = np.uint64(key)  # splitmix64 finaliser: neighbouring keys land far apart
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.intp((h ^ (h >> np.uint64(31))) & np.uint64(mask))


@inline
def _key(x: float, y: float, z: float, origin: np.ndarray, inv: float) -> int:
    """Voxel key of a point at or above ``origin`` (21 bits per axis; callers keep the extent in range)."""
    return (np.int64((x - origin[0]) * inv) | (np.int64((y - origin[1]) * inv) << _AXIS_BITS)
            | (np.int64((z - origin[2]) * inv) << (2 * _AXIS_BITS)))


@jit
def _estimate_occupied(x, y, z, origin, inv, table_bits):
    """Occupied voxels at one size, estimated by linear counting on a hashed bitmap: O(N), no key table."""
    size = 1 << table_bits
    seen = np.zeros(size, np.bool_)
    empty = size
    for i in range(len(x)):
        s = _hash(_key(x[i], y[i], z[i], origin, inv), size - 1)
        if not seen[s]:
            seen[s] = True
            empty -= 1
    return size * math.log(size / max(empty, 1))


@jit
def _fill(x, y, z, origin, inv, table, voxel_of):
    """Number the voxels of all points in order of first appearance, through the open-addressing table
    ((slots, 2) int64: key, voxel). Returns the voxel count, or -1 once the load would pass 1/2."""
    slots = len(table)
    mask = slots - 1
    count = 0
    last_key, last_voxel = _EMPTY, 0
    for i in range(len(x)):
        key = _key(x[i], y[i], z[i], origin, inv)
        if key != last_key:  # consecutive lidar returns often share a voxel
            s = _hash(key, mask)
            while table[s, 0] != _EMPTY and table[s, 0] != key:
                s = (s + 1) & mask
            if table[s, 0] == _EMPTY:
                if 2 * (count + 1) > slots:
                    return -1
                table[s, 0] = key
                table[s, 1] = count
                count += 1
            last_key, last_voxel = key, table[s, 1]
        voxel_of[i] = last_voxel
    return count


@jit
def _counting_sort(voxel_of, count):
    """The points sorted by voxel (stable) and each voxel's first slot in that order."""
    n = len(voxel_of)
    starts = np.zeros(count + 1, np.int64)
    for i in range(n):
        starts[voxel_of[i] + 1] += 1
    for v in range(count):
        starts[v + 1] += starts[v]
    fill = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[voxel_of[i]]] = i
        fill[voxel_of[i]] += 1
    return order, starts


@jit
def _means(x, y, z, order, starts):
    nv = len(starts) - 1
    out = np.zeros((3, nv))
    for v in range(nv):
        for t in range(starts[v], starts[v + 1]):
            j = order[t]
            out[0, v] += x[j]
            out[1, v] += y[j]
            out[2, v] += z[j]
        c = starts[v + 1] - starts[v]
        out[0, v] /= c
        out[1, v] /= c
        out[2, v] /= c
    return out


@dataclass
class VoxelGroups:
    """Points grouped by cubic voxels of ``size`` metres (voxels numbered in order of first appearance)."""

    size: float
    voxel_of: np.ndarray  # (N,) voxel of each point
    order: np.ndarray  # (N,) point indices sorted by voxel, input order within a voxel
    starts: np.ndarray  # (V + 1,) first slot of each voxel in ``order``
    xyz: tuple[np.ndarray, np.ndarray, np.ndarray]  # the points as contiguous float64 x, y, z

    @property
    def num_voxels(self) -> int:
        return len(self.starts) - 1

    def firsts(self) -> np.ndarray:
        """(V,) each voxel's first point (lowest index)."""
        return self.order[self.starts[:-1]]

    def means(self) -> np.ndarray:
        """(3, V) mean x, y, z of each voxel's points."""
        return _means(*self.xyz, self.order, self.starts)


def _coordinates(points: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, float]:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got {pts.shape}")
    xyz = tuple(np.ascontiguousarray(pts[:, i], dtype=np.float64) for i in range(3))
    if not len(pts):
        return xyz, np.zeros(3), 0.0
    if not all(np.isfinite(c).all() for c in xyz):
        raise ValueError("points must be finite (NaN or Inf coordinates)")
    origin = np.array([c.min() for c in xyz])
    extent = max(float(c.max() - o) for c, o in zip(xyz, origin))
    return xyz, origin, extent


def _anchor(low: np.ndarray, size: float) -> np.ndarray:
    """The grid origin for points whose per-axis minimum is ``low``: the multiple of ``size`` at or below it, so
    that voxels are the cells of one lattice of the sensor frame (k * size .. (k + 1) * size per axis) whatever
    the cloud's extreme points: dropping or adding a few points leaves every other voxel as it was. (Where
    ``low / size`` is beyond float precision the lattice is moot; the minimum keeps keys non-negative.)"""
    return np.minimum(np.floor(low / size) * size, low)


def group_by_voxel(points: np.ndarray, size: float, expected_voxels: Optional[int] = None) -> VoxelGroups:
    """Group (N, 3+) points by cubic voxels of ``size`` metres (raised where needed so that the extent fits
    21 bits per axis): the cells of the lattice of multiples of ``size`` in the points' frame.
    ``expected_voxels`` only sizes the first hash table."""
    return _group(*_coordinates(points), size, expected_voxels)


def _group(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], origin: np.ndarray, extent: float, size: float,
           expected_voxels: Optional[int]) -> VoxelGroups:
    size = max(float(size), extent / (_AXIS_VOXELS - 2), _MIN_VOXEL)
    origin = _anchor(origin, size)
    n = len(xyz[0])
    expected = max(1, min(n, 1024 if expected_voxels is None else int(expected_voxels)))
    slots = 1 << max(4, int(math.ceil(math.log2(2 * expected))))
    voxel_of = np.empty(n, np.int64)
    while True:  # a table too small for the voxels is replaced by one 4x larger (rare: the hint is close)
        table = np.full((slots, 2), _EMPTY, np.int64)
        count = _fill(*xyz, origin, 1.0 / size, table, voxel_of)
        if count >= 0:
            break
        slots *= 4
    order, starts = _counting_sort(voxel_of, count)
    return VoxelGroups(size, voxel_of, order, starts, xyz)


def search_voxel_size(points: np.ndarray, m: int, tolerance: float = 0.03) -> float:
    """A cubic voxel size at which about ``m`` voxels are occupied.

    Regula falsi on log(count) vs log(size), bracketed: ~N voxels at extent / 2N (even for a line), 1 at the
    extent; counts are linear-counting estimates (:func:`_estimate_occupied`). Lands within ``tolerance`` of
    ``m`` or as close as 16 trials get, then snapped to a rung of a fixed ladder of sizes (steps of 2.2%): the
    rung whose count is nearer ``m``, so that a few points more or less do not change the size. One location
    (extent ~0) gives size 1."""
    if m < 1:
        raise ValueError(f"search_voxel_size: m must be >= 1, got {m}")
    return _search_size(*_coordinates(points), m, tolerance)


def _search_size(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], origin: np.ndarray, ext: float, m: int,
                 tolerance: float) -> float:
    n = len(xyz[0])
    if ext <= _MIN_VOXEL:
        return 1.0
    if m >= n:
        return ext / (2.0 * n)
    bits = max(12, int(math.ceil(math.log2(16 * m))))
    lo, c_lo, hi, c_hi = ext / (2.0 * n), float(n), ext * 1.01, 1.0
    size = ext / math.sqrt(m)  # first guess: a surface-like cloud
    best_size, best_err = size, math.inf
    for _ in range(16):
        est = _estimate(xyz, origin, ext, size, bits)
        if abs(est - m) < best_err:
            best_size, best_err = size, abs(est - m)
        if best_err <= max(tolerance * m, 1.0):
            break
        if est > m:
            lo, c_lo = size, est
        else:
            hi, c_hi = size, est
        t = math.log(c_lo / m) / math.log(c_lo / c_hi) if c_lo > c_hi else 0.5
        size = lo * (hi / lo) ** min(max(t, 0.1), 0.9)  # clamped: keeps shrinking the bracket
    # Snapped to the ladder of sizes 2**(j / _LADDER): of the rungs around the size found, the one whose count
    # is nearest m. A continuous size moved with every point added or dropped, and a new size is a new grid
    # (other centres everywhere). The window is wide because the count is not monotonic in the size at the
    # scale of a rung: the search may stop one rung either side of the best one, by a hair of difference.
    j = math.floor(math.log2(best_size) * _LADDER)
    rungs = [2.0 ** (i / _LADDER) for i in range(j - _WINDOW, j + _WINDOW + 2)]
    errors = [abs(_estimate(xyz, origin, ext, r, bits) - m) for r in rungs]
    return rungs[min(range(len(rungs)), key=lambda i: (errors[i], -i))]  # ties: the larger size


def _estimate(xyz: tuple[np.ndarray, np.ndarray, np.ndarray], low: np.ndarray, ext: float, size: float,
              bits: int) -> float:
    size = max(size, ext / (_AXIS_VOXELS - 2))
    return _estimate_occupied(*xyz, _anchor(low, size), 1.0 / size, bits)


@jit
def _nearest_to_mean(x, y, z, order, starts, means):
    """Per voxel, its point nearest to the voxel's mean ((3, V), :func:`_means`); the first such in point order."""
    nv = len(starts) - 1
    out = np.empty(nv, np.int64)
    for v in range(nv):
        mx, my, mz = means[0, v], means[1, v], means[2, v]
        best, best_d = order[starts[v]], np.inf
        for t in range(starts[v], starts[v + 1]):
            j = order[t]
            d = (x[j] - mx) ** 2 + (y[j] - my) ** 2 + (z[j] - mz) ** 2
            if d < best_d:
                best, best_d = j, d
        out[v] = best
    return out


def grid_sample(points: np.ndarray, m: int, tolerance: float = 0.03,
                size_points: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[VoxelGroups]]:
    """About ``m`` well-spread centres (indices into ``points``) and the voxels they were drawn from.

    FPS is used by the reference only to spread centres evenly over the occupied space. A voxel grid does the
    same: at most one centre per voxel, every occupied voxel gets one, so the covering radius is bounded by the
    voxel diagonal and dense regions are not over-sampled. The voxel size is searched for the count
    (:func:`search_voxel_size`); each voxel's centre is its point nearest to the voxel's mean. Deterministic.
    Centre i is the centre of voxel i, so ``groups.voxel_of`` gives every point a nearby centre (AFI's decoder
    seeds its k-NN search with it). The groups are None when ``m`` >= N (every point is a centre).

    ``size_points``: the cloud whose occupied voxels are counted to find the size (default ``points``). AFI's
    deeper levels sample the previous level's centres, a subset of the scan, but count on the whole scan: a
    scan's voxel counts barely move when a few of its points are dropped, while the centres' counts move by a few
    voxels per moved centre, which sometimes tipped the size to the next rung (a new grid, and about 20% of AFI's
    labels changed on the real sweep).
    """
    n = len(points)
    if m < 1:
        raise ValueError(f"grid_sample: m must be >= 1, got {m}")
    if m >= n:
        return np.arange(n), None
    cloud = _coordinates(points)  # converted and checked once, for the size search and the grouping
    sizing = cloud if size_points is None else _coordinates(size_points)
    groups = _group(*cloud, _search_size(*sizing, m, tolerance), m)
    return _nearest_to_mean(*groups.xyz, groups.order, groups.starts, groups.means()), groups


@jit
def _fps(x, y, z, m, start):
    n = len(x)
    idx = np.empty(m, np.int64)
    d = np.full(n, np.inf)
    cur = start
    for i in range(m):
        idx[i] = cur
        far, far_d = 0, -1.0
        cx, cy, cz = x[cur], y[cur], z[cur]
        for j in range(n):
            dj = min(d[j], (x[j] - cx) ** 2 + (y[j] - cy) ** 2 + (z[j] - cz) ** 2)
            d[j] = dj
            if dj > far_d:  # first farthest, as argmax
                far, far_d = j, dj
        cur = far
    return idx


def farthest_point_sample(points: np.ndarray, m: int, start: int = 0) -> np.ndarray:
    """Exact farthest point sampling from point ``start`` (0, as pointnet2_ops); O(N * m)."""
    n = len(points)
    if m >= n:
        return np.arange(n)
    if not 0 <= start < n:
        raise ValueError(f"farthest_point_sample: start must be in 0..{n - 1}, got {start}")
    xyz, _, _ = _coordinates(points)
    return _fps(*xyz, int(m), int(start))
