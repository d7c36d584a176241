"""The one frame model every reader produces and every stage consumes.

A :class:`Frame` is one lidar scan plus the camera images that go with it.  Points stay in the lidar
sensor frame; each :class:`CameraView` carries the full lidar -> camera transform (ego motion between
the lidar and camera timestamps included), so projection never needs to know which dataset it is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError


@dataclass
class CameraView:
    name: str  # e.g. CAM_FRONT
    token: str  # unique image id (nuScenes sample_data token); teacher outputs are keyed by it
    width: int
    height: int
    intrinsics: np.ndarray  # (3, 3) pinhole matrix of the full-resolution image
    lidar_to_camera: np.ndarray  # (4, 4): lidar frame at t_lidar -> camera frame at t_cam
    image_path: Optional[Path] = None
    timestamp_us: int = 0
    # Optional per-pixel ground truth (synthetic world): PNG of raw dataset class ids, and of instance ids.
    semantic_path: Optional[Path] = None
    instance_path: Optional[Path] = None

    def load_image(self) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        from PIL import Image, UnidentifiedImageError

        if self.image_path is None:
            raise DataError(f"camera {self.name} ({self.token}) has no image file")
        try:
            with Image.open(self.image_path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"camera image missing: {self.image_path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"camera image unreadable: {self.image_path} ({e})") from None
        if arr.shape[:2] != (self.height, self.width):
            raise DataError(f"camera image {self.image_path} is {arr.shape[1]}x{arr.shape[0]}, "
                            f"calibration says {self.width}x{self.height}")
        return arr

    def load_semantic(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Per-pixel raw class ids (H, W) and instance ids (H, W) or None, from the ground-truth PNGs."""
        from PIL import Image

        if self.semantic_path is None:
            raise DataError(f"camera {self.name} ({self.token}) has no per-pixel ground truth")
        try:
            sem = np.asarray(Image.open(self.semantic_path))
            inst = np.asarray(Image.open(self.instance_path)) if self.instance_path else None
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"per-pixel ground truth unreadable for {self.name} ({self.token}): {e}") from None
        return sem, inst


@dataclass
class Frame:
    token: str  # unique sample id (nuScenes sample token / KITTI "seq/scan")
    dataset: str  # nuscenes | semantickitti | sample | synthetic
    points: np.ndarray  # (N, 3) float32, lidar sensor frame
    intensity: np.ndarray  # (N,) float32, as stored by the dataset
    cameras: list[CameraView] = field(default_factory=list)
    ring: Optional[np.ndarray] = None  # (N,) int, laser index when the format has it
    time: Optional[np.ndarray] = None  # (N,) float32, seconds relative to the scan
    raw_labels: Optional[np.ndarray] = None  # (N,) dataset-native class ids
    labels: Optional[np.ndarray] = None  # (N,) uint8 evaluation labels (0 = ignore)
    lidar_to_ego: Optional[np.ndarray] = None
    ego_to_global: Optional[np.ndarray] = None
    timestamp_us: int = 0
    scene: str = ""
    # Optional 3D boxes in the lidar frame: (B, 7) x, y, z, dx, dy, dz, yaw and their raw class ids.
    boxes: Optional[np.ndarray] = None
    box_raw_classes: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def camera(self, name: str) -> CameraView:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"frame {self.token} has no camera {name!r}; cameras: {[c.name for c in self.cameras]}")

    def validate(self) -> None:
        """Reject malformed data with one message naming the sample and the field."""
        where = f"sample {self.token} ({self.dataset})"
        p = self.points
        if not isinstance(p, np.ndarray) or p.ndim != 2 or p.shape[1] != 3:
            raise DataError(f"{where}: points must be (N, 3), got {getattr(p, 'shape', type(p))}")
        if p.shape[0] == 0:
            raise DataError(f"{where}: empty point cloud")
        if not np.isfinite(p).all():
            raise DataError(f"{where}: {int((~np.isfinite(p)).any(1).sum())} points have NaN/Inf coordinates")
        n = p.shape[0]
        for name in ("intensity", "ring", "time", "raw_labels", "labels"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, np.ndarray) or v.shape != (n,)):
                raise DataError(f"{where}: {name} must have shape ({n},), got {getattr(v, 'shape', type(v))}")
        for cam in self.cameras:
            k, t = np.asarray(cam.intrinsics), np.asarray(cam.lidar_to_camera)
            if k.shape != (3, 3) or t.shape != (4, 4) or not (np.isfinite(k).all() and np.isfinite(t).all()):
                raise DataError(f"{where}: camera {cam.name} has invalid calibration (NaN/Inf or wrong shape)")
            if cam.width <= 0 or cam.height <= 0 or k[0, 0] <= 0 or k[1, 1] <= 0:
                raise DataError(f"{where}: camera {cam.name} has invalid size or focal length")
