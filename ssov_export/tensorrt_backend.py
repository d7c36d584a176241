"""TensorRT backend and engine build: the model package's ONNX -> a cached, validated engine.

``open_backend(pkg, "tensorrt", precision="fp16")`` loads the engine cached for this ONNX / TensorRT / GPU /
precision / profile (ssov_export/engine.py), building it first when there is none or the cached one does not
match.  ``ssov-export engine PKG [--fp16] [--build-only]`` does the same from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ssov_train.errors import DataError
from ssov_train.io import write_bytes_atomic

from . import engine as eng
from .package import ModelPackage, PackageBackend


def ensure_engine(pkg: ModelPackage, precision: str = "fp16", cache_dir: Optional[Path] = None,
                  force: bool = False, log=print) -> Path:
    """Path of a valid engine for ``pkg`` on this machine, built (and recorded) when needed."""
    from . import trt_api

    key = eng.make_key(pkg, *trt_api.runtime_info(), precision)
    path = eng.engine_path(pkg, key, cache_dir)
    rebuild, why = eng.decide(path, key)
    log(f"tensorrt: {why}")
    if rebuild or force:  # a cached engine that matches was built from this very ONNX (its sha256 is in the key)
        problems = eng.check_onnx(_load_onnx(pkg))
        if problems:
            raise DataError(f"{pkg.onnx_path} is not TensorRT-ready: {'; '.join(problems)}")
        profiles = eng.derive_profiles(pkg)
        log(f"tensorrt: building {precision} engine (voxels {pkg.profile['num_voxels']}) -> {path}")
        data, seconds = trt_api.build_engine(pkg.onnx_path, profiles, precision)
        write_bytes_atomic(path, data)
        eng.write_record(path, key, profiles, seconds)
        log(f"tensorrt: built in {seconds:.1f} s")
    return path


def _load_onnx(pkg: ModelPackage):
    import onnx

    return onnx.load(str(pkg.onnx_path), load_external_data=False)


class TensorRTBackend(PackageBackend):
    name = "tensorrt"

    def __init__(self, path: str | Path, precision: str = "fp16", cache_dir: Optional[str | Path] = None,
                 **_ignored):
        from . import trt_api

        super().__init__(path)
        self.precision = precision
        self.profiles = eng.derive_profiles(self.package)
        self.engine_path = ensure_engine(self.package, precision, Path(cache_dir) if cache_dir else None)
        self.runner = trt_api.EngineRunner(self.engine_path.read_bytes())

    def _execute(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        eng.check_shapes(self.profiles, feeds)
        return self.runner.run(feeds)

    def describe(self) -> str:
        return f"tensorrt ({self.precision}, {self.engine_path.name})"
