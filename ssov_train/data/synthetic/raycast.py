"""Vectorised ray casting of analytic primitives over a sensor's ray grid, with a proper depth test.

A sensor is a grid of unit rays from one origin (the pixels of a pinhole camera, the firings of a spinning
lidar).  Each body is tested only against the rays inside its bounding box's footprint on that grid (a pixel
rectangle, or an azimuth range), so a whole street of boxes, cylinders and ellipsoids stays cheap in numpy.
Everything here is in the sensor frame: callers pose bodies relative to the sensor first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Optional

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
_EPS = 1e-6
_NEAR = 0.05  # metres: closest pinhole depth the footprint clipping keeps
_UNIT_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_BOX_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                       if np.abs(_UNIT_CORNERS[i] - _UNIT_CORNERS[j]).sum() == 2])


@dataclass
class Part:
    """One primitive, centred at ``offset`` in its body's frame.

    ``half``: box half extents | cylinder (radius, radius, half length along its z) | ellipsoid radii.
    ``rotation`` maps part axes to body axes (None = aligned), e.g. a wheel is a cylinder turned onto y.
    """

    shape: int
    half: np.ndarray
    offset: np.ndarray
    material: int
    color: np.ndarray  # RGB in 0..1
    rotation: Optional[np.ndarray] = None

    @cached_property
    def corners(self) -> np.ndarray:
        """(8, 3) corners of a box around the part, in the body frame."""
        c = _UNIT_CORNERS * self.half
        return (c if self.rotation is None else c @ self.rotation.T) + self.offset


@dataclass
class Body:
    """A labelled rigid set of parts; its frame's origin is the centre of its annotation box."""

    parts: list[Part]
    raw_class: int
    instance: int = 0  # 0 for stuff

    @cached_property
    def corners(self) -> np.ndarray:
        """(8, 3) corners of the axis-aligned box around all parts (the culling box)."""
        pts = np.concatenate([p.corners for p in self.parts])
        lo, hi = pts.min(0), pts.max(0)
        return (lo + hi) / 2 + _UNIT_CORNERS * (hi - lo) / 2

    @cached_property
    def radius(self) -> float:
        return float(np.linalg.norm(self.corners, axis=1).max())


def intersect(shape: int, half: np.ndarray, origin: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance along each ray (origin (3,), directions d (3, N)) to the primitive's surface; inf = miss.

    A ray starting inside a primitive misses it (sensors never sit inside geometry).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape == BOX:
            t_near, t_far = np.full(d.shape[1], -np.inf), np.full(d.shape[1], np.inf)
            for axis in range(3):
                inv = 1.0 / d[axis]
                a, b = (-half[axis] - origin[axis]) * inv, (half[axis] - origin[axis]) * inv
                np.maximum(t_near, np.minimum(a, b), out=t_near)
                np.minimum(t_far, np.maximum(a, b), out=t_far)
            return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)
        if shape == CYLINDER:
            r, h = half[0], half[2]
            t = np.full(d.shape[1], np.inf)
            c = origin[0] ** 2 + origin[1] ** 2 - r * r
            if c > 0:  # side wall, seen from outside
                a = d[0] * d[0] + d[1] * d[1]
                b = origin[0] * d[0] + origin[1] * d[1]
                disc = b * b - a * c
                ts = (-b - np.sqrt(disc)) / a
                ok = (disc >= 0) & (ts > _EPS) & (np.abs(origin[2] + ts * d[2]) <= h)
                t[ok] = ts[ok]
            if abs(origin[2]) > h:  # the cap facing the origin
                tc = (np.sign(origin[2]) * h - origin[2]) / d[2]
                px, py = origin[0] + tc * d[0], origin[1] + tc * d[1]
                ok = (tc > _EPS) & (px * px + py * py <= r * r) & (tc < t)
                t[ok] = tc[ok]
            return t
        # ellipsoid: a unit sphere once the axes are scaled
        o, ds = origin / half, d / half[:, None]
        c = o @ o - 1.0
        if c <= 0:
            return np.full(d.shape[1], np.inf)
        a = ds[0] * ds[0] + ds[1] * ds[1] + ds[2] * ds[2]
        b = o[0] * ds[0] + o[1] * ds[1] + o[2] * ds[2]
        disc = b * b - a * c
        ts = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (ts > _EPS), ts, np.inf)


def surface_normal(shape: int, half: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Outward unit normals (3, N) at surface points p (3, N) of a primitive, in its frame."""
    n = np.zeros_like(p)
    if shape == BOX:
        axis = (np.abs(p) / half[:, None]).argmax(0)
        cols = np.arange(p.shape[1])
        n[axis, cols] = np.sign(p[axis, cols])
        return n
    if shape == CYLINDER:
        cap = np.abs(p[2]) / half[2] > np.hypot(p[0], p[1]) / half[0]
        n[2, cap] = np.sign(p[2, cap])
        n[:2, ~cap] = p[:2, ~cap]
    else:
        n = p / half[:, None] ** 2
    return n / np.maximum(np.sqrt((n * n).sum(0)), 1e-12)


@dataclass
class Hits:
    """What each ray of a grid sees: the depth-tested nearest surface."""

    depth: np.ndarray  # (N,) distance along the ray, inf = nothing
    raw_class: np.ndarray  # (N,) uint8
    instance: np.ndarray  # (N,) uint16, 0 = stuff
    material: np.ndarray  # (N,) uint8
    color: np.ndarray  # (N, 3) float32 albedo
    normal: np.ndarray  # (N, 3) float32, sensor frame
    unoccluded: dict[int, int] = field(default_factory=dict)  # instance -> rays it covers, occluded or not

    @classmethod
    def empty(cls, n: int, raw_class: int, material: int) -> "Hits":
        return cls(np.full(n, np.inf), np.full(n, raw_class, np.uint8), np.zeros(n, np.uint16),
                   np.full(n, material, np.uint8), np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32))

    def write(self, rays: np.ndarray, depth: np.ndarray, raw_class, instance, material, color, normal) -> None:
        """Keep the new surface where it is nearer than what the rays saw so far.

        Each value is either one per ray or one for all (a class id, an RGB triple, a normal).
        """
        nearer = depth < self.depth[rays]
        everywhere = nearer.all()
        r = rays if everywhere else rays[nearer]
        for buf, value in ((self.depth, depth), (self.raw_class, raw_class), (self.instance, instance),
                           (self.material, material), (self.color, color), (self.normal, normal)):
            buf[r] = value if everywhere or np.ndim(value) < buf.ndim else value[nearer]


class PinholeGrid:
    """One ray through the centre of every pixel; ray index = row * width + col.

    ``dirs`` is (3, N), one unit ray per column: rows are contiguous, fast to gather and compute on.
    """

    def __init__(self, intrinsics: np.ndarray, width: int, height: int):
        self.k = np.asarray(intrinsics, dtype=np.float64)
        self.width, self.height = width, height
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        d = np.stack([(u - self.k[0, 2]) / self.k[0, 0], (v - self.k[1, 2]) / self.k[1, 1], np.ones_like(u)], -1)
        self.dirs = np.ascontiguousarray((d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3).T)

    def footprint(self, corners: np.ndarray) -> Optional[np.ndarray]:
        """Rays that may hit anything inside the box with these (8, 3) corners; None when off-screen."""
        front = corners[:, 2] > _NEAR
        if not front.any():
            return None
        pts = corners[front]
        if not front.all():  # clip the box's edges at the near plane
            a, b = corners[_BOX_EDGES[:, 0]], corners[_BOX_EDGES[:, 1]]
            crossing = front[_BOX_EDGES[:, 0]] != front[_BOX_EDGES[:, 1]]
            a, b = a[crossing], b[crossing]
            s = (_NEAR - a[:, 2]) / (b[:, 2] - a[:, 2])
            pts = np.concatenate([pts, a + s[:, None] * (b - a)])
        u = pts[:, 0] / pts[:, 2] * self.k[0, 0] + self.k[0, 2]
        v = pts[:, 1] / pts[:, 2] * self.k[1, 1] + self.k[1, 2]
        c0, c1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())), self.width)
        r0, r1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())), self.height)
        if c0 >= c1 or r0 >= r1:
            return None
        return (np.arange(r0, r1)[:, None] * self.width + np.arange(c0, c1)).ravel()


class SpinningGrid:
    """A spinning lidar: ``rings`` lasers at fixed elevations x ``steps`` azimuths (from +x towards +y).

    Ray index = ring * steps + azimuth step; ``dirs`` is (3, N) like :class:`PinholeGrid`'s.
    """

    def __init__(self, elevations_deg, steps: int):
        self.rings, self.steps = len(elevations_deg), steps
        self.elevations = np.radians(np.asarray(elevations_deg, dtype=np.float64))
        el, az = self.elevations[:, None], (np.arange(steps) * 2 * np.pi / steps)[None, :]
        self.dirs = np.stack([np.broadcast_to(v, (self.rings, steps)).ravel()
                              for v in (np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el))])

    def footprint(self, corners: np.ndarray) -> Optional[np.ndarray]:
        """Rays of the rings and azimuths the box can cover (conservative bounds); None when none."""
        xy = corners[:, :2]
        centre = xy.mean(0)
        dist = np.linalg.norm(xy, axis=1)
        near = max(np.linalg.norm(centre) - np.linalg.norm(xy - centre, axis=1).max(), 0.0)  # <= closest approach
        far = dist.max()
        z_lo, z_hi = corners[:, 2].min(), corners[:, 2].max()
        el_lo = np.arctan2(z_lo, near if z_lo < 0 else far)
        el_hi = np.arctan2(z_hi, far if z_hi < 0 else near)
        rings = np.flatnonzero((self.elevations >= el_lo) & (self.elevations <= el_hi))
        if not len(rings):
            return None
        if near == 0.0:  # around the sensor's axis: every azimuth
            cols = np.arange(self.steps)
        else:
            az_c = np.arctan2(centre[1], centre[0])
            rel = (np.arctan2(xy[:, 1], xy[:, 0]) - az_c + np.pi) % (2 * np.pi) - np.pi
            step = 2 * np.pi / self.steps
            cols = np.arange(int(np.floor((az_c + rel.min()) / step)),
                             int(np.ceil((az_c + rel.max()) / step)) + 1) % self.steps
        return (rings[:, None] * self.steps + cols).ravel()


def cast(grid: PinholeGrid | SpinningGrid, hits: Hits, placed: Iterable[tuple[Body, np.ndarray, np.ndarray]],
         max_range: float) -> None:
    """Depth-test every (body, rotation body -> sensor, body centre in the sensor frame) into ``hits``.

    Each part is tested against its own footprint only; a multi-part body is first culled as a whole.
    """
    for body, rot, centre in placed:
        if np.linalg.norm(centre) - body.radius > max_range:
            continue
        if len(body.parts) > 1 and grid.footprint(body.corners @ rot.T + centre) is None:
            continue
        origin = -(rot.T @ centre)  # the sensor in the body frame
        covered = []
        for part in body.parts:
            rays = grid.footprint(part.corners @ rot.T + centre)
            if rays is None:
                continue
            d = rot.T @ grid.dirs[:, rays]
            o = origin - part.offset
            if part.rotation is not None:
                o, d = part.rotation.T @ o, part.rotation.T @ d
            t = intersect(part.shape, part.half, o, d)
            hit = t <= max_range
            if not hit.any():
                continue
            rays, t = rays[hit], t[hit]
            normal = surface_normal(part.shape, part.half, o[:, None] + t * d[:, hit])
            if part.rotation is not None:
                normal = part.rotation @ normal
            hits.write(rays, t, body.raw_class, body.instance, part.material, part.color,
                       (rot @ normal).T.astype(np.float32))
            if body.instance:
                covered.append(rays)
        if covered:
            hits.unoccluded[body.instance] = hits.unoccluded.get(body.instance, 0) \
                + len(np.unique(np.concatenate(covered)))
