"""``ssov-export onnx``: an ssov-checkpoint -> a model package, with a parity check against spconv built in."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ssov_train.errors import ConfigError, DataError
from ssov_train.io import write_bytes_atomic, write_text_atomic
from ssov_train.training.checkpoint import load_model

from .gemm_backend import fold_weights, write_gemm_weights
from .engine import SENSOR_MAX_POINTS, default_profile, sample_shapes
from .kernel_maps import build_kernel_maps
from .onnx_graph import OPSET, build_graph
from .package import (CPU_ONNX_FILE, FORMAT_NAME, FORMAT_VERSION, GEMM_WEIGHTS_FILE, ONNX_FILE, SIDECAR_FILE,
                      TEXT_EMBEDDINGS_FILE, load_package, sha256_of)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "nuscenes_sample"
MAX_ABS_DIFF = 1e-4  # fp32 logits, ONNX graph vs spconv
MIN_LABEL_AGREEMENT = 0.9999
MAX_PAIRS_PER_SITE = 16  # TensorRT profile bound on neighbour pairs per site (observed: 2.4 .. 9 on nuScenes)


@dataclass
class Parity:
    num_voxels: int
    max_abs_diff: float
    label_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.label_agreement >= MIN_LABEL_AGREEMENT

    def __str__(self) -> str:
        return (f"{self.num_voxels} voxels: max |logit diff| {self.max_abs_diff:.2e} (<= {MAX_ABS_DIFF:g}), "
                f"labels identical {100 * self.label_agreement:.3f}% (>= {100 * MIN_LABEL_AGREEMENT:g}%)")


def sample_scan(spec, sample_dir: Path = SAMPLE_DIR):
    """The real nuScenes sample voxelized for ``spec``: a ``Voxels`` with the network input features."""
    from ssov_train.data.sample import SampleReader
    from ssov_train.geometry.voxelize import voxelize

    reader = SampleReader(sample_dir)
    frame = reader.load(reader.split_tokens()[0])
    return voxelize(frame.points, spec.voxel, features=spec.point_features(frame.intensity))


def spconv_logits(model, vox) -> np.ndarray:
    """The reference: the spconv model on one thread (its CPU build slows down by 10x and more with two threads
    on a busy machine, see the README's CPU figures; one thread is predictable and the result the same)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return model(torch.from_numpy(vox.features), torch.from_numpy(vox.coords),
                         torch.zeros(vox.num_voxels, dtype=torch.int32), list(vox.spatial_shape), 1).numpy()
    finally:
        torch.set_num_threads(threads)


def compare(reference: np.ndarray, candidate: np.ndarray, has_classes: bool = True) -> Parity:
    """Parity of two (V, C) outputs: max |difference| and agreement of the predicted labels (class 0, "ignore",
    is never predicted)."""
    diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    if has_classes:
        agree = float(np.mean(reference[:, 1:].argmax(1) == candidate[:, 1:].argmax(1)))
    else:
        agree = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    return Parity(len(reference), diff, agree)


def check_parity(package: str | Path, reference: np.ndarray, vox, threads: Optional[int] = None,
                 graph: str = "auto") -> Parity:
    """Run ``package`` in onnxruntime on ``vox`` (its cpu graph, or ``graph="portable"``; ``graph="cpu-gemm"``:
    the cpu-gemm backend on the package's folded weights) and compare with ``reference``, the spconv model's
    logits on ``vox`` (:func:`spconv_logits`, computed once for all graphs)."""
    if graph == "cpu-gemm":
        from .gemm_backend import GemmBackend

        backend = GemmBackend(package)
    else:
        from .onnx_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(package, threads=threads, graph=graph)
    out = backend.run(vox.features, vox.coords, vox.spatial_shape)
    return compare(reference, out, backend.spec.has_classes)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import spconv
    import torch

    from ssov_train.models.spconv_cpu import CPU_FIXES_ACTIVE

    return {"ssov_export": str(FORMAT_VERSION), "torch": str(torch.__version__), "spconv": str(spconv.__version__),
            "spconv_cpu_fixes": str(CPU_FIXES_ACTIVE), "onnx": str(onnx.__version__),
            "onnxruntime": str(onnxruntime.__version__), "python": platform.python_version()}


def text_table(ckpt: dict, spec, source: Optional[Path] = None):
    """The text embeddings a feature model's package carries: ``source`` (an embedding table or a teacher-output
    directory) when given, else the teacher the checkpoint records if still on disk, else None.  Class models
    answer queries with their classes and carry none."""
    from ssov_train.openvocab.query import EmbeddingTable, checkpoint_teacher

    if spec.has_classes:
        if source is not None:
            raise ConfigError("text embeddings are for feature (pre-training) models; a class model answers "
                              "queries with its classes")
        return None
    source = source if source is not None else checkpoint_teacher(ckpt)
    if source is None:
        return None
    table = EmbeddingTable.load(source)
    if spec.feature_dim is not None and table.feature_dim != int(spec.feature_dim):
        raise ConfigError(f"text embeddings {source} have dim {table.feature_dim}, the model's features "
                          f"{spec.feature_dim}: use the teacher the model was distilled from")
    return table


def export_package(checkpoint: str | Path, out: str | Path, profile: Optional[tuple[int, int, int]] = None,
                   sample_dir: Path = SAMPLE_DIR, check: bool = True, text_embeddings: Optional[Path] = None,
                   max_voxels: int = SENSOR_MAX_POINTS) -> tuple[Path, Optional[Parity]]:
    """Write the package ``out`` for ``checkpoint``; with ``check``, verify parity on the real sample and refuse
    (DataError) a package that misses the thresholds.  ``profile``: TensorRT (min, opt, max) voxels; the
    default is (1024, sample voxels, ``max_voxels``: a 128-beam x 2048-column scan, see engine.default_profile).
    A feature model's package carries its text embeddings (:func:`text_table`; ``text_embeddings`` names them
    explicitly)."""
    from ssov_train.inference.spec import ModelSpec

    model, ckpt = load_model(checkpoint)
    spec = ModelSpec.from_checkpoint(ckpt, str(checkpoint))
    table = text_table(ckpt, spec, text_embeddings)
    vox = sample_scan(spec, sample_dir)
    maps = build_kernel_maps(vox.coords)
    chunks = maps.chunks()  # chunk lengths sized on a real sweep, frozen in the graph
    shapes = sample_shapes(maps.inputs())
    if profile is None:
        profile = default_profile(int(vox.num_voxels), max_voxels)
    lo, opt, hi = (int(v) for v in profile)
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"profile must be 1 <= min <= opt <= max voxels, got {profile}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graph = build_graph(model, chunks)
    write_bytes_atomic(out / ONNX_FILE, graph.SerializeToString())
    cpu_graph = build_graph(model, chunks, flavour="cpu")
    write_bytes_atomic(out / CPU_ONNX_FILE, cpu_graph.SerializeToString())
    write_gemm_weights(out / GEMM_WEIGHTS_FILE, fold_weights(model))
    text_meta = None
    if table is not None:
        table.save(out / TEXT_EMBEDDINGS_FILE)
        text_meta = {"file": TEXT_EMBEDDINGS_FILE, "sha256": sha256_of(out / TEXT_EMBEDDINGS_FILE),
                     "num_texts": len(table.texts), "dim": table.feature_dim,
                     "teacher": (ckpt.get("text_embeddings") or {}).get("teacher", "")}
    elif (out / TEXT_EMBEDDINGS_FILE).exists():  # re-export into an old package: no stale table left behind
        (out / TEXT_EMBEDDINGS_FILE).unlink()
    sidecar = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "text_embeddings": text_meta,
        "onnx": {"file": ONNX_FILE, "sha256": sha256_of(out / ONNX_FILE), "opset": OPSET,
                 "inputs": [i.name for i in graph.graph.input], "outputs": ["logits"], "index_dtype": "int32"},
        "onnx_cpu": {"file": CPU_ONNX_FILE, "sha256": sha256_of(out / CPU_ONNX_FILE),
                     "inputs": [i.name for i in cpu_graph.graph.input]},
        "gemm_weights": {"file": GEMM_WEIGHTS_FILE, "sha256": sha256_of(out / GEMM_WEIGHTS_FILE)},
        "chunks": chunks,
        "sample_shapes": shapes,
        "profile": {"num_voxels": [lo, opt, hi], "max_pairs_per_site": MAX_PAIRS_PER_SITE},
        "source": {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": sha256_of(Path(checkpoint))},
        "versions": _versions(),
    }
    parity = None
    if check:
        sidecar_tmp = out / SIDECAR_FILE
        write_text_atomic(sidecar_tmp, yaml.safe_dump(sidecar, sort_keys=False, default_flow_style=None))
        reference = spconv_logits(model, vox)
        parity = check_parity(out, reference, vox)  # the cpu graph
        portable = check_parity(out, reference, vox, graph="portable")  # the graph TensorRT will be built from
        gemm = check_parity(out, reference, vox, graph="cpu-gemm")
        sidecar["parity"] = {"sample_voxels": parity.num_voxels, "max_abs_diff": parity.max_abs_diff,
                             "label_agreement": parity.label_agreement,
                             "portable_max_abs_diff": portable.max_abs_diff,
                             "portable_label_agreement": portable.label_agreement,
                             "gemm_max_abs_diff": gemm.max_abs_diff, "gemm_label_agreement": gemm.label_agreement}
        for name, result in ((CPU_ONNX_FILE, parity), (ONNX_FILE, portable), (GEMM_WEIGHTS_FILE, gemm)):
            if not result.ok:
                (out / SIDECAR_FILE).unlink()
                raise DataError(f"export parity check failed on the real sample ({name}): {result}")
    write_text_atomic(out / SIDECAR_FILE, yaml.safe_dump(sidecar, sort_keys=False, default_flow_style=None))
    load_package(out)  # what consumers will do: sidecar + sha256
    return out, parity
