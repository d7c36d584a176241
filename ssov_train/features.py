"""The network input of a scan: per-point features from the sensor's fields (numpy only).

One definition below both training (:mod:`ssov_train.training.data`) and inference (:class:`~ssov_train.inference.
ModelSpec`, hence export and the ROS node), so a deployed model is fed exactly what it was trained on, and the
runtime never imports the training stack to compute it.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import numpy as np

from .errors import ConfigError

# "intensity+1" is the reference's SemanticKITTI input (reflectance in [0, 1], plus 1).
InputFeature = Literal["intensity", "intensity+1"]
INPUT_FEATURES: tuple[str, ...] = get_args(InputFeature)


def point_features(intensity: np.ndarray, feature: InputFeature) -> np.ndarray:
    """(N, 1) float32 network input of a scan for one input feature."""
    if feature not in INPUT_FEATURES:
        raise ConfigError(f"input feature {feature!r} is not one of {INPUT_FEATURES}")
    x = np.asarray(intensity, dtype=np.float32).reshape(-1, 1)
    return x + 1.0 if feature == "intensity+1" else x


def network_input(intensity: np.ndarray, features: Sequence[InputFeature]) -> np.ndarray:
    """(N, len(features)) float32: the input features side by side, in the model's order."""
    return np.concatenate([point_features(intensity, name) for name in features], axis=1)
