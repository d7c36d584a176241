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

    def corners(self) -> np.ndarray:
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
        pts = np.concatenate([p.corners() for p in self.parts])
        lo, hi = pts.min(0), pts.max(0)
        return (lo + hi) / 2 + _UNIT_CORNERS * (hi - lo) / 2

    @cached_property
    def radius(self) -> float:
        return float(np.linalg.norm(self.corners, axis=1).max())

    @cached_property
    def materials(self) -> np.ndarray:
        return np.array([p.material for p in self.parts], dtype=np.uint8)

    @cached_property
    def colors(self) -> np.ndarray:
        return np.array([p.color for p in self.parts], dtype=np.float32)


def intersect(shape: int, half: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along each ray (origin (3,), dirs (N, 3)) to the primitive's outer surface; inf = miss.

    A ray starting inside a primitive misses it (sensors never sit inside geometry).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shape == BOX:
            inv = 1.0 / dirs
            t1, t2 = (-half - origin) * inv, (half - origin) * inv
            t_near = np.minimum(t1, t2).max(1)
            t_far = np.maximum(t1, t2).min(1)
            return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)
        if shape == CYLINDER:
            r, h = half[0], half[2]
            t = np.full(len(dirs), np.inf)
            dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
            c = origin[0] ** 2 + origin[1] ** 2 - r * r
            if c > 0:  # side wall, seen from outside
                a = dx * dx + dy * dy
                b = origin[0] * dx + origin[1] * dy
                disc = b * b - a * c
                ts = (-b - np.sqrt(disc)) / a
                ok = (disc >= 0) & (ts > _EPS) & (np.abs(origin[2] + ts * dz) <= h)
                t[ok] = ts[ok]
            if abs(origin[2]) > h:  # the cap facing the origin
                tc = (np.sign(origin[2]) * h - origin[2]) / dz
                px, py = origin[0] + tc * dx, origin[1] + tc * dy
                ok = (tc > _EPS) & (px * px + py * py <= r * r) & (tc < t)
                t[ok] = tc[ok]
            return t
        # ellipsoid: a unit sphere after scaling the axes
        o, d = origin / half, dirs / half
        c = o @ o - 1.0
        if c <= 0:
            return np.full(len(dirs), np.inf)
        a = (d * d).sum(1)
        b = d @ o
        disc = b * b - a * c
        ts = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (ts > _EPS), ts, np.inf)


def surface_normal(shape: int, half: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Outward unit normals at points (N, 3) on a primitive's surface, in the primitive's frame."""
    n = np.zeros_like(points)
    if shape == BOX:
        axis = (np.abs(points) / half).argmax(1)
        rows = np.arange(len(points))
        n[rows, axis] = np.sign(points[rows, axis])
        return n
    if shape == CYLINDER:
        radial = np.hypot(points[:, 0], points[:, 1]) / half[0]
        cap = np.abs(points[:, 2]) / half[2] > radial
        n[cap, 2] = np.sign(points[cap, 2])
        n[~cap, :2] = points[~cap, :2]
    else:
        n = points / half ** 2
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


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
        """Keep the new surface where it is nearer than what the rays saw so far (values: per ray or one)."""
        nearer = depth < self.depth[rays]
        r = rays[nearer]
        self.depth[r] = depth[nearer]
        for buf, value in ((self.raw_class, raw_class), (self.instance, instance), (self.material, material),
                           (self.color, color), (self.normal, normal)):
            buf[r] = np.broadcast_to(value, (len(rays),) + buf.shape[1:])[nearer]


class PinholeGrid:
    """One ray through the centre of every pixel; ray index = row * width + col."""

    def __init__(self, intrinsics: np.ndarray, width: int, height: int):
        self.k = np.asarray(intrinsics, dtype=np.float64)
        self.width, self.height = width, height
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        d = np.stack([(u - self.k[0, 2]) / self.k[0, 0], (v - self.k[1, 2]) / self.k[1, 1], np.ones_like(u)], -1)
        self.dirs = (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)

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

    Ray index = ring * steps + azimuth step.
    """

    def __init__(self, elevations_deg, steps: int):
        self.rings, self.steps = len(elevations_deg), steps
        el = np.radians(np.asarray(elevations_deg, dtype=np.float64))[:, None]
        az = (np.arange(steps) * 2 * np.pi / steps)[None, :]
        self.dirs = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)),
                             -1).reshape(-1, 3)
        self._all = np.arange(len(self.dirs))

    def footprint(self, corners: np.ndarray) -> np.ndarray:
        """All rings over the azimuth range the box's footprint spans (every ray if it surrounds the axis)."""
        xy = corners[:, :2]
        centre = xy.mean(0)
        if np.linalg.norm(centre) <= np.linalg.norm(xy - centre, axis=1).max():
            return self._all
        az_c = np.arctan2(centre[1], centre[0])
        rel = (np.arctan2(xy[:, 1], xy[:, 0]) - az_c + np.pi) % (2 * np.pi) - np.pi
        step = 2 * np.pi / self.steps
        cols = np.arange(int(np.floor((az_c + rel.min()) / step)), int(np.ceil((az_c + rel.max()) / step)) + 1)
        return (np.arange(self.rings)[:, None] * self.steps + cols % self.steps).ravel()


def cast(grid: PinholeGrid | SpinningGrid, hits: Hits, placed: Iterable[tuple[Body, np.ndarray, np.ndarray]],
         max_range: float) -> None:
    """Depth-test every (body, rotation body -> sensor, body centre in the sensor frame) into ``hits``."""
    for body, rot, centre in placed:
        if np.linalg.norm(centre) - body.radius > max_range:
            continue
        rays = grid.footprint(body.corners @ rot.T + centre)
        if rays is None:
            continue
        origin = -(rot.T @ centre)
        dirs = grid.dirs[rays] @ rot
        best = np.full(len(rays), np.inf)
        which = np.zeros(len(rays), np.int64)
        for i, part in enumerate(body.parts):
            if part.rotation is None:
                t = intersect(part.shape, part.half, origin - part.offset, dirs)
            else:
                t = intersect(part.shape, part.half, part.rotation.T @ (origin - part.offset), dirs @ part.rotation)
            nearer = t < best
            best[nearer] = t[nearer]
            which[nearer] = i
        hit = best <= max_range
        if not hit.any():
            continue
        if body.instance:
            hits.unoccluded[body.instance] = hits.unoccluded.get(body.instance, 0) + int(hit.sum())
        rays, best, which, dirs = rays[hit], best[hit], which[hit], dirs[hit]
        normal = np.empty((len(rays), 3))
        for i in np.unique(which):
            part, sel = body.parts[i], which == i
            local = origin + best[sel, None] * dirs[sel] - part.offset
            if part.rotation is None:
                normal[sel] = surface_normal(part.shape, part.half, local)
            else:
                normal[sel] = surface_normal(part.shape, part.half, local @ part.rotation) @ part.rotation.T
        hits.write(rays, best, body.raw_class, body.instance, body.materials[which], body.colors[which],
                   (normal @ rot.T).astype(np.float32))
