"""onnxruntime backend: runs a model package's ONNX graph (CPU: the cpu-flavour graph when the package has one;
the CUDA execution provider: the portable graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ssov_train.errors import ConfigError, DataError

from .package import PackageBackend

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
GRAPHS = ("auto", "portable", "cpu")


class OnnxRuntimeBackend(PackageBackend):
    """``open_backend(pkg, "onnxruntime", device="cpu"|"cuda", threads=N, graph="auto"|"portable"|"cpu")``.

    ``graph="auto"`` runs the package's cpu-flavour graph on CPU with one intra-op thread when ``threads`` is
    1 or left out (the node's default), and the portable graph otherwise: onnxruntime's CPU ScatterND splits
    its updates over the intra-op threads without guarding repeated output rows, so a summing ScatterND is only
    exact on one thread (with two, measured logit errors of 0.1).  Intra-op threads do not spin while idle
    (spinning workers kept the cores busy after the network and slowed the node's next stage, AFI, by 1.35x).
    ``last_timings_ms`` holds the kernel-map and network times of the last :meth:`run` (the Segmenter reports
    them as stages)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: Optional[int] = None, graph: str = "auto"):
        import onnxruntime as ort

        super().__init__(path)
        if device not in PROVIDERS:
            raise ConfigError(f"onnxruntime backend: device must be one of {sorted(PROVIDERS)}, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("onnxruntime backend: device 'cuda' requested but this onnxruntime has no "
                              "CUDAExecutionProvider (install onnxruntime-gpu)")
        if graph not in GRAPHS:
            raise ConfigError(f"onnxruntime backend: graph must be one of {GRAPHS}, got {graph!r}")
        single = threads is None or int(threads) == 1
        if graph == "cpu":
            if self.package.cpu_onnx_path is None:
                raise ConfigError(f"{self.package.root}: this package has no cpu graph; re-export it")
            if device != "cpu" or not single:
                raise ConfigError("onnxruntime backend: the cpu graph runs on CPU with one thread only "
                                  "(its summing ScatterND is not thread-safe in onnxruntime); use graph='portable'")
        use_cpu_graph = graph == "cpu" or (graph == "auto" and device == "cpu" and single
                                           and self.package.cpu_onnx_path is not None)
        self.flavour = "cpu" if use_cpu_graph else "portable"
        onnx_path = self.package.cpu_onnx_path if use_cpu_graph else self.package.onnx_path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if use_cpu_graph:
            options.intra_op_num_threads = 1
        elif threads:
            options.intra_op_num_threads = int(threads)
        self.device = device
        self.session = ort.InferenceSession(str(onnx_path), options, providers=PROVIDERS[device])

    def _execute(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.session.run(["logits"], feeds)[0]
        except Exception as exc:  # onnxruntime raises its own exception types for bad shapes / dtypes
            raise DataError(f"onnxruntime failed on a scan of {len(feeds['features'])} voxels: {exc}") from exc

    def describe(self) -> str:
        return f"onnxruntime ({self.device}, {self.flavour} graph, {self.package.root.name})"
