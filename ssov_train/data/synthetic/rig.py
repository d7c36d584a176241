"""The synthetic sensor rig: the real nuScenes rig of data/nuscenes_sample/sample.json, as calibrated_sensor records.

Reusing a real calibration (not an invented one) makes synthetic frames project, occlude and miss the
cameras the way real ones do.  Values: scene-0061's calibrated_sensor records (rotation as a w, x, y, z
quaternion sensor -> ego, translation = sensor position in the ego frame), full-resolution 1600x900
intrinsics, and each camera's capture time relative to the lidar sweep in that sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry.transforms import make_transform
from .presets import lidar_preset

FULL_WIDTH, FULL_HEIGHT = 1600, 900


@dataclass(frozen=True)
class CameraSpec:
    name: str
    rotation: tuple[float, float, float, float]  # camera -> ego, (w, x, y, z)
    translation: tuple[float, float, float]
    focal: tuple[float, float]  # fx, fy at 1600x900
    principal: tuple[float, float]  # cx, cy at 1600x900
    time_offset_s: float  # capture time minus the lidar sweep's time

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """Pinhole matrix for an image of ``width`` x ``height``: the 1600x900 one scaled per axis.

        Pixel (row, col) covers [row, row + 1) x [col, col + 1), so scaling is exact: u' = u * width / 1600.
        """
        sx, sy = width / FULL_WIDTH, height / FULL_HEIGHT
        return np.array([[self.focal[0] * sx, 0.0, self.principal[0] * sx],
                         [0.0, self.focal[1] * sy, self.principal[1] * sy],
                         [0.0, 0.0, 1.0]])

    @property
    def to_ego(self) -> np.ndarray:
        return make_transform(self.rotation, self.translation)


# The nuScenes lidar (HDL-32E: ring 0 looks 30.67 deg down, ring 31 10.67 deg up; 1,084 firings per revolution)
# is the preset nuscenes_hdl32e of config/sensors.yaml, which holds its calibration.
NUSCENES_LIDAR = lidar_preset("nuscenes_hdl32e")
LIDAR_ROTATION = NUSCENES_LIDAR.mount.rotation  # lidar -> ego (w, x, y, z)
LIDAR_TRANSLATION = NUSCENES_LIDAR.mount.translation
LIDAR_ELEVATIONS_DEG = tuple(NUSCENES_LIDAR.elevations.tolist())


def lidar_to_ego() -> np.ndarray:
    return NUSCENES_LIDAR.to_ego


CAMERA_SPECS = (
    CameraSpec("CAM_FRONT", (0.4998015583, -0.5030316195, 0.4997798008, -0.4973708303),
               (1.70079124, 0.01594563, 1.5109576), (1266.417203, 1266.417203), (816.26702, 491.507066), -0.0355),
    CameraSpec("CAM_FRONT_RIGHT", (0.206034791, -0.2026940547, 0.6824507886, -0.6713610849),
               (1.55084777, -0.49340481, 1.49574804), (1260.847445, 1260.847445), (807.968245, 495.334427), -0.0276),
    CameraSpec("CAM_BACK_RIGHT", (0.1228098023, -0.1324008405, -0.7004305753, 0.6904960385),
               (1.01487815, -0.48056823, 1.56239545), (1259.513741, 1259.513741), (807.252905, 501.195799), -0.0201),
    CameraSpec("CAM_BACK", (0.5037872623, -0.4974025002, -0.4941850157, 0.5045496183),
               (0.02832603, 0.00345137, 1.57910347), (809.220991, 809.220991), (829.2196, 481.778424), -0.0104),
    CameraSpec("CAM_BACK_LEFT", (0.6924185601, -0.7031619403, -0.1164834279, 0.1120331843),
               (1.03569102, 0.48479503, 1.59097016), (1256.741481, 1256.741481), (792.112574, 492.775747), -0.0005),
    CameraSpec("CAM_FRONT_LEFT", (0.6757265048, -0.6736266525, 0.2121401451, -0.2112282712),
               (1.52387798, 0.49463135, 1.50932825), (1272.597947, 1272.597947), (826.615493, 479.751654), -0.0431),
)
