"""Dataset readers, all producing :class:`Frame` objects, and the dataset section of stage configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Protocol

from ..errors import ConfigError
from .frame import CameraView, Frame

__all__ = ["CameraView", "Frame", "DatasetConfig", "DatasetReader", "open_dataset"]


class DatasetReader(Protocol):
    def split_tokens(self, split: str) -> list[str]: ...

    def load(self, token: str) -> Frame: ...


@dataclass
class DatasetConfig:
    # nuscenes: the devkit layout (v1.0-mini / v1.0-trainval, and the synthetic worlds, which are written in
    # that format); semantickitti: sequences/NN/{velodyne,labels}; sample: the single-sample layout.
    kind: Literal["nuscenes", "semantickitti", "sample"]
    root: Path
    version: str = "v1.0-mini"
    split: str = "train"
    cameras: Optional[list[str]] = None

    def check(self) -> None:
        if not str(self.root):
            raise ValueError("dataset.root must not be empty")


def open_dataset(cfg: DatasetConfig, dictionary=None) -> DatasetReader:
    """The reader for a dataset section; a missing root gives one clear error naming it."""
    if not Path(cfg.root).exists():
        raise ConfigError(f"dataset.root {cfg.root} does not exist" + (
            " (generate a synthetic world with `ssov-train synth --out <dir>`)" if "synth" in str(cfg.root) else ""))
    if cfg.kind == "nuscenes":
        from .nuscenes import NuScenesReader

        return NuScenesReader(cfg.root, version=cfg.version, dictionary=dictionary, cameras=cfg.cameras)
    if cfg.kind == "semantickitti":
        from .semantickitti import SemanticKittiReader

        return SemanticKittiReader(cfg.root, dictionary=dictionary)
    from .sample import SampleReader

    return SampleReader(cfg.root, dictionary=dictionary)
