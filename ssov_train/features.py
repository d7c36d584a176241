"""The network input of a scan: per-point features from the sensor's fields (numpy only).

One definition below both training (:mod:`ssov_train.training.data`) and inference (:class:`~ssov_train.inference.
ModelSpec`, hence export and the ROS node), so a deployed model is fed exactly what it was trained on, and the
runtime never imports the training stack to compute it.

Input features (a model's ``input_fields``; each gives one or more columns, :data:`FEATURE_CHANNELS`):

* ``intensity``: the raw intensity, on whatever scale the training sensor used (nuScenes 0..255);
* ``intensity+1``: the reference's SemanticKITTI input (reflectance in [0, 1], plus 1);
* ``normalized_intensity``: sensor-robust, two columns.  Column 0 is the intensity divided by the cloud's own
  robust high value (its ``percentile``-th percentile) and clipped to [0, ``clip``], so a cloud on 0..1, 0..255
  or 0..65535 gives the same numbers; column 1 is 1 when the cloud has usable intensity and 0 when it has
  none (no intensity field, all zero, constant): then column 0 is 0 too and the model runs on geometry
  alone.  The percentile and clip (:class:`IntensityNormalization`) travel in the model file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, get_args

import numpy as np

from .errors import ConfigError

InputFeature = Literal["intensity", "intensity+1", "normalized_intensity"]
INPUT_FEATURES: tuple[str, ...] = get_args(InputFeature)
FEATURE_CHANNELS = {"intensity": 1, "intensity+1": 1, "normalized_intensity": 2}
# features that do not depend on the intensity's scale: such a model needs no input.intensity_scale
SCALE_INVARIANT_FEATURES = frozenset({"normalized_intensity"})


@dataclass(frozen=True)
class IntensityNormalization:
    """Per-cloud intensity normalisation of ``normalized_intensity`` (model-bound: stored in the model file).

    The 99th percentile ignores the few saturated returns (retro-reflective signs, plates) a maximum would
    follow; values above it (up to ``clip``) keep those returns distinguishable."""

    percentile: float = 99.0
    clip: float = 1.5

    def check(self) -> None:
        if not 50.0 <= self.percentile <= 100.0 or not self.clip >= 1.0:
            raise ConfigError(f"intensity normalisation needs percentile in [50, 100] and clip >= 1, got "
                              f"percentile={self.percentile}, clip={self.clip}")

    def to_dict(self) -> dict:
        return {"percentile": float(self.percentile), "clip": float(self.clip)}

    @classmethod
    def from_dict(cls, d: Optional[dict], source: str = "model") -> Optional["IntensityNormalization"]:
        if d is None:
            return None
        if not isinstance(d, dict) or set(d) != {"percentile", "clip"}:
            raise ConfigError(f"{source}: input_normalization must be {{percentile, clip}}, got {d!r}")
        out = cls(float(d["percentile"]), float(d["clip"]))
        out.check()
        return out


def feature_channels(features: Sequence[str]) -> int:
    """Network input channels of these input features."""
    check_features(features)
    return sum(FEATURE_CHANNELS[name] for name in features)


def check_features(features: Sequence[str], normalization: Optional[IntensityNormalization] = None,
                   require_normalization: bool = False) -> None:
    for name in features:
        if name not in INPUT_FEATURES:
            raise ConfigError(f"input feature {name!r} is not one of {INPUT_FEATURES}")
    if require_normalization and "normalized_intensity" in features and normalization is None:
        raise ConfigError("input feature 'normalized_intensity' needs its input_normalization (percentile, clip) "
                          "in the model file")


def is_scale_invariant(features: Sequence[str]) -> bool:
    """True when no input feature depends on the intensity's scale (no ``input.intensity_scale`` to tune)."""
    return all(name in SCALE_INVARIANT_FEATURES for name in features)


def missing_intensity_reason(intensity: Optional[np.ndarray], percentile: float = 99.0) -> str:
    """Why a cloud's intensity carries no information, or "" when it does: absent (None), no finite value,
    constant (many drivers fill a missing field with 0), or zero on more than ``100 - percentile`` % of the
    points (nothing to normalise by)."""
    return _intensity_reference(intensity, percentile)[0]


def _intensity_reference(intensity: Optional[np.ndarray], percentile: float) -> tuple[str, float]:
    """(why the intensity is unusable or "", the percentile of its finite values clipped at 0 that normalises
    it): one pass, shared by the check and the normalisation."""
    if intensity is None:
        return "no intensity field", 0.0
    values = np.asarray(intensity, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "no finite intensity", 0.0
    low, high = values.min(), values.max()
    if low == high:
        return f"constant intensity ({low:g})", 0.0
    reference = float(np.percentile(np.maximum(values, 0.0), percentile))
    if reference <= 0:
        return f"intensity 0 on more than {100 - percentile:g}% of the points", 0.0
    return "", reference


def normalized_intensity(intensity: Optional[np.ndarray], norm: IntensityNormalization,
                         num_points: Optional[int] = None) -> np.ndarray:
    """(N, 2) float32 ``[intensity / cloud percentile clipped to [0, clip], intensity present]``; without usable
    intensity (see :func:`missing_intensity_reason`) both columns are 0."""
    n = len(intensity) if intensity is not None else int(num_points or 0)
    out = np.zeros((n, 2), np.float32)
    why, high = _intensity_reference(intensity, norm.percentile)
    if why:
        return out
    values = np.asarray(intensity, dtype=np.float64).ravel()
    values = np.where(np.isfinite(values), np.maximum(values, 0.0), 0.0)
    out[:, 0] = np.minimum(values / high, norm.clip)
    out[:, 1] = 1.0
    return out


def point_features(intensity: Optional[np.ndarray], feature: InputFeature,
                   normalization: Optional[IntensityNormalization] = None,
                   num_points: Optional[int] = None) -> np.ndarray:
    """(N, channels) float32 network input of a scan for one input feature; ``intensity`` None = the cloud has
    none (``num_points`` then gives N): raw features read it as zeros, ``normalized_intensity`` as absent."""
    check_features([feature], normalization, require_normalization=True)
    if feature == "normalized_intensity":
        return normalized_intensity(intensity, normalization, num_points)
    if intensity is None:
        x = np.zeros((int(num_points or 0), 1), np.float32)
    else:
        x = np.asarray(intensity, dtype=np.float32).reshape(-1, 1)
    return x + 1.0 if feature == "intensity+1" else x


def network_input(intensity: Optional[np.ndarray], features: Sequence[InputFeature],
                  normalization: Optional[IntensityNormalization] = None,
                  num_points: Optional[int] = None) -> np.ndarray:
    """(N, channels) float32: the input features side by side, in the model's order."""
    return np.concatenate([point_features(intensity, name, normalization, num_points) for name in features],
                          axis=1)
