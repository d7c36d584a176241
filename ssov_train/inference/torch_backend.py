"""The ``torch`` backend: the training model itself (spconv) from an ``ssov-checkpoint``.

A module of its own, imported by :func:`~ssov_train.inference.open_backend` only when the torch backend is asked
for, so that torch, spconv and the training code stay out of a runtime that runs exported packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..openvocab.query import checkpoint_teacher
from ..training.checkpoint import load_model
from .backends import Backend
from .spec import ModelSpec


class TorchBackend(Backend):
    """The training model itself (spconv, CPU or CUDA) loaded from an ``ssov-checkpoint``."""

    name = "torch"

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None):
        model, ckpt = load_model(path)
        self.spec = ModelSpec.from_checkpoint(ckpt, str(path))
        self.path = Path(path)
        self.text_embeddings = checkpoint_teacher(ckpt)
        if threads:
            torch.set_num_threads(int(threads))
        if device != "cpu" and not torch.cuda.is_available():
            raise ConfigError(f"torch backend: device {device!r} requested but CUDA is not available")
        self.device = torch.device(device)
        self.model = model
        self.model.to(self.device).eval()

    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.int32)).to(self.device)
        b = torch.zeros(len(c), dtype=torch.int32, device=self.device)
        with torch.inference_mode():
            out = self.model(f, c, b, list(spatial_shape), 1)
        return out.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self.device}, {self.path.name})"
