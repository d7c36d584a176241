"""SemanticKITTI reader: the standard ``sequences/<NN>/`` layout -> :class:`Frame`.

Layout (per sequence)::

    velodyne/<NNNNNN>.bin    float32 (x, y, z, remission) per point
    labels/<NNNNNN>.label    uint32 per point: lower 16 bits = semantic id, upper 16 = instance id
    calib.txt                P0..P3, Tr as 12 row-major floats (3x4)
    image_2/<NNNNNN>.png     left colour camera (optional)
    poses.txt                one 3x4 cam0 pose per scan, relative to the first scan's cam0 (optional)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError
from ..vocab.dictionary import ClassDictionary, load_dictionary
from .frame import CameraView, Frame

# Official SemanticKITTI splits (semantic-kitti.yaml of the benchmark API).
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}
CAMERA_NAME = "CAM2"


def _to_4x4(m34: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :] = m34
    return m


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``calib.txt`` -> {key: (3, 4) float64}; a malformed line is a DataError naming the file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    calib: dict[str, np.ndarray] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, values = line.partition(":")
        try:
            arr = np.array(values.split(), dtype=np.float64)
        except ValueError:
            arr = np.empty(0)
        if not sep or arr.size != 12 or not np.isfinite(arr).all():
            raise DataError(f"{path}:{n}: expected '<key>: <12 numbers>', got {line.strip()[:80]!r}")
        calib[key.strip()] = arr.reshape(3, 4)
    return calib


def read_poses(path: Path) -> np.ndarray:
    """``poses.txt`` -> (S, 4, 4) cam0(scan i) -> cam0(scan 0)."""
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if arr.shape[1] != 12:
        raise DataError(f"{path}: expected 12 numbers per line, got {arr.shape[1]}")
    out = np.tile(np.eye(4), (arr.shape[0], 1, 1))
    out[:, :3, :] = arr.reshape(-1, 3, 4)
    return out


def lidar_to_cam2(p2: np.ndarray, tr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-2 intrinsics K and the 4x4 velodyne -> camera-2 transform.

    KITTI odometry has no R0_rect: ``Tr`` already maps velodyne -> rectified cam0.  The rectified
    cameras share cam0's orientation and differ by a translation folded into their projection matrix,
    ``P2 = K [I | t2]`` with ``K = P2[:, :3]``, so ``t2 = K^-1 P2[:, 3]`` and
    velodyne -> cam2 = ``[I | t2] @ Tr``.  Then ``K @ (T p)`` equals the devkit's ``P2 @ Tr @ p``.
    """
    k = p2[:, :3].copy()
    cam0_to_cam2 = np.eye(4)
    cam0_to_cam2[:3, 3] = np.linalg.solve(k, p2[:, 3])
    return k, cam0_to_cam2 @ _to_4x4(tr)


class SemanticKittiReader:
    """Reads SemanticKITTI scans (tokens ``"<seq>/<scan>"``, e.g. ``"08/000123"``) into frames."""

    def __init__(self, root: str | Path, dictionary: Optional[ClassDictionary] = None, with_camera: bool = True):
        self.root = Path(root)
        self.seq_dir = self.root / "sequences"
        if not self.seq_dir.is_dir():
            raise DataError(f"SemanticKITTI root {self.root} has no sequences/ directory")
        self.dictionary = dictionary if dictionary is not None else load_dictionary("semantickitti")
        self.with_camera = with_camera
        # Per-sequence files are read once, not once per scan.
        self._calib = lru_cache(maxsize=None)(self._read_calib)
        self._poses = lru_cache(maxsize=None)(self._read_poses)

    # ---- tokens ----------------------------------------------------------------------------------
    def sequences(self) -> list[str]:
        return sorted(p.name for p in self.seq_dir.iterdir() if (p / "velodyne").is_dir())

    def sequence_tokens(self, seq: str) -> list[str]:
        return [f"{seq}/{p.stem}" for p in sorted((self.seq_dir / seq / "velodyne").glob("*.bin"))]

    def split_tokens(self, split: str) -> list[str]:
        """Tokens of the official split, for the sequences present on disk."""
        if split not in SPLITS:
            raise ConfigError(f"unknown SemanticKITTI split {split!r}; valid: {sorted(SPLITS)}")
        present = set(self.sequences())
        return [t for seq in SPLITS[split] if seq in present for t in self.sequence_tokens(seq)]

    # ---- per-sequence files ----------------------------------------------------------------------
    def _read_calib(self, seq: str) -> Optional[dict[str, np.ndarray]]:
        path = self.seq_dir / seq / "calib.txt"
        return read_calib(path) if path.is_file() else None

    def _read_poses(self, seq: str) -> Optional[np.ndarray]:
        path = self.seq_dir / seq / "poses.txt"
        return read_poses(path) if path.is_file() else None

    def _calib_key(self, seq: str, key: str) -> np.ndarray:
        calib = self._calib(seq)
        if key not in calib:
            raise DataError(f"{self.seq_dir / seq / 'calib.txt'}: missing key {key!r} (has {sorted(calib)})")
        return calib[key]

    # ---- loading ---------------------------------------------------------------------------------
    def _split_token(self, token: str) -> tuple[str, str]:
        seq, sep, scan = token.partition("/")
        if not sep or not seq.isdigit() or not scan.isdigit():
            raise DataError(f"invalid SemanticKITTI token {token!r} (expected '<seq>/<scan>', e.g. '08/000123')")
        return seq, scan

    def load(self, token: str) -> Frame:
        seq, scan = self._split_token(token)
        seq_path = self.seq_dir / seq
        bin_path = seq_path / "velodyne" / f"{scan}.bin"
        if not bin_path.is_file():
            raise DataError(f"SemanticKITTI scan missing: {bin_path}")
        size = bin_path.stat().st_size
        if size % 16:
            raise DataError(f"{bin_path}: size {size} bytes is not a multiple of 16 (x, y, z, remission float32)")
        pts = np.fromfile(bin_path, dtype=np.float32).reshape(-1, 4)

        raw_labels = labels = None
        label_path = seq_path / "labels" / f"{scan}.label"
        if label_path.is_file():
            size = label_path.stat().st_size
            if size != 4 * pts.shape[0]:
                raise DataError(f"{label_path}: {size} bytes = {size / 4:g} labels, "
                                f"but the scan has {pts.shape[0]} points")
            raw_labels = (np.fromfile(label_path, dtype=np.uint32) & 0xFFFF).astype(np.int32)
            labels = self.dictionary.map_raw(raw_labels)

        pose = self._lidar_pose(seq, int(scan))
        return Frame(
            token=token, dataset="semantickitti", points=np.ascontiguousarray(pts[:, :3]),
            intensity=np.ascontiguousarray(pts[:, 3]), raw_labels=raw_labels, labels=labels,
            cameras=self._cameras(seq, scan), scene=seq,
            lidar_to_ego=None if pose is None else np.eye(4), ego_to_global=pose,
        )

    def _cameras(self, seq: str, scan: str) -> list[CameraView]:
        image_path = self.seq_dir / seq / "image_2" / f"{scan}.png"
        if not (self.with_camera and image_path.is_file() and self._calib(seq) is not None):
            return []
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image_path) as im:  # header only: the pixels are decoded lazily
                width, height = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"camera image unreadable: {image_path} ({e})") from None
        k, l2c = lidar_to_cam2(self._calib_key(seq, "P2"), self._calib_key(seq, "Tr"))
        return [CameraView(name=CAMERA_NAME, token=f"{seq}_{scan}_image_2", width=width, height=height,
                           intrinsics=k, lidar_to_camera=l2c, image_path=image_path)]

    def _lidar_pose(self, seq: str, scan: int) -> Optional[np.ndarray]:
        """Lidar -> world (the first scan's lidar frame), when poses.txt and calib.txt exist.

        Lidar = ego on KITTI; poses.txt gives cam0 poses, so world <- lidar = inv(Tr) @ pose @ Tr.  ``Tr``
        is inverted as a general matrix (its rotation is not exactly orthonormal), as the SemanticKITTI API
        does.
        """
        poses = self._poses(seq)
        if poses is None or self._calib(seq) is None:
            return None
        if scan >= len(poses):
            raise DataError(f"{self.seq_dir / seq / 'poses.txt'}: no pose for scan {scan} ({len(poses)} poses)")
        tr = _to_4x4(self._calib_key(seq, "Tr"))
        return np.linalg.inv(tr) @ poses[scan] @ tr
