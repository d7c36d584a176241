"""Voxelized scans for training and evaluation, and the collate that batches them for spconv.

Three sources of per-voxel supervision, one dataset class:

* ``pseudo``: the per-point pseudo-labels of ``ssov-train superpoints`` (annotation-free training);
* ``gt``: the reader's ground-truth labels (downstream finetuning / linear probing, evaluation);
* ``superpoints``: no labels, but the scan's point <-> superpoint pairings mapped to voxel rows (TMP).

Augmentations act on points *before* voxelization, so :func:`ssov_train.geometry.voxelize.voxelize` stays the
only place that defines the grid.  Their randomness is drawn from ``(seed, epoch, index)`` alone, so a sample
is the same whichever worker loads it, in whichever order, and a resumed run sees the same data as an
uninterrupted one without storing any data-RNG state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..features import InputFeature, IntensityNormalization, point_features
from ..geometry.voxelize import VoxelConfig, voxelize
from ..losses import TMPBatch, batch_superpoints
from ..superpoints import SuperpointSample, load_superpoints, read_manifest, sample_path

LabelSource = Literal["pseudo", "gt", "superpoints"]


@dataclass(frozen=True)
class AugmentConfig:
    """The reference's cloud augmentations (method.md §3/§4): z-rotation U[0, 2 pi) and x / y flips p = 0.5;
    for TMP also DropCuboids: the points inside a random cuboid centred on a random point (half-size per axis =
    the cloud's extent on that axis x u / 2, one u ~ U[0, ``drop_cuboid_max_side``]) are removed, unless that
    leaves a camera with fewer than ``drop_cuboid_min_pairings`` pairings (then another cuboid is drawn, up to
    10 times; after that nothing is dropped)."""

    rotate: bool = True
    flip_x: bool = True
    flip_y: bool = True
    drop_cuboid: bool = False
    drop_cuboid_max_side: float = 0.2
    drop_cuboid_min_pairings: int = 1024
    # Sensor-robust input (see :func:`augment_intensity`): each scan's intensity re-rendered as another sensor
    # would report it (gain, gamma, saturation, quantisation to a 0..1 / 0..255 / 0..65535 scale), and removed
    # altogether (read as 0: the geometry-only input) with probability ``intensity_dropout``.
    intensity_sensor: bool = False
    intensity_gain: float = 2.0  # gain log-uniform in [1/g, g]
    intensity_gamma: float = 1.5  # gamma log-uniform in [1/gamma, gamma]
    intensity_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.intensity_dropout <= 1.0 or self.intensity_gain < 1.0 or self.intensity_gamma < 1.0:
            raise ConfigError(f"augment: intensity_dropout must be in [0, 1], intensity_gain and intensity_gamma "
                              f">= 1, got {self.intensity_dropout}, {self.intensity_gain}, {self.intensity_gamma}")


# Full scales a re-rendered intensity is quantised to: float 0..1 (KITTI-like remission), uint8, uint16
INTENSITY_SCALES = (1.0, 255.0, 65535.0)
# The source scan's 99th percentile lands at this fraction of the full scale at gain 1 (headroom for bright returns)
_INTENSITY_LEVEL = 0.5


def augment_intensity(intensity: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A scan's (N,) intensity as another sensor could report it, or zeros (dropout).

    The source intensity over its 99th percentile (``u``) becomes ``clip(level * gain * u ** gamma, 0, 1)``
    times a full scale drawn from :data:`INTENSITY_SCALES`, rounded to integers on the integer scales: a
    monotone remapping with saturation and quantisation.  The draws happen even when disabled (see
    :func:`augment_points`)."""
    gain = float(np.exp(rng.uniform(-np.log(cfg.intensity_gain), np.log(cfg.intensity_gain))))
    gamma = float(np.exp(rng.uniform(-np.log(cfg.intensity_gamma), np.log(cfg.intensity_gamma))))
    scale = INTENSITY_SCALES[int(rng.integers(len(INTENSITY_SCALES)))]
    drop = rng.random() < cfg.intensity_dropout
    values = np.asarray(intensity, dtype=np.float32)
    if drop:
        return np.zeros_like(values)
    if not cfg.intensity_sensor:
        return values
    finite = np.isfinite(values)
    source = np.where(finite, np.maximum(values, 0.0), 0.0).astype(np.float64)
    high = np.percentile(source, 99) if len(source) else 0.0
    if high <= 0:
        return values
    out = np.clip(_INTENSITY_LEVEL * gain * (source / high) ** gamma, 0.0, 1.0) * scale
    return (np.round(out) if scale > 1 else out).astype(np.float32)


def augment_points(points: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Randomly rotated / flipped copy of (N, 3) points (the draws happen even when disabled, so enabling one
    augmentation never changes another's randomness)."""
    angle, flip_x, flip_y = rng.uniform(0.0, 2.0 * np.pi), rng.random() < 0.5, rng.random() < 0.5
    out = np.array(points, dtype=np.float32, copy=True)
    if cfg.rotate:
        c, s = np.cos(angle), np.sin(angle)
        x, y = out[:, 0].copy(), out[:, 1].copy()
        out[:, 0], out[:, 1] = c * x - s * y, s * x + c * y
    if cfg.flip_x and flip_x:
        out[:, 0] = -out[:, 0]
    if cfg.flip_y and flip_y:
        out[:, 1] = -out[:, 1]
    return out


def drop_cuboid_mask(points: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
                     pair_point: Optional[np.ndarray] = None, pair_camera: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) bool of the points DropCuboids keeps (all True when no cuboid is acceptable)."""
    keep = np.ones(len(points), bool)
    extent = points.max(0) - points.min(0)
    per_camera = None
    if pair_point is not None and len(pair_point):
        per_camera = np.bincount(pair_camera)
        needed = np.minimum(per_camera, cfg.drop_cuboid_min_pairings)
    for _ in range(10):
        centre = points[rng.integers(len(points))]
        half = extent * rng.uniform(0.0, cfg.drop_cuboid_max_side) / 2
        inside = (np.abs(points - centre) <= half).all(1)
        if per_camera is not None:
            kept = np.bincount(pair_camera[~inside[pair_point]], minlength=len(per_camera))
            if (kept < needed).any():
                continue
        keep &= ~inside
        return keep
    return keep


def skip_tokens(tokens: Sequence[str], step: int, reader=None, dataset_kind: str = "nuscenes") -> list[str]:
    """Keep every ``step``-th scene (nuScenes format) or every ``step``-th scan (other formats), as the
    reference's ``dataset_skip_step`` does for 1 % finetuning (method.md §7)."""
    if step < 1:
        raise DataError(f"dataset_skip_step must be >= 1, got {step}")
    if step == 1:
        return list(tokens)
    if dataset_kind != "nuscenes":
        return list(tokens[::step])
    scenes: dict[str, list[str]] = {}
    for t in tokens:  # dicts keep insertion order: scenes in split order
        scenes.setdefault(reader.nusc.get("sample", t)["scene_token"], []).append(t)
    return [t for scene in list(scenes.values())[::step] for t in scene]


# SLidR's held-out pre-training scenes: 100 scenes of nuScenes v1.0-trainval train (CUSTOM_SPLIT in SLidR's
# pretrain/dataloader_nuscenes.py). SLidR and UOV pre-train on train minus these ("parametrizing") and
# validate on them ("verifying"), method.md §3. Scene names only: the list is a fact about the reference.
SLIDR_HOLDOUT_SCENES = tuple(f"scene-{n:04d}" for n in (
    8, 9, 19, 29, 32, 42, 45, 49, 52, 54, 56, 66, 67, 73, 131, 152, 166, 168, 183, 190, 194, 208, 210, 211,
    241, 243, 248, 259, 260, 261, 287, 292, 297, 305, 306, 350, 352, 358, 361, 365, 368, 377, 388, 391, 395, 413,
    427, 428, 438, 444, 452, 453, 459, 463, 464, 475, 513, 533, 544, 575, 587, 589, 642, 652, 658, 669, 678, 687,
    701, 703, 706, 710, 715, 726, 735, 740, 758, 786, 790, 804, 806, 847, 856, 868, 882, 897, 899, 976, 996,
    1012, 1015, 1016, 1018, 1020, 1024, 1044, 1058, 1094, 1098, 1107))


def hold_out_scenes(tokens: Sequence[str], scenes: str | Sequence[str], reader,
                    dataset_kind: str = "nuscenes") -> tuple[list[str], list[str]]:
    """Split sample tokens by scene into (kept, held out), each in the given order.

    ``scenes`` is a list of scene names or ``"slidr"`` (:data:`SLIDR_HOLDOUT_SCENES`). Named scenes must all be
    in ``tokens``; for ``"slidr"`` the ones the dataset lacks are skipped (v1.0-mini holds one of them), but at
    least one must be present. Both parts must be non-empty."""
    if dataset_kind != "nuscenes":
        raise ConfigError(f"holdout_scenes needs a nuScenes-format dataset (scenes), not {dataset_kind!r}")
    reference = isinstance(scenes, str)
    if reference and scenes != "slidr":
        raise ConfigError(f"holdout_scenes: {scenes!r} is neither 'slidr' nor a list of scene names")
    wanted = set(SLIDR_HOLDOUT_SCENES if reference else scenes)
    scene_of = {}
    for t in tokens:
        scene_token = reader.nusc.get("sample", t)["scene_token"]
        scene_of[t] = reader.nusc.get("scene", scene_token)["name"]
    present = set(scene_of.values())
    missing = sorted(wanted - present)
    if (missing and not reference) or not wanted & present:
        raise ConfigError(f"holdout_scenes: {len(missing)} of {len(wanted)} scenes are not in the training split "
                          f"({missing[:5]}{' ...' if len(missing) > 5 else ''})")
    kept = [t for t in tokens if scene_of[t] not in wanted]
    held = [t for t in tokens if scene_of[t] in wanted]
    if not kept:
        raise ConfigError("holdout_scenes holds out every scene of the training split: nothing left to train on")
    return kept, held


def superpoint_tokens(out_dir: Path, split: str) -> list[str]:
    """Tokens of a split that have superpoint files; refuses an empty or missing superpoints output."""
    manifest = read_manifest(out_dir, split)
    tokens = [s["token"] for s in manifest["samples"]]
    if not tokens:
        raise DataError(f"superpoints at {out_dir} for split {split!r} hold no samples")
    return tokens


@dataclass
class VoxelScan:
    """One voxelized scan as the network sees it (plus what evaluation needs to go back to points)."""

    token: str
    coords: np.ndarray  # (V, 3) int32
    features: np.ndarray  # (V, F) float32
    spatial_shape: tuple[int, int, int]
    point_to_voxel: np.ndarray  # (N,) int64
    labels: Optional[np.ndarray] = None  # (V,) int64 voxel labels
    points: Optional[np.ndarray] = None  # (N, 3) un-augmented points (evaluation)
    point_labels: Optional[np.ndarray] = None  # (N,) int64 per-point labels (evaluation)
    superpoints: Optional[SuperpointSample] = None  # TMP: pairings index points of this scan


class ScanDataset(Dataset):
    """Voxelized scans of a token list, labelled by ``label_source`` (see module doc)."""

    def __init__(self, reader, tokens: Sequence[str], voxel: VoxelConfig, feature: InputFeature,
                 label_source: LabelSource, superpoints_dir: Optional[Path] = None,
                 label_rule: Literal["majority", "first"] = "majority", augment: Optional[AugmentConfig] = None,
                 seed: int = 0, keep_points: bool = False,
                 normalization: Optional[IntensityNormalization] = None):
        if label_source != "gt" and superpoints_dir is None:
            raise DataError(f"label source {label_source!r} needs a superpoints directory")
        self.reader = reader
        self.tokens = list(tokens)
        self.voxel = voxel
        self.feature = feature
        self.normalization = normalization
        self.label_source = label_source
        self.superpoints_dir = None if superpoints_dir is None else Path(superpoints_dir)
        self.label_rule = label_rule
        self.augment = augment
        self.seed = seed
        self.keep_points = keep_points
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of epoch ``epoch`` (called by the trainer before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tokens)

    def _superpoints(self, token: str, num_points: int) -> SuperpointSample:
        # pseudo-labels need one (N,) array: the pairings and (S, D) features are not decompressed
        arrays = ("pseudo_label",) if self.label_source == "pseudo" else None
        sp = load_superpoints(sample_path(self.superpoints_dir, token), arrays=arrays)
        if sp.num_points != num_points:
            raise DataError(f"superpoints of {token} have {sp.num_points} points, the scan has {num_points}; "
                            "recompute them for this dataset")
        return sp

    def __getitem__(self, index: int) -> VoxelScan:
        token = self.tokens[index]
        frame = self.reader.load(token)
        points = frame.points
        sp, point_labels = None, None
        if self.label_source == "gt":
            if frame.labels is None:
                raise DataError(f"scan {token} has no ground-truth labels")
            point_labels = frame.labels.astype(np.int64)
        else:
            sp = self._superpoints(token, frame.num_points)
            if self.label_source == "pseudo":
                point_labels = sp.pseudo_label.astype(np.int64)
                sp = None
        keep = None
        intensity = frame.intensity
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            points = augment_points(points, self.augment, rng)
            if self.augment.drop_cuboid:
                keep = drop_cuboid_mask(points, self.augment, rng, *((sp.pair_point, sp.pair_camera) if sp else ()))
            # its own stream: enabling it never changes the geometric augmentations' draws
            intensity = augment_intensity(intensity, self.augment,
                                          np.random.default_rng([self.seed, self.epoch, index, 1]))
        features = point_features(intensity, self.feature, self.normalization)
        if keep is not None:
            points, features = points[keep], features[keep]
            point_labels = None if point_labels is None else point_labels[keep]
        vox = voxelize(points, self.voxel, features=features, labels=point_labels, label_rule=self.label_rule)
        point_to_voxel = vox.point_to_voxel
        if keep is not None:  # dropped points have no voxel: -1, and their pairings are dropped when batching
            point_to_voxel = np.full(frame.num_points, -1, np.int64)
            point_to_voxel[keep] = vox.point_to_voxel
        return VoxelScan(token=token, coords=vox.coords, features=vox.features, spatial_shape=vox.spatial_shape,
                         point_to_voxel=point_to_voxel, labels=vox.labels, superpoints=sp,
                         points=frame.points if self.keep_points else None,
                         point_labels=point_labels if self.keep_points else None)


@dataclass
class VoxelBatch:
    """Several scans stacked for one spconv forward; ``voxel_offsets[i]`` is scan i's first row."""

    features: torch.Tensor  # (V, F) float32
    coords: torch.Tensor  # (V, 3) int32
    batch: torch.Tensor  # (V,) int64 scan index of every voxel
    spatial_shape: list[int]
    scans: list[VoxelScan]
    voxel_offsets: list[int]
    labels: Optional[torch.Tensor] = None  # (V,) int64
    tmp: Optional[TMPBatch] = None  # pairings indexing rows of ``features``

    @property
    def batch_size(self) -> int:
        return len(self.scans)

    def net_inputs(self) -> tuple:
        """Positional arguments of :meth:`MinkUNet.forward`."""
        return self.features, self.coords, self.batch, self.spatial_shape, self.batch_size

    def scan_rows(self, i: int) -> slice:
        return slice(self.voxel_offsets[i], self.voxel_offsets[i] + len(self.scans[i].coords))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "VoxelBatch":
        """This batch with the network's and the losses' tensors on ``device`` (features, indices, labels, TMP
        pairings); ``scans`` stay on the host, where evaluation maps voxel predictions back to points."""
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return dataclasses.replace(self, features=move(self.features), coords=move(self.coords),
                                   batch=move(self.batch), labels=move(self.labels),
                                   tmp=None if self.tmp is None else self.tmp.to(device, non_blocking))

    def pin_memory(self) -> "VoxelBatch":
        """Page-locked copies, so :meth:`to` a GPU can run asynchronously (``DataLoader(pin_memory=True)`` calls
        this in its pinning thread)."""
        def pin(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.pin_memory()

        return dataclasses.replace(self, features=pin(self.features), coords=pin(self.coords), batch=pin(self.batch),
                                   labels=pin(self.labels), tmp=None if self.tmp is None else self.tmp.pin_memory())


def collate_scans(scans: list[VoxelScan]) -> VoxelBatch:
    """Stack scans: batch index per voxel, the element-wise largest spatial shape, TMP pairings offset to the
    batched voxel rows (pairings whose point has no voxel row are dropped by ``batch_superpoints``)."""
    offsets = np.cumsum([0] + [len(s.coords) for s in scans])
    shape = np.max([s.spatial_shape for s in scans], axis=0)
    labels = None
    if all(s.labels is not None for s in scans):
        labels = torch.from_numpy(np.concatenate([s.labels for s in scans]).astype(np.int64))
    tmp = None
    if all(s.superpoints is not None for s in scans):
        tmp = batch_superpoints([s.superpoints for s in scans],
                                [np.where(s.point_to_voxel >= 0, s.point_to_voxel + offsets[i], -1)
                                 for i, s in enumerate(scans)])
    return VoxelBatch(
        features=torch.from_numpy(np.concatenate([s.features for s in scans])),
        coords=torch.from_numpy(np.concatenate([s.coords for s in scans])),
        batch=torch.from_numpy(np.repeat(np.arange(len(scans)), np.diff(offsets))),
        spatial_shape=[int(x) for x in shape], scans=scans, voxel_offsets=[int(o) for o in offsets[:-1]],
        labels=labels, tmp=tmp)
