"""onnxruntime backend: runs a model package's ONNX graph (CPU, or the CUDA execution provider)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ssov_train.errors import ConfigError, DataError
from ssov_train.inference.backends import Backend

from .kernel_maps import build_kernel_maps
from .package import load_package

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeBackend(Backend):
    """``open_backend(pkg, "onnxruntime", device="cpu"|"cuda", threads=N)``.  ``last_timings_ms`` holds the
    kernel-map and network times of the last :meth:`run` (the Segmenter reports them as stages)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None):
        import onnxruntime as ort

        self.package = load_package(path)
        self.spec = self.package.spec
        if device not in PROVIDERS:
            raise ConfigError(f"onnxruntime backend: device must be one of {sorted(PROVIDERS)}, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("onnxruntime backend: device 'cuda' requested but this onnxruntime has no "
                              "CUDAExecutionProvider (install onnxruntime-gpu)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        self.device = device
        self.session = ort.InferenceSession(str(self.package.onnx_path), options, providers=PROVIDERS[device])
        self.last_timings_ms: dict[str, float] = {}

    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        t = time.perf_counter()
        maps = build_kernel_maps(coords, self.package.chunks)
        t_maps = time.perf_counter()
        feeds = {"features": np.ascontiguousarray(features, dtype=np.float32), **maps.inputs()}
        try:
            out = self.session.run(["logits"], feeds)[0]
        except Exception as exc:  # onnxruntime raises its own exception types for bad shapes / dtypes
            raise DataError(f"onnxruntime failed on a scan of {len(features)} voxels: {exc}") from exc
        t_end = time.perf_counter()
        self.last_timings_ms = {"kernel_maps": (t_maps - t) * 1e3, "network": (t_end - t_maps) * 1e3}
        return out

    def describe(self) -> str:
        return f"onnxruntime ({self.device}, {self.package.root.name})"
