"""Multi-view fusion of 2D teacher features onto lidar points (OpenScene §3.1, with the occlusion test).

For every point, the features of the teacher pixels it projects to are averaged over the cameras that see it
and L2-normalised.  ``source: mask`` takes the feature of the mask under the pixel (every teacher with
features has these: CAT-Seg, SAN, FC-CLIP, the open_clip teacher); ``source: pixel`` the per-pixel features a
teacher stored as ``dense_features`` (the open_clip teacher with ``store_dense_features: true``).  Unlike
OpenScene, projection goes through the one projection module with its z-buffer test, so a point hidden behind
a nearer object does not take that object's feature; points outside every camera (or every mask) get none.

Stored like superpoints: ``<out>/samples/<sample token>.npz`` (``point_index`` (M,) int32 of the points with a
feature, ``features`` (M, D) float16, ``num_views`` (M,) uint8, ``meta``) and ``<out>/manifest_<split>.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from ..data.frame import Frame
from ..errors import DataError
from ..geometry.projection import ProjectionConfig, project_to_camera
from ..io import load_npz_with_meta, save_npz_atomic
from ..superpoints import RunResult, _teacher_pixel, run_per_sample
from ..teachers.format import TeacherSource, TeacherStore

FORMAT_NAME = "ssov-fused-features"
FORMAT_VERSION = 1
FeatureSource = Literal["mask", "pixel"]


@dataclass
class FusedSample:
    token: str
    num_points: int
    point_index: np.ndarray  # (M,) int32 points that received a feature
    features: np.ndarray  # (M, D) float16/32, L2-normalised mean over the views
    num_views: np.ndarray  # (M,) uint8 cameras that contributed

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) float32 features (zeros where none) and the (N,) bool mask of points that have one."""
        out = np.zeros((self.num_points, self.features.shape[1]), np.float32)
        out[self.point_index] = self.features
        has = np.zeros(self.num_points, bool)
        has[self.point_index] = True
        return out, has


def fuse_frame(frame: Frame, teacher: TeacherSource, projection: ProjectionConfig,
               source: FeatureSource = "mask") -> FusedSample:
    """Per-point mean (over cameras, occlusion-tested) of the teacher's mask or pixel features."""
    if source == "pixel" and not isinstance(teacher, TeacherStore):
        raise DataError(f"teacher {teacher.name} ({type(teacher).__name__}) stores no per-pixel features; "
                        "use source: mask")
    n = frame.num_points
    sums: Optional[np.ndarray] = None
    views = np.zeros(n, np.int64)
    for cam in frame.cameras:
        if not teacher.has(cam.token):
            raise DataError(f"teacher {teacher.name} has no output for {cam.name} image {cam.token}")
        out = teacher.load(cam.token, dense=True) if source == "pixel" else teacher.load(cam.token)
        proj, _ = project_to_camera(frame.points, cam, projection)
        rc = proj.pixel_rc
        if source == "mask":
            if out.features is None:
                raise DataError(f"teacher {teacher.name} stores no mask features (image {cam.token})")
            r, c = _teacher_pixel(rc, (cam.height, cam.width), out.mask_ids.shape)
            mask = out.mask_ids[r, c].astype(np.int64)
            hit = mask > 0
            idx, feats = proj.point_index[hit], out.features[mask[hit] - 1]
        else:
            if out.dense_features is None:
                raise DataError(f"teacher {teacher.name} stores no per-pixel features (image {cam.token}); "
                                "use source: mask, or a teacher run with store_dense_features")
            r, c = _teacher_pixel(rc, (cam.height, cam.width), out.dense_features.shape[:2])
            idx, feats = proj.point_index, out.dense_features[r, c]
        if sums is None:
            sums = np.zeros((n, feats.shape[1]), np.float64)
        sums[idx] += feats  # a camera sees each point at most once (idx is unique), as views[idx] += 1 assumes
        views[idx] += 1
    seen = np.flatnonzero(views > 0)
    if sums is None or not len(seen):
        dim = teacher.feature_dim or 0
        return FusedSample(frame.token, n, np.zeros(0, np.int32), np.zeros((0, dim), np.float16), np.zeros(0, np.uint8))
    mean = sums[seen] / views[seen, None]
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return FusedSample(frame.token, n, seen.astype(np.int32), mean.astype(np.float16),
                       np.minimum(views[seen], 255).astype(np.uint8))


def save_fused(path: str | Path, sample: FusedSample, source: str) -> None:
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "token": sample.token, "num_points": sample.num_points,
            "source": source}
    save_npz_atomic(path, point_index=sample.point_index, features=sample.features.astype(np.float16),
                    num_views=sample.num_views, meta=np.array(json.dumps(meta)))


def load_fused(path: str | Path) -> FusedSample:
    meta, z = load_npz_with_meta(path, "fused features", FORMAT_NAME, FORMAT_VERSION,
                                 ("point_index", "features", "num_views"))
    missing = [k for k, v in z.items() if v is None]
    if missing:
        raise DataError(f"fused features file {path} lacks the arrays {missing}")
    sample = FusedSample(meta["token"], int(meta["num_points"]), z["point_index"], z["features"], z["num_views"])
    return sample


@dataclass
class FusionRun:
    source: FeatureSource = "mask"
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)


def run_fusion(reader, tokens: list[str], teacher: TeacherSource, out_dir: str | Path, run: FusionRun,
               split: str = "all", shard: tuple[int, int] = (0, 1), overwrite: bool = False,
               progress: bool = True) -> RunResult:
    """Fuse and store features for this shard of ``tokens``: resumable, bad samples listed, manifest per split."""
    settings = {"format": FORMAT_NAME, "teacher": teacher.name, "source": run.source,
                "projection": asdict(run.projection)}

    def compute(token: str, path: Path) -> None:
        save_fused(path, fuse_frame(reader.load(token), teacher, run.projection, run.source), run.source)

    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": split, "teacher": teacher.name,
            "source": run.source}
    return run_per_sample(tokens, compute, out_dir, settings, info, "fused features", split, shard, overwrite,
                          progress)
