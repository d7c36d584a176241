"""Camera overlays of labelled points, ROS-free: image decoding, camera model, drawing.

Images are read duck-typed (sensor_msgs/Image: encoding/height/width/step/data; sensor_msgs/CompressedImage:
format/data); cv_bridge has no wheel, so raw images are converted with numpy and compressed ones decoded with
OpenCV. Points are projected with the project's one projection (``ssov_train.geometry.projection``) through the
pinhole K of sensor_msgs/CameraInfo; lens distortion is not applied (nuScenes images are rectified; for a
distorted camera feed the rectified ``image_rect`` topic).
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssov_train.errors import DataError
from ssov_train.geometry.projection import ProjectionConfig, project_to_camera

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}


class ImageError(DataError):
    """An image or camera_info message cannot be used."""


@dataclass
class PinholeCamera:
    """What :func:`project_to_camera` needs: intrinsics, image size and the lidar -> camera transform."""

    intrinsics: np.ndarray  # (3, 3)
    width: int
    height: int
    lidar_to_camera: np.ndarray  # (4, 4)


def camera_from_info(info: Any, lidar_to_camera: np.ndarray) -> PinholeCamera:
    """PinholeCamera from sensor_msgs/CameraInfo (k, width, height) and the lidar -> camera-optical transform."""
    try:
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        width, height = int(info.width), int(info.height)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"camera_info is malformed ({exc})") from exc
    if width <= 0 or height <= 0 or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ImageError(f"camera_info has no usable calibration (size {width}x{height}, fx {k[0, 0]}, fy {k[1, 1]})")
    return PinholeCamera(k, width, height, np.asarray(lidar_to_camera, dtype=np.float64))


def decode_image(msg: Any) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a sensor_msgs/Image or CompressedImage (jpeg/png)."""
    if hasattr(msg, "encoding"):
        return _decode_raw(msg)
    if hasattr(msg, "format"):
        import cv2

        buf = np.frombuffer(bytes(msg.data), dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if bgr is None:
            raise ImageError(f"compressed image ({msg.format!r}) cannot be decoded")
        return bgr[:, :, ::-1].copy()
    raise ImageError(f"not an image message ({type(msg).__name__})")


def _decode_raw(msg: Any) -> np.ndarray:
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise ImageError(f"image encoding {msg.encoding!r} not supported (use one of {sorted(_CHANNELS)})")
    h, w, step, ch = int(msg.height), int(msg.width), int(msg.step), _CHANNELS[enc]
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data.view(np.uint8)
    if h <= 0 or w <= 0 or step < w * ch or data.size != h * step:
        raise ImageError(f"image {w}x{h} {enc} with step {step} does not match its {data.size} data bytes")
    img = data.reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        return img[:, :, 2::-1].copy()
    return np.ascontiguousarray(img[:, :, :3])


def draw_points(image: np.ndarray, uv: np.ndarray, colors: np.ndarray, radius: int = 1) -> np.ndarray:
    """Copy of ``image`` with a (2 radius + 1)-pixel square of each point's colour at its (u, v); points are
    drawn far to near when given in that order (later ones win)."""
    out = image.copy()
    if len(uv) == 0:
        return out
    h, w = out.shape[:2]
    cols = np.floor(uv[:, 0]).astype(np.int64)
    rows = np.floor(uv[:, 1]).astype(np.int64)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            out[r[ok], c[ok]] = colors[ok]
    return out


def render_overlay(image: np.ndarray, camera: PinholeCamera, xyz: np.ndarray, colors: np.ndarray,
                   radius: int = 1, occlusion: bool = True, min_depth: float = 1.0) -> tuple[np.ndarray, int]:
    """Labelled points (xyz (N, 3) lidar frame, colors (N, 3) uint8) over the camera image; returns the image
    and how many points were drawn."""
    if image.shape[:2] != (camera.height, camera.width):
        raise ImageError(f"image is {image.shape[1]}x{image.shape[0]}, camera_info says {camera.width}x{camera.height}")
    proj, _ = project_to_camera(xyz, camera, ProjectionConfig(min_depth=min_depth, occlusion=occlusion))
    order = np.argsort(-proj.depth)  # far first, so near points stay on top
    return draw_points(image, proj.uv[order], colors[proj.point_index[order]], radius), len(order)


def image_to_ros(header: Any, rgb: np.ndarray):
    """rclpy sensor_msgs/Image (rgb8) from an (H, W, 3) uint8 array."""
    from sensor_msgs.msg import Image  # lazy: this module is used without ROS too

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    payload = array.array("B")
    payload.frombytes(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    msg.data = payload  # array.array: a numpy array would go through the slow per-element setter
    return msg
