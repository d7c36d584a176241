"""Reader for the single-sample layout of ``data/nuscenes_sample`` (one real nuScenes keyframe).

``sample.json`` holds the calibration (row-major 4x4 transforms, ``lidar2cam`` already carrying the ego
motion between the lidar and camera timestamps), the six camera files and 3D boxes; there are no lidarseg
labels, so the boxes are the only ground truth (points inside a box belong to its class).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..vocab import ClassDictionary, load_dictionary
from .frame import CameraView, Frame

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")

# Box class names of sample.json -> raw nuScenes-lidarseg class names of the dictionary.
_BOX_CLASS_TO_RAW = {
    "car": "vehicle.car", "truck": "vehicle.truck", "trailer": "vehicle.trailer", "bus": "vehicle.bus.rigid",
    "construction_vehicle": "vehicle.construction", "bicycle": "vehicle.bicycle",
    "motorcycle": "vehicle.motorcycle", "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone", "barrier": "movable_object.barrier",
    "ignore": "noise",  # a box whose class the source dataset left out of its 10 detection classes
}


def load_pcd_bin(path: Path, num_fields: int = 5) -> np.ndarray:
    """A nuScenes ``.pcd.bin`` sweep as (N, num_fields) float32, with a clear error when truncated."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"lidar sweep missing: {path}") from None
    if raw.size == 0 or raw.size % num_fields:
        raise DataError(f"lidar sweep {path} is truncated or not {num_fields} float32 fields per point "
                        f"({raw.size * 4} bytes)")
    return raw.reshape(-1, num_fields)


class SampleReader:
    """The single-sample layout as a dataset with one sample (split 'all' / 'val')."""

    name = "sample"

    def __init__(self, root: str | Path, dictionary: ClassDictionary | None = None):
        self.root = Path(root)
        self.dictionary = dictionary or load_dictionary("nuscenes")
        meta_path = self.root / "sample.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise DataError(f"single-sample dataset: {meta_path} not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: invalid JSON ({e})") from None
        self.token = str(self.meta["sample_token"])

    def split_tokens(self, split: str = "all") -> list[str]:
        return [self.token]

    def load(self, token: str) -> Frame:
        if token != self.token:
            raise DataError(f"single-sample dataset {self.root} has no sample {token!r}")
        m = self.meta
        pts = load_pcd_bin(self.root / m["lidar"]["file"], int(m["lidar"].get("num_pts_feats", 5)))
        cameras = []
        for name in CAMERAS:
            c = m["cameras"][name]
            cameras.append(CameraView(
                name=name, token=c["sample_data_token"], width=int(c["width"]), height=int(c["height"]),
                intrinsics=np.asarray(c["cam2img"], dtype=np.float64),
                lidar_to_camera=np.asarray(c["lidar2cam"], dtype=np.float64),
                image_path=self.root / c["file"], timestamp_us=int(round(c["timestamp_s"] * 1e6))))
        boxes = np.asarray([b["bbox_3d"] for b in m["boxes_3d"]["boxes"]], dtype=np.float64).reshape(-1, 7)
        box_raw = np.asarray([self.dictionary.raw_index(_BOX_CLASS_TO_RAW[b["class"]])
                              for b in m["boxes_3d"]["boxes"]], dtype=np.int64)
        lidar_to_ego = np.asarray(m["lidar"]["lidar2ego"], dtype=np.float64)
        return Frame(token=self.token, dataset="sample", points=np.ascontiguousarray(pts[:, :3]),
                     intensity=np.ascontiguousarray(pts[:, 3]), ring=pts[:, 4].astype(np.int32) if pts.shape[1] > 4 else None,
                     cameras=cameras, lidar_to_ego=lidar_to_ego, ego_to_global=np.asarray(m["ego2global"]),
                     timestamp_us=int(round(m["timestamp_s"] * 1e6)), scene="scene-0061",
                     boxes=boxes, box_raw_classes=box_raw)

    def camera_to_ego(self, name: str) -> np.ndarray:
        return np.asarray(self.meta["cameras"][name]["cam2ego"], dtype=np.float64)
