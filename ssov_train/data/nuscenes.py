"""nuScenes reader (v1.0-mini / v1.0-trainval / v1.0-test, and synthetic worlds written in that format).

Built on the devkit's own tables (:class:`nuscenes.nuscenes.NuScenes`) so tokens, splits and calibration
match every other nuScenes tool.  Each camera's ``lidar_to_camera`` goes through the full chain
lidar -> ego(t_lidar) -> global -> ego(t_camera) -> camera, with each sample_data's own ego pose: cameras
fire up to ~45 ms before the sweep, and at street speed the ego moves decimetres in between.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DataError
from ..geometry.transforms import invert, lidar_to_camera_chain, make_transform, quat_to_matrix
from ..vocab import ClassDictionary, load_dictionary
from .frame import CameraView, Frame
from .sample import CAMERAS, load_pcd_bin

__all__ = ["CAMERAS", "NuScenesReader", "SYNTHETIC_VEHICLE"]

# Official versions -> {split: devkit split name}; any other version reads <dataroot>/<version>/splits.json.
OFFICIAL_SPLITS = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}
SYNTHETIC_VEHICLE = "ssov-synthetic"  # log.vehicle of the synthetic worlds: their frames say dataset="synthetic"


class NuScenesReader:
    """Frames of a nuScenes-format dataset, keyed by sample token."""

    name = "nuscenes"

    def __init__(self, dataroot: str | Path, version: str = "v1.0-mini", dictionary: Optional[ClassDictionary] = None,
                 cameras: Optional[Sequence[str]] = None):
        from nuscenes.nuscenes import NuScenes  # heavy import (matplotlib, sklearn): only when reading

        self.root = Path(dataroot)
        self.version = version
        self.dictionary = dictionary or load_dictionary("nuscenes")
        self.cameras = tuple(cameras) if cameras else CAMERAS
        unknown = sorted(set(self.cameras) - set(CAMERAS))
        if unknown:
            raise DataError(f"unknown nuScenes camera(s) {unknown}; cameras: {list(CAMERAS)}")
        try:
            self.nusc = NuScenes(version=version, dataroot=str(self.root), verbose=False)
        except (AssertionError, FileNotFoundError, KeyError, json.JSONDecodeError) as e:
            raise DataError(f"cannot load nuScenes {version} from {self.root}: {e}") from None
        self._lidarseg = {r["sample_data_token"]: r["filename"] for r in getattr(self.nusc, "lidarseg", [])}
        self._raw_by_name = {name: raw for raw, name in self.dictionary.raw_classes.items()}

    # ---- splits ------------------------------------------------------------------------------
    def _split_scenes(self) -> dict[str, list[str]]:
        if self.version in OFFICIAL_SPLITS:
            from nuscenes.utils.splits import create_splits_scenes

            official = create_splits_scenes()
            return {split: official[name] for split, name in OFFICIAL_SPLITS[self.version].items()}
        path = self.root / self.version / "splits.json"
        try:
            splits = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{self.version} is not an official nuScenes version and {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise DataError(f"{path} must map split names to lists of scene names")
        return splits

    def split_tokens(self, split: str) -> list[str]:
        """Sample tokens of a split, scene by scene (in the scene table's order), each in time order."""
        splits = self._split_scenes()
        if split not in splits:
            raise DataError(f"nuScenes {self.version} has no split {split!r}; available: {sorted(splits)}")
        wanted = set(splits[split])
        missing = sorted(wanted - {s["name"] for s in self.nusc.scene})
        if missing:
            raise DataError(f"split {split!r} of {self.version} names scenes missing from {self.root}: "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        tokens = []
        for scene in self.nusc.scene:
            if scene["name"] in wanted:
                token = scene["first_sample_token"]
                while token:
                    tokens.append(token)
                    token = self.nusc.get("sample", token)["next"]
        return tokens

    # ---- frames ------------------------------------------------------------------------------
    def _pose(self, table: str, token: str) -> np.ndarray:
        record = self.nusc.get(table, token)
        return make_transform(record["rotation"], record["translation"])

    def load(self, sample_token: str) -> Frame:
        try:
            sample = self.nusc.get("sample", sample_token)
        except KeyError:
            raise DataError(f"nuScenes {self.version} has no sample {sample_token!r}") from None
        where = f"sample {sample_token}"
        lidar = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        try:
            pts = load_pcd_bin(self.root / lidar["filename"])
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        lidar_to_ego = self._pose("calibrated_sensor", lidar["calibrated_sensor_token"])
        ego_to_global = self._pose("ego_pose", lidar["ego_pose_token"])

        raw = labels = None
        if lidar["token"] in self._lidarseg:
            path = self.root / self._lidarseg[lidar["token"]]
            try:
                raw = np.fromfile(path, dtype=np.uint8)
            except FileNotFoundError:
                raise DataError(f"{where}: lidarseg labels missing: {path}") from None
            if len(raw) != len(pts):
                raise DataError(f"{where}: lidarseg labels {path} hold {len(raw)} labels for {len(pts)} points")
            labels = self.dictionary.map_raw(raw)

        cameras = []
        for name in self.cameras:
            if name not in sample["data"]:
                raise DataError(f"{where} has no {name} image")
            cam = self.nusc.get("sample_data", sample["data"][name])
            calib = self.nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
            image_path = self.root / cam["filename"]
            if not image_path.is_file():
                raise DataError(f"{where}: camera image missing: {image_path}")
            stem = Path(cam["filename"]).name.rsplit(".", 1)[0]
            semantic = self.root / "ssov_gt" / "semantic" / name / f"{stem}.png"
            instance = self.root / "ssov_gt" / "instance" / name / f"{stem}.png"
            cameras.append(CameraView(
                name=name, token=cam["token"], width=int(cam["width"]), height=int(cam["height"]),
                intrinsics=np.asarray(calib["camera_intrinsic"], dtype=np.float64),
                lidar_to_camera=lidar_to_camera_chain(lidar_to_ego, ego_to_global,
                                                      self._pose("ego_pose", cam["ego_pose_token"]),
                                                      make_transform(calib["rotation"], calib["translation"])),
                image_path=image_path, timestamp_us=int(cam["timestamp"]),
                semantic_path=semantic if semantic.is_file() else None,
                instance_path=instance if instance.is_file() else None))

        boxes, box_raw = self._boxes(sample, invert(ego_to_global @ lidar_to_ego))
        scene = self.nusc.get("scene", sample["scene_token"])
        synthetic = self.nusc.get("log", scene["log_token"])["vehicle"] == SYNTHETIC_VEHICLE
        return Frame(token=sample_token, dataset="synthetic" if synthetic else "nuscenes",
                     points=np.ascontiguousarray(pts[:, :3]), intensity=np.ascontiguousarray(pts[:, 3]),
                     ring=pts[:, 4].astype(np.int32), cameras=cameras, raw_labels=raw, labels=labels,
                     lidar_to_ego=lidar_to_ego, ego_to_global=ego_to_global, timestamp_us=int(lidar["timestamp"]),
                     scene=scene["name"], boxes=boxes, box_raw_classes=box_raw)

    def _boxes(self, sample: dict, global_to_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sample's 3D boxes in the lidar frame (x, y, z, length, width, height, yaw) and raw class ids."""
        boxes, raw = [], []
        for token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", token)
            rot = global_to_lidar[:3, :3] @ quat_to_matrix(ann["rotation"])
            width, length, height = ann["size"]
            boxes.append([*(global_to_lidar[:3, :3] @ ann["translation"] + global_to_lidar[:3, 3]),
                          length, width, height, np.arctan2(rot[1, 0], rot[0, 0])])
            raw.append(self._raw_by_name.get(ann["category_name"], 0))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 7), np.asarray(raw, dtype=np.int64)
