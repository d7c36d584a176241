"""The only module that calls TensorRT (10.x Python API).  Importing it without TensorRT raises
:class:`~ssov_train.errors.ConfigError` saying so; the decisions around it (cache key, profiles, rebuilds,
shape guard) are plain Python in ssov_export/engine.py.

No plugin is needed: the graph uses native layers only (Gather, MatMul, Reduce, Concat, ...); see
ssov_export/onnx_graph.py.  I/O buffers are torch CUDA tensors (torch is a project dependency on GPU machines).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ssov_train.errors import ConfigError, DataError

try:
    import tensorrt as trt
except ImportError as _exc:  # the usual case on CPU machines: no TensorRT wheel or libnvinfer
    raise ConfigError(f"TensorRT is not available here (import tensorrt failed: {_exc}); build engines on the "
                      "target Jetson / GPU machine (README: Export and inference backends)") from _exc

_LOGGER = trt.Logger(trt.Logger.WARNING)


def runtime_info() -> tuple[str, str, str]:
    """(TensorRT version, GPU name, compute capability "major.minor") of this machine's CUDA device 0."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("TensorRT backend needs a CUDA GPU; torch.cuda.is_available() is False")
    major, minor = torch.cuda.get_device_capability(0)
    return trt.__version__, torch.cuda.get_device_name(0), f"{major}.{minor}"


def build_engine(onnx_path: Path, profiles: Mapping[str, tuple], precision: str,
                 workspace_gib: float = 4.0) -> tuple[bytes, float]:
    """Serialized engine bytes and build seconds for ``onnx_path`` with one optimisation profile."""
    t = time.perf_counter()
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DataError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise DataError(f"TensorRT engine build failed for {onnx_path} (see the TensorRT log above)")
    return bytes(engine), time.perf_counter() - t


class EngineRunner:
    """A deserialized engine plus its execution context; :meth:`run` takes numpy inputs, returns logits."""

    def __init__(self, engine_bytes: bytes):
        import torch

        self._torch = torch
        runtime = trt.Runtime(_LOGGER)
        self.engine = runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise DataError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        keep = []
        for name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            if tensor.numel() == 0:  # an empty band table: TensorRT still wants a non-null address
                tensor = torch.zeros(1, dtype=tensor.dtype, device="cuda")
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        shape = tuple(self.context.get_tensor_shape("logits"))
        out = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address("logits", out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DataError("TensorRT execution failed")
        self.stream.synchronize()
        return out.cpu().numpy()
