"""Backends: run the network on one voxelized scan.

A backend is chosen by name; every backend returns the same per-voxel outputs for the same input (the
export parity tests hold them to that).  Names map to ``module:attribute`` factories imported on first use, so
``ssov_train`` never imports onnxruntime or TensorRT unless asked to:

==============  ==========================================  ======================================
name            factory                                     model file
==============  ==========================================  ======================================
torch           ssov_train.inference.backends:TorchBackend  ``*.pt`` ssov-checkpoint
onnxruntime     ssov_export.onnx_backend:OnnxRuntimeBackend      exported model package (ONNX + sidecar)
tensorrt        ssov_export.tensorrt_backend:TensorRTBackend     exported model package (engine cache)
==============  ==========================================  ======================================
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .spec import ModelSpec

_FACTORIES: dict[str, str | Callable[..., "Backend"]] = {
    "torch": "ssov_train.inference.backends:TorchBackend",
    "onnxruntime": "ssov_export.onnx_backend:OnnxRuntimeBackend",
    "tensorrt": "ssov_export.tensorrt_backend:TensorRTBackend",
}


class Backend(ABC):
    """Runs one model on one scan.  ``spec`` describes its input and output."""

    name: str = "?"
    spec: ModelSpec
    # stages a backend times inside run() besides the network (export's kernel maps); replaced, never mutated
    last_timings_ms: dict[str, float] = {}

    @abstractmethod
    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        """Per-voxel outputs (V, out_channels) float32 for ``features`` (V, in_channels) float32 and ``coords``
        (V, 3) int32 non-negative grid indices (as :func:`~ssov_train.geometry.voxelize.voxelize` gives)."""

    def close(self) -> None:
        """Release resources (sessions, engines); the default has none."""

    def describe(self) -> str:
        return self.name


def register_backend(name: str, factory: str | Callable[..., Backend]) -> None:
    """Make ``name`` selectable in :func:`open_backend`: a callable ``factory(path, **options)`` or a
    ``"module:attribute"`` string imported on first use."""
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def _factory(name: str) -> Callable[..., Backend]:
    if name not in _FACTORIES:
        raise ConfigError(f"unknown inference backend {name!r}; choose one of {available_backends()}")
    factory = _FACTORIES[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ConfigError(f"inference backend {name!r} is not available here: {exc}") from exc
    return factory


def default_backend(path: str | Path) -> str:
    """``torch`` for an ssov-checkpoint (``*.pt``), ``onnxruntime`` for an exported model package."""
    return "torch" if Path(path).suffix == ".pt" else "onnxruntime"


def open_backend(path: str | Path, backend: str = "auto", **options) -> Backend:
    """Open the model file at ``path`` with the named backend (``auto``: by file type)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"model file not found: {path}")
    name = default_backend(path) if backend == "auto" else backend
    return _factory(name)(path, **options)


class TorchBackend(Backend):
    """The training model itself (spconv, CPU or CUDA) loaded from an ``ssov-checkpoint``."""

    name = "torch"

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None):
        import torch

        from ..training.checkpoint import load_model

        model, ckpt = load_model(path)
        self.spec = ModelSpec.from_checkpoint(ckpt, str(path))
        self.path = Path(path)
        if threads:
            torch.set_num_threads(int(threads))
        if device != "cpu" and not torch.cuda.is_available():
            raise ConfigError(f"torch backend: device {device!r} requested but CUDA is not available")
        self.device = torch.device(device)
        self.model = model
        self.model.to(self.device).eval()

    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        import torch

        f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.int32)).to(self.device)
        b = torch.zeros(len(c), dtype=torch.int32, device=self.device)
        with torch.inference_mode():
            out = self.model(f, c, b, list(spatial_shape), 1)
        return out.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self.device}, {self.path.name})"
