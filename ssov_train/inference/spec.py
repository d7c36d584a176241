"""Model-bound parameters: what a consumer must know to feed a model and read its output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import ConfigError
from ..features import IntensityNormalization, check_features, feature_channels, is_scale_invariant, network_input
from ..geometry.voxelize import VoxelConfig


@dataclass(frozen=True)
class ModelSpec:
    """Classes, palette, voxel grid and input of a model; identical whether it comes from an
    ``ssov-checkpoint`` or an exported model package (the package's sidecar stores :meth:`to_dict`)."""

    class_names: tuple[str, ...]  # index 0 is "ignore" (never predicted)
    palette: np.ndarray  # (C, 3) uint8
    voxel: VoxelConfig
    input_fields: tuple[str, ...]  # per-point network inputs, e.g. ("intensity",)
    model: dict  # MinkUNetConfig fields (arch, width, in_channels, out_channels, ...)
    stage: str = "annotation_free"
    vocabulary: str = ""
    feature_dim: Optional[int] = None  # set for TMP (feature-head) models
    # per-cloud intensity normalisation of the "normalized_intensity" input (None for raw-intensity models)
    input_normalization: Optional[IntensityNormalization] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette, dtype=np.int64)
        if palette.ndim != 2 or palette.shape[1] != 3 or palette.min() < 0 or palette.max() > 255:
            raise ConfigError(f"model palette must be (C, 3) in 0..255, got shape {palette.shape}")
        object.__setattr__(self, "palette", palette.astype(np.uint8))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "input_fields", tuple(self.input_fields))
        if self.has_classes and len(self.class_names) != len(self.palette):
            raise ConfigError(f"model has {len(self.class_names)} classes but {len(self.palette)} palette colours")
        try:
            check_features(self.input_fields, self.input_normalization, require_normalization=True)
        except ConfigError as exc:
            raise ConfigError(f"model input: {exc}") from exc
        if int(self.model.get("in_channels", feature_channels(self.input_fields))) != feature_channels(
                self.input_fields):
            raise ConfigError(f"model takes {self.model.get('in_channels')} input channels but its input fields "
                              f"{list(self.input_fields)} give {feature_channels(self.input_fields)}")
        if self.has_classes and int(self.model.get("out_channels", -1)) != len(self.class_names):
            raise ConfigError(f"model outputs {self.model.get('out_channels')} channels for "
                              f"{len(self.class_names)} classes")

    @property
    def has_classes(self) -> bool:
        """True for class models (annotation-free, downstream); TMP models output features instead."""
        return self.stage != "pretrain"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return feature_channels(self.input_fields)

    @property
    def scale_invariant(self) -> bool:
        """True when the input does not depend on the intensity's scale (``input.intensity_scale`` is moot)."""
        return is_scale_invariant(self.input_fields)

    def point_features(self, intensity: Optional[np.ndarray], num_points: Optional[int] = None) -> np.ndarray:
        """(N, in_channels) float32 network input from per-point intensity, exactly as training computed it;
        ``intensity`` None: the cloud has none (``num_points`` points)."""
        return network_input(intensity, self.input_fields, self.input_normalization, num_points)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str = "checkpoint") -> "ModelSpec":
        missing = [k for k in ("class_names", "palette", "voxel", "input_fields", "model") if k not in ckpt]
        if missing:
            raise ConfigError(f"{source} lacks model-bound fields {missing}: not a model checkpoint")
        voxel = ckpt["voxel"]
        return cls(class_names=ckpt["class_names"], palette=np.asarray(ckpt["palette"]),
                   voxel=VoxelConfig(voxel["mode"], tuple(voxel["size"]) if voxel.get("size") else None),
                   input_fields=tuple(ckpt["input_fields"]), model=dict(ckpt["model"]),
                   stage=str(ckpt.get("stage", "annotation_free")), vocabulary=str(ckpt.get("vocabulary", "")),
                   feature_dim=ckpt.get("feature_dim"),
                   input_normalization=IntensityNormalization.from_dict(ckpt.get("input_normalization"), source))

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "palette": self.palette.tolist(),
                "voxel": {"mode": self.voxel.mode, "size": list(self.voxel.size)},
                "input_fields": list(self.input_fields), "model": dict(self.model), "stage": self.stage,
                "vocabulary": self.vocabulary, "feature_dim": self.feature_dim,
                "input_normalization": (None if self.input_normalization is None
                                        else self.input_normalization.to_dict())}

    @classmethod
    def from_dict(cls, d: dict, source: str = "model package") -> "ModelSpec":
        return cls.from_checkpoint(d, source)
