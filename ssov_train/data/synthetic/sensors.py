"""The sensors of the synthetic world: the spinning lidar and the pinhole cameras, with their ground truth.

Both cast the rig's rays into a scene at the sensor's own capture time (cameras fire tens of ms before the
lidar sweep, as in nuScenes, while the ego and the traffic keep moving).  Cameras shade each hit by material
(textures from the hit point, Lambertian sun, haze, sky gradient, sensor noise) and keep the raw class and
instance of every pixel; the lidar turns each hit into a point with range noise and an intensity from the
material's reflectivity, the incidence angle and the range, then drops the echoes its preset
(config/sensors.yaml) never returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from . import models as m
from .presets import REFLECTIVITY_TABLES, LidarPreset, lidar_preset
from .raycast import Hits, PinholeGrid, SpinningGrid, cast
from .rig import CameraSpec
from .world import CAMERA_FAR, Scene

_HORIZON, _ZENITH = np.array([0.8, 0.84, 0.9], np.float32), np.array([0.33, 0.52, 0.82], np.float32)
_WINDOW = np.array([0.16, 0.2, 0.26], np.float32)
_TEXTURE_NOISE = np.full(len(m.Material), 0.03, np.float32)  # per-pixel brightness noise by material
_TEXTURE_NOISE[[m.Material.ASPHALT, m.Material.GRASS, m.Material.FOLIAGE, m.Material.BARK, m.Material.CONCRETE,
                m.Material.FUR]] = [0.07, 0.18, 0.28, 0.12, 0.05, 0.15]


@dataclass
class LidarScan:
    points: np.ndarray  # (N, 5) float32 x, y, z, intensity, ring in the lidar frame (nuScenes .pcd.bin)
    raw_labels: np.ndarray  # (N,) uint8
    instances: np.ndarray  # (N,) uint16
    intensity: np.ndarray  # (N,) as the sensor reports it: float32 0..1, uint8 or uint16 (points[:, 3] holds it too)


@dataclass
class CameraImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    semantic: np.ndarray  # (H, W) uint8 raw class ids
    instance: np.ndarray  # (H, W) uint16
    unoccluded: dict[int, int]  # instance -> pixels it would cover without occluders


def lidar_grid(preset: Optional[LidarPreset] = None) -> SpinningGrid:
    """The ray grid of a preset (default: the default preset's)."""
    preset = preset or lidar_preset()
    return _spinning_grid(tuple(preset.elevations.tolist()), preset.azimuth_steps)


@lru_cache(maxsize=8)
def _spinning_grid(elevations_deg: tuple[float, ...], steps: int) -> SpinningGrid:
    return SpinningGrid(elevations_deg, steps)


def _add_ground(hits: Hits, dirs: np.ndarray, pose: np.ndarray, scene: Scene, max_range: float) -> None:
    """Depth-test the ground plane z = 0 (classes and paint from the street layout); ``dirs`` (3, N)."""
    rot, origin = pose[:3, :3], pose[:3, 3]
    up = rot[2]  # the street's z axis in the sensor frame
    rise = up @ dirs
    rays = np.flatnonzero(rise < -1e-9)
    depth = -origin[2] / rise[rays]
    keep = depth <= max_range
    rays, depth = rays[keep], depth[keep]
    xy = origin[:2, None] + depth * (rot[:2] @ dirs[:, rays])
    raw, material, color = scene.street.ground(xy.T)
    hits.write(rays, depth, raw, 0, material, color, up.astype(np.float32))


def scan_lidar(scene: Scene, grid: SpinningGrid, t: float, rng: np.random.Generator,
               preset: Optional[LidarPreset] = None) -> LidarScan:
    """One sweep at scene time ``t`` (no-returns dropped), points in firing order (azimuth-major).

    ``preset`` (default: the default preset) gives the mount, range limits, noise, intensity and dropouts;
    ``grid`` its rays (:func:`lidar_grid`, or a coarser grid of the same beams).
    """
    preset = preset or lidar_preset()
    pose = scene.ego_pose(t) @ preset.to_ego
    hits = Hits.empty(grid.dirs.shape[1], 0, m.Material.SKY)
    _add_ground(hits, grid.dirs, pose, scene, preset.max_range)
    cast(grid, hits, scene.place(t, pose, preset.max_range), preset.max_range)
    order = np.arange(grid.dirs.shape[1]).reshape(grid.rings, grid.steps).T.ravel()
    order = order[np.isfinite(hits.depth[order])]
    dirs, normal, depth, material = grid.dirs[:, order].T, hits.normal[order], hits.depth[order], hits.material[order]
    measured = depth + rng.normal(0, preset.range_noise, len(order))
    incidence = np.abs((dirs * normal).sum(1))
    speckle = rng.lognormal(0, preset.intensity.speckle_sigma, len(order))
    intensity = preset.intensity.quantise(preset.intensity.signal(material, incidence, depth, speckle))
    keep = _returned(preset, material, incidence, depth, speckle, rng)
    if keep is not None:
        order, dirs, measured, intensity = order[keep], dirs[keep], measured[keep], intensity[keep]
    points = np.c_[dirs * measured[:, None], intensity, order // grid.steps]
    return LidarScan(points.astype(np.float32), hits.raw_class[order], hits.instance[order], intensity)


def _returned(preset: LidarPreset, material: np.ndarray, incidence: np.ndarray, depth: np.ndarray,
              speckle: np.ndarray, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Which hits come back as points (None: all of them, and no random draws, as in today's default world).

    Too close; dropped at random (more often far away); or too weak: the echo of reflectivity x incidence
    response x speckle, falling with the squared range, below what the sensor detects.
    """
    intensity, dropout = preset.intensity, preset.dropout
    if preset.min_range == 0 and not (dropout.near or dropout.far) and dropout.detection is None:
        return None
    keep = np.ones(len(depth), bool)
    if preset.min_range > 0:
        keep &= depth >= preset.min_range
    if dropout.near or dropout.far:
        p = dropout.near + (dropout.far - dropout.near) * np.clip(depth / preset.max_range, 0.0, 1.0)
        keep &= rng.random(len(depth)) >= p
    if dropout.detection is not None:
        echo = REFLECTIVITY_TABLES[intensity.reflectivity][material] \
            * (intensity.incidence_floor + (1 - intensity.incidence_floor) * incidence) * speckle
        keep &= echo * (dropout.detection.range_at_reference / np.maximum(depth, 1e-6)) ** 2 \
            >= dropout.detection.reflectivity
    return keep


def render_camera(scene: Scene, spec: CameraSpec, grid: PinholeGrid, t: float,
                  rng: np.random.Generator) -> CameraImage:
    """Image and per-pixel ground truth of one camera at scene time ``t`` (sky = static.other)."""
    pose = scene.ego_pose(t) @ spec.to_ego
    hits = Hits.empty(grid.dirs.shape[1], m.STATIC_OTHER, m.Material.SKY)
    _add_ground(hits, grid.dirs, pose, scene, np.inf)
    cast(grid, hits, scene.place(t, pose, CAMERA_FAR), CAMERA_FAR)
    shape = (grid.height, grid.width)
    rgb = _shade(hits, grid.dirs, pose, scene, rng)
    return CameraImage(rgb.reshape(*shape, 3), hits.raw_class.reshape(shape), hits.instance.reshape(shape),
                       hits.unoccluded)


def _sky(dirs_z: np.ndarray) -> np.ndarray:
    return _HORIZON + (_ZENITH - _HORIZON) * np.clip(dirs_z[:, None] * 2.5, 0, 1) ** 0.7


def _shade(hits: Hits, sensor_dirs: np.ndarray, pose: np.ndarray, scene: Scene,
           rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 (N, 3) for each ray: textured albedo x sun, glass reflecting the sky, haze, noise."""
    rot, origin = pose[:3, :3].astype(np.float32), pose[:3, 3].astype(np.float32)
    out = np.empty((sensor_dirs.shape[1], 3), np.float32)
    hit = np.isfinite(hits.depth)
    miss = np.flatnonzero(~hit)
    out[miss] = _sky(rot[2] @ sensor_dirs[:, miss].astype(np.float32))
    hit = np.flatnonzero(hit)
    dirs = (rot @ sensor_dirs[:, hit].astype(np.float32)).T
    depth, material = hits.depth[hit].astype(np.float32), hits.material[hit]
    p = origin + depth[:, None] * dirs
    normal = hits.normal[hit] @ rot.T
    albedo = hits.color[hit]

    wall = np.flatnonzero((material == m.Material.FACADE) & (np.abs(normal[:, 2]) < 0.5))
    along = np.mod((p[wall, 0] * -normal[wall, 1] + p[wall, 1] * normal[wall, 0]) / 3.2, 1)
    floor = np.mod(p[wall, 2] / 3.3, 1)
    window = (along > 0.2) & (along < 0.7) & (floor > 0.3) & (floor < 0.78) & (p[wall, 2] > 1.2)
    albedo[wall[window]] = _WINDOW
    tiles = np.flatnonzero((hits.raw_class[hit] == m.SIDEWALK) & (normal[:, 2] > 0.5))
    groove = (np.mod(p[tiles, 0] / 0.9, 1) < 0.05) | (np.mod(p[tiles, 1] / 0.9, 1) < 0.05)
    albedo[tiles[groove]] *= 0.75
    reflective = np.flatnonzero(material == m.Material.REFLECTIVE)
    albedo[reflective[np.mod(p[reflective, 2] / 0.3, 1) < 0.3]] = 0.95
    leafy = np.flatnonzero((material == m.Material.GRASS) | (material == m.Material.FOLIAGE))
    q = p[leafy]
    albedo[leafy] *= 1 + 0.15 * (np.sin(0.8 * q[:, 0]) * np.sin(0.6 * q[:, 1] + 0.9 * q[:, 2]))[:, None]
    noise = rng.standard_normal(len(out), dtype=np.float32)  # per pixel: texture grain and sensor noise
    albedo *= 1 + _TEXTURE_NOISE[material][:, None] * noise[hit, None]

    color = albedo * (0.45 + 0.7 * np.clip(normal @ scene.sun.astype(np.float32), 0, 1))[:, None]
    glass = np.flatnonzero(material == m.Material.GLASS)
    d, n = dirs[glass], normal[glass]
    color[glass] += 0.3 * _sky(d[:, 2] - 2 * (d * n).sum(1) * n[:, 2])  # the sky in the mirror direction
    haze = 1 - np.exp(-depth / 350.0)[:, None]
    out[hit] = color * (1 - haze) + _HORIZON * haze
    out *= rng.uniform(0.92, 1.08) + 0.012 * noise[::-1, None]  # exposure; sensor noise (draws reused reversed)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
