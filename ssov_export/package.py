"""The model package: what ``ssov-export onnx`` writes and every non-torch backend reads.

Layout (a directory, by convention ``<name>.ssovpkg/``)::

    model.onnx     the network; kernel maps are inputs (ssov_export/onnx_graph.py, portable flavour: TensorRT, CUDA)
    model_cpu.onnx the same network in the cpu flavour (onnxruntime on CPU; packages without it run model.onnx)
    model.yaml     the sidecar: format/version, ModelSpec fields (classes, palette, voxelization, input fields,
                   model config, stage, vocabulary, feature dim), text embeddings file if any, the chunk length of
                   every rulebook, the TensorRT profile (min/opt/max voxels), opset, versions that made it,
                   sha256 of model.onnx (and model_cpu.onnx, text_embeddings.npz), and the parity figures
                   measured at export
    weights_cpu.npz
                   the network's BatchNorm-folded conv weights for the ``cpu-gemm`` backend
                   (ssov_export/gemm_backend.py; packages without it run on the other backends)
    text_embeddings.npz
                   feature (TMP) models: the teacher's prompt embeddings in the model's output space
                   (an :class:`~ssov_train.openvocab.query.EmbeddingTable`), so that text queries need neither
                   the teacher's outputs nor its text encoder (torch) where the package runs
    engines/       TensorRT engine cache (ssov_export/engine.py), created on the target machine

The sha256s are checked on every load: a file that does not match its sidecar is refused by name.
"""

from __future__ import annotations

import hashlib
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ssov_train.errors import ConfigError, DataError
from ssov_train.inference.backends import Backend
from ssov_train.inference.spec import ModelSpec

from .kernel_maps import build_kernel_maps

FORMAT_NAME = "ssov-model-package"
FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
CPU_ONNX_FILE = "model_cpu.onnx"
TEXT_EMBEDDINGS_FILE = "text_embeddings.npz"
GEMM_WEIGHTS_FILE = "weights_cpu.npz"
SIDECAR_FILE = "model.yaml"
REQUIRED_KEYS = ("format", "version", "spec", "onnx", "chunks", "profile")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_dir(path: str | Path) -> Path:
    """The package directory for ``path``: the directory itself, or the one holding a given model.onnx /
    model.yaml."""
    path = Path(path)
    return path.parent if path.is_file() and path.name in (ONNX_FILE, SIDECAR_FILE) else path


def is_package(path: str | Path) -> bool:
    return (package_dir(path) / SIDECAR_FILE).is_file()


@dataclass
class ModelPackage:
    root: Path
    sidecar: dict[str, Any]
    spec: ModelSpec

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE

    @property
    def cpu_onnx_path(self) -> Path | None:
        """The cpu-flavour graph, or None for packages written before it existed."""
        return self.root / self.sidecar["onnx_cpu"]["file"] if "onnx_cpu" in self.sidecar else None

    @property
    def gemm_weights_path(self) -> Path | None:
        """The cpu-gemm backend's folded weights, or None for packages written before it existed."""
        return self.root / self.sidecar["gemm_weights"]["file"] if "gemm_weights" in self.sidecar else None

    @property
    def text_embeddings_path(self) -> Path | None:
        """The package's text-embedding table, or None (class models; packages exported without one)."""
        meta = self.sidecar.get("text_embeddings")
        return self.root / meta["file"] if isinstance(meta, dict) and "file" in meta else None

    @property
    def chunks(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.sidecar["chunks"].items()}

    @property
    def profile(self) -> dict[str, list[int]]:
        return self.sidecar["profile"]

    @property
    def onnx_sha256(self) -> str:
        return str(self.sidecar["onnx"]["sha256"])


def load_package(path: str | Path, verify: bool = True) -> ModelPackage:
    """Read and check a package: sidecar format and keys, ModelSpec, and (``verify``) the ONNX file's sha256."""
    root = package_dir(path)
    sidecar_path = root / SIDECAR_FILE
    if not sidecar_path.is_file():
        raise DataError(f"{root}: not a model package (no {SIDECAR_FILE}); export one with `ssov-export onnx`")
    try:
        sidecar = yaml.safe_load(sidecar_path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{sidecar_path}: invalid YAML ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT_NAME:
        raise DataError(f"{sidecar_path}: not an {FORMAT_NAME} sidecar")
    missing = [k for k in REQUIRED_KEYS if k not in sidecar]
    if missing:
        raise DataError(f"{sidecar_path}: missing keys {missing}")
    if int(sidecar["version"]) > FORMAT_VERSION:
        raise DataError(f"{sidecar_path}: package version {sidecar['version']} is newer than this ssov "
                        f"(reads up to {FORMAT_VERSION})")
    try:
        spec = ModelSpec.from_dict(sidecar["spec"], str(sidecar_path))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{sidecar_path}: bad model spec: {exc}") from None
    pkg = ModelPackage(root, sidecar, spec)
    if verify:
        files = [(pkg.onnx_path, pkg.onnx_sha256)]
        if pkg.cpu_onnx_path is not None:
            files.append((pkg.cpu_onnx_path, str(sidecar["onnx_cpu"]["sha256"])))
        if pkg.gemm_weights_path is not None:
            files.append((pkg.gemm_weights_path, str(sidecar["gemm_weights"]["sha256"])))
        if pkg.text_embeddings_path is not None:
            files.append((pkg.text_embeddings_path, str(sidecar["text_embeddings"]["sha256"])))
        for path, expected in files:
            if not path.is_file():
                raise DataError(f"{root}: {path.name} missing")
            actual = sha256_of(path)
            if actual != expected:
                raise DataError(f"{path}: sha256 {actual[:12]}... does not match the sidecar's {expected[:12]}...: "
                                "the file was modified or replaced; re-export the package")
    return pkg


class PackageBackend(Backend):
    """What every backend of a model package shares: the package (spec, chunk lengths) and one :meth:`run`:
    kernel maps by our own preprocessing (flavour :attr:`flavour`), then the graph (:meth:`_execute`).
    ``last_timings_ms`` holds the kernel-map and network times of the last run (the Segmenter reports them)."""

    flavour = "portable"

    def __init__(self, path: str | Path):
        self.package = load_package(path)
        self.spec = self.package.spec
        self.text_embeddings = self.package.text_embeddings_path
        self.chunks = self.package.chunks  # read once: the property rebuilds the dict
        self.last_timings_ms: dict[str, float] = {}

    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        t = time.perf_counter()
        maps = build_kernel_maps(coords, self.chunks, self.flavour)
        feeds = {"features": np.ascontiguousarray(features, dtype=np.float32), **maps.inputs()}
        t_maps = time.perf_counter()
        out = self._execute(feeds)
        self.last_timings_ms = {"kernel_maps": (t_maps - t) * 1e3, "network": (time.perf_counter() - t_maps) * 1e3}
        return out

    @abstractmethod
    def _execute(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's logits (V, C) for the feeds (features and kernel-map inputs)."""
