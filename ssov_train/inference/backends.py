"""Backends: run the network on one voxelized scan.

A backend is chosen by name; every backend returns the same per-voxel outputs for the same input (the
export parity tests hold them to that).  Names map to ``module:attribute`` factories imported on first use, so
``ssov_train`` never imports onnxruntime or TensorRT unless asked to:

==============  ===============================================  =======================================
name            factory                                          model file
==============  ===============================================  =======================================
torch           ssov_train.inference.torch_backend:TorchBackend  ``*.pt`` ssov-checkpoint
onnxruntime     ssov_export.onnx_backend:OnnxRuntimeBackend      exported model package (ONNX + sidecar)
tensorrt        ssov_export.tensorrt_backend:TensorRTBackend     exported model package (engine cache)
cpu-gemm        ssov_export.gemm_backend:GemmBackend             ``*.pt`` or package (``weights_cpu.npz``)
==============  ===============================================  =======================================

The runtime (an exported package on onnxruntime / TensorRT) therefore needs neither torch nor the training
stack: only the ``torch`` backend imports them.
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
    "torch": "ssov_train.inference.torch_backend:TorchBackend",
    "onnxruntime": "ssov_export.onnx_backend:OnnxRuntimeBackend",
    "tensorrt": "ssov_export.tensorrt_backend:TensorRTBackend",
    "cpu-gemm": "ssov_export.gemm_backend:GemmBackend",
}


class Backend(ABC):
    """Runs one model on one scan.  ``spec`` describes its input and output."""

    name: str = "?"
    spec: ModelSpec
    # feature models: the text embeddings the model file names (an embedding table or a teacher-output directory,
    # what :meth:`~ssov_train.openvocab.query.EmbeddingTable.load` reads), for text queries; None when it names none
    text_embeddings: Optional[Path] = None
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
            hint = (" (a slim runtime runs exported model packages: `ssov-export onnx --checkpoint ...` where torch "
                    "is installed)" if name == "torch" else "")
            raise ConfigError(f"inference backend {name!r} is not available here: {exc}{hint}") from exc
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
