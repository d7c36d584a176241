"""Points in, labels out: the inference pipeline of one scan, used alike by the node, export and benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..afi import AFIConfig, StreamingAFI, TemporalConfig
from ..errors import ConfigError, DataError
from ..geometry.voxelize import nearest_voxels, voxelize
from .backends import Backend

# What AFI refines: the labels as one-hot vectors (the reference's input) or the softmax probabilities
AFI_INPUTS = ("labels", "probabilities")
IGNORE_LOGIT = -1e6  # class 0 ("ignore") is never predicted, as in training-time evaluation


@dataclass
class Segmentation:
    """Result for the N finite input points."""

    labels: Optional[np.ndarray]  # (N,) int64 class ids (1..C-1); None for feature models
    scores: Optional[np.ndarray]  # (N,) float32 probability of the label
    probs: Optional[np.ndarray] = None  # (N, C) float32, when asked for
    features: Optional[np.ndarray] = None  # (N, D) float32 for feature (TMP) models
    num_voxels: int = 0
    timings_ms: dict = field(default_factory=dict)  # stage -> milliseconds


@dataclass
class Inferred:
    """What :meth:`Segmenter.infer` hands to :meth:`Segmenter.refine`: the network's view of one scan."""

    xyz: np.ndarray  # (N, 3) float32 input points (AFI needs them)
    probs: Optional[np.ndarray]  # (N, C) float32 class probabilities (class 0 suppressed); None for feature models
    features: Optional[np.ndarray]  # (N, D) float32 for feature (TMP) models
    num_voxels: int
    timings_ms: dict  # stage -> milliseconds of voxelize, network (kernel maps), softmax
    # the voxel budget (Segmenter max_voxels): indices of the points segmented (xyz/probs/features hold those
    # only) among num_points; None: every point
    kept: Optional[np.ndarray] = None
    num_points: int = 0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(1, keepdims=True)
    return z


def class_probs(logits: np.ndarray) -> np.ndarray:
    """(V, C) class probabilities of per-voxel logits, class 0 ("ignore") suppressed: what every inference
    path predicts from."""
    logits = np.array(logits, dtype=np.float32)
    logits[:, 0] = IGNORE_LOGIT
    return softmax(logits)


class Segmenter:
    """Wraps a :class:`Backend` with the input features, the voxelizer and AFI.

    ``afi``: None turns AFI off; ``afi_input`` is what it refines: ``"labels"`` (the network's labels as one-hot
    vectors, as the reference feeds AFI) or ``"probabilities"`` (the softmax).  ``max_voxels`` is the budget of dense sensors: a scan with more voxels keeps
    the ``max_voxels`` nearest (:func:`~ssov_train.geometry.voxelize.nearest_voxels`, a per-scan range cut); the
    points beyond get label 0 ("ignore": not segmented) and score 0 (docs/performance.md "Scale").  With ``temporal`` set, AFI is streaming (:class:`StreamingAFI`): frames given a
    ``pose`` vote for their successors; without a pose a frame is refined on its own.

    :meth:`segment` is :meth:`infer` (network, backend state only) then :meth:`refine` (AFI, AFI state only): the
    halves may run on two threads, one frame apart (:class:`~ssov_train.inference.PipelinedSegmenter`).
    """

    def __init__(self, backend: Backend, afi: Optional[AFIConfig] = None,
                 temporal: Optional[TemporalConfig] = None, max_voxels: Optional[int] = None,
                 afi_input: str = "labels"):
        if max_voxels is not None and int(max_voxels) < 1:
            raise ConfigError(f"max_voxels must be >= 1 (or None: no budget), got {max_voxels}")
        self.afi_input = afi_input  # read once per frame: may be changed while frames run
        self.max_voxels = None if max_voxels is None else int(max_voxels)
        self.backend = backend
        self.spec = backend.spec
        self.afi: Optional[StreamingAFI] = self.build_afi(afi, temporal)

    @property
    def afi_input(self) -> str:
        return self._afi_input

    @afi_input.setter
    def afi_input(self, value: str) -> None:
        if value not in AFI_INPUTS:
            raise ConfigError(f"AFI input {value!r} is not one of {AFI_INPUTS}")
        self._afi_input = value

    def build_afi(self, afi: Optional[AFIConfig], temporal: Optional[TemporalConfig] = None
                  ) -> Optional[StreamingAFI]:
        """The AFI stage for this model (None: off).  Assigning the result to :attr:`afi` while frames run is
        safe (refine reads it once per frame); the new stage starts with an empty history."""
        if afi is None or not self.spec.has_classes:
            return None
        return StreamingAFI(afi, num_classes=self.spec.num_classes, temporal=temporal or TemporalConfig(history=0),
                            dictionary=self.spec.vocabulary or afi.dictionary)

    def reset(self) -> None:
        """Forget the streaming history (time jump, new bag, relocalisation)."""
        afi = self.afi
        if afi is not None:
            afi.reset()

    def warm_up(self, num_points: int = 4096) -> float:
        """Segment a synthetic scan once (a ground ring and a wall, as a lidar sees them) so that the one-off
        costs of the first call (session and thread-pool set-up, memory arenas, AFI's compiled kernels: numba
        compiles them on a machine's first run and loads them from its cache after) are paid
        now, not by the first real scan; the streaming history is reset afterwards.  Returns milliseconds."""
        t = time.perf_counter()
        rng = np.random.default_rng(0)
        n_ground = num_points * 3 // 4
        r, a = rng.uniform(3.0, 40.0, n_ground), rng.uniform(-np.pi, np.pi, n_ground)
        ground = np.c_[r * np.cos(a), r * np.sin(a), np.full(n_ground, -1.8) + rng.normal(0, 0.02, n_ground)]
        n_wall = num_points - n_ground
        wall = np.c_[np.full(n_wall, 12.0), rng.uniform(-10.0, 10.0, n_wall), rng.uniform(-1.8, 2.0, n_wall)]
        xyz = np.concatenate([ground, wall]).astype(np.float32)
        self.segment(xyz, rng.uniform(0.0, 60.0, len(xyz)).astype(np.float32), keep_probs=True)
        self.reset()
        return _ms(t)

    def segment(self, xyz: np.ndarray, intensity: Optional[np.ndarray] = None, pose: Optional[np.ndarray] = None,
                keep_probs: bool = False) -> Segmentation:
        """Segment one scan: ``xyz`` (N, 3) finite sensor-frame coordinates, ``intensity`` (N,) (zeros if None),
        ``pose`` the 4x4 sensor -> fixed-frame transform for streaming AFI.  The same as
        ``refine(infer(xyz, intensity), pose, keep_probs)``."""
        return self.refine(self.infer(xyz, intensity), pose=pose, keep_probs=keep_probs)

    def infer(self, xyz: np.ndarray, intensity: Optional[np.ndarray] = None) -> Inferred:
        """The first half of :meth:`segment`: checks, voxelizer, network (kernel maps included), softmax.
        Touches only the backend, never the AFI state, so it may run while another thread runs :meth:`refine`."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise DataError(f"segment: xyz must be (N, 3), got {xyz.shape}")
        if len(xyz) == 0:
            raise DataError("segment: empty point cloud")
        if intensity is not None:
            intensity = np.asarray(intensity, np.float32)
            if intensity.shape != (len(xyz),):
                raise DataError(f"segment: intensity must be ({len(xyz)},), got {intensity.shape}")
        feats = self.spec.point_features(intensity, num_points=len(xyz))
        vox = voxelize(xyz, self.spec.voxel, features=feats)
        num_points, kept = len(xyz), None
        if self.max_voxels is not None and vox.num_voxels > self.max_voxels:
            vox, kept = nearest_voxels(vox, xyz, self.max_voxels)
            xyz = xyz[kept]
        timings["voxelize"] = _ms(t)

        t = time.perf_counter()
        out = self.backend.run(vox.features, vox.coords, vox.spatial_shape)
        timings["network"] = _ms(t)
        # backends that compute kernel maps outside the network (ssov_export/) report them as a stage of their own
        timings.update(self.backend.last_timings_ms)
        if out.shape[0] != vox.num_voxels:
            raise DataError(f"backend {self.backend.name} returned {out.shape[0]} rows for {vox.num_voxels} voxels")

        if not self.spec.has_classes:
            return Inferred(xyz, None, out[vox.point_to_voxel], vox.num_voxels, timings, kept, num_points)
        t = time.perf_counter()
        probs = class_probs(out)[vox.point_to_voxel]
        timings["softmax"] = _ms(t)
        return Inferred(xyz, probs, None, vox.num_voxels, timings, kept, num_points)

    def refine(self, inferred: Inferred, pose: Optional[np.ndarray] = None,
               keep_probs: bool = False) -> Segmentation:
        """The second half of :meth:`segment`: (streaming) AFI, labels and scores.  Frames must be refined in
        the order they were taken: streaming AFI keeps the previous ones."""
        timings = dict(inferred.timings_ms)
        if inferred.probs is None:
            return Segmentation(None, None, features=_all_points(inferred, inferred.features),
                                num_voxels=inferred.num_voxels, timings_ms=timings)
        probs = inferred.probs
        afi = self.afi  # read once: another thread may swap it (build_afi)
        if afi is not None:
            t = time.perf_counter()
            prediction = probs.argmax(1) if self._afi_input == "labels" else probs
            labels, probs = afi.update(inferred.xyz, prediction, pose=pose)
            timings["afi"] = _ms(t)
        else:
            labels = probs.argmax(1)
        scores = probs[np.arange(len(labels)), labels].astype(np.float32)
        return Segmentation(_all_points(inferred, labels.astype(np.int64)), _all_points(inferred, scores),
                            _all_points(inferred, probs) if keep_probs else None,
                            num_voxels=inferred.num_voxels, timings_ms=timings)


def _all_points(inferred: Inferred, values: np.ndarray) -> np.ndarray:
    """Per-point values over every input point: zeros (label 0, score 0) for points the voxel budget left out."""
    if inferred.kept is None:
        return values
    out = np.zeros((inferred.num_points, *values.shape[1:]), values.dtype)
    out[inferred.kept] = values
    return out


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
