"""The TensorRT API module: clean refusal without TensorRT; the real build / parity test where it exists."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from ssov_train.errors import ConfigError
from ssov_train.inference import open_backend

try:
    import tensorrt  # noqa: F401

    TRT_MISSING = None
except ImportError as exc:
    TRT_MISSING = f"TensorRT not installed here (import tensorrt: {exc}); runs on a GPU machine with TensorRT"


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is installed: the refusal path does not apply")
def test_without_tensorrt_the_backend_refuses_with_one_clear_error(small_package):
    with pytest.raises(ConfigError, match="TensorRT is not available here"):
        importlib.import_module("ssov_export.trt_api")
    with pytest.raises(ConfigError, match="TensorRT is not available here"):
        open_backend(small_package, "tensorrt")


@pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_builds_caches_and_matches_onnxruntime(small_package, real_sweep, tmp_path, precision, atol):
    from ssov_export.onnx_export import compare
    from ssov_export.tensorrt_backend import TensorRTBackend
    from ssov_train.geometry.voxelize import voxelize

    trt_backend = TensorRTBackend(small_package, precision=precision, cache_dir=tmp_path)
    ort_backend = open_backend(small_package, "onnxruntime")
    xyz, intensity = real_sweep
    vox = voxelize(xyz, ort_backend.spec.voxel, features=intensity)
    ref = ort_backend.run(vox.features, vox.coords, vox.spatial_shape)
    parity = compare(ref, trt_backend.run(vox.features, vox.coords, vox.spatial_shape))
    assert parity.max_abs_diff <= atol and parity.label_agreement >= (0.9999 if precision == "fp32" else 0.99)
    again = TensorRTBackend(small_package, precision=precision, cache_dir=tmp_path)  # cached: no rebuild
    assert again.engine_path == trt_backend.engine_path
    assert np.isfinite(again.run(vox.features, vox.coords, vox.spatial_shape)).all()
