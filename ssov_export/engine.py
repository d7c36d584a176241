"""TensorRT engines without TensorRT: everything about building and caching engines that is plain Python
(tested here, where ``import tensorrt`` fails).  The calls into the TensorRT API live in ssov_export/trt_api.py.

* **Cache key**: ONNX sha256 + TensorRT version + GPU name + compute capability + precision + profile.  An
  engine is only valid for the exact TensorRT build and GPU it was built on (peers.md §B8: "engine plan file
  generated on an incompatible device"), so all of these go into the file name *and* into a JSON record next
  to it, and :func:`decide` re-checks the record (and the engine's own sha256) before loading.
* **Profiles**: min/opt/max shapes of every graph input, derived from the sidecar's ``profile`` (voxels) and
  ``chunks`` (see ssov_export/kernel_maps.py for what each input is); the export's default maximum covers a
  128-beam x 2048-column scan (:data:`SENSOR_MAX_POINTS`, docs/performance.md "Shape profiles").
* **ONNX checks** that matter for TensorRT: opset, supported ops, int32 index inputs, named dynamic axes.
* **Runtime guard**: a scan whose inputs fall outside the profile is refused with a clear error (TensorRT
  would fail inside ``execute``), like Autoware's point-count guard.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ssov_train.errors import DataError

from .kernel_maps import bands, input_names
from .package import ModelPackage, sha256_of

PRECISIONS = ("fp32", "fp16")
TRT_OPSETS = range(13, 21)  # TensorRT 8.6 parses opset <= 17, 10.x <= 20
TRT_OPS = {"Add", "Concat", "ConstantOfShape", "Div", "Gather", "Gemm", "MatMul", "Max", "ReduceL2", "Relu",
           "Reshape", "Shape", "Slice"}  # what our graphs use; all native TensorRT layers, no plugin
KERNEL_VOLUME = {"subm": 27, "down": 8, "up": 8}

# Default profile maximum: the densest common spinning lidars return at most 128 rings x 2048 columns = 262,144
# points per scan (Ouster OS-128 in its 2048x10 mode; Hesai Pandar128: 128 x 1800 = 230,400; Velodyne VLS-128
# about 240,000, single return).  A scan never has more voxels than points, so this bounds the voxels of any
# single-return 128-beam scan whatever the scene (a real 128-beam sweep of ~200k points: 93,122 voxels).
# Dual-return or 2x-oversampled sensors: export with a larger --max-voxels.
SENSOR_MAX_POINTS = 128 * 2048
PROFILE_MIN_VOXELS = 1024


def default_profile(sample_voxels: int, max_voxels: int = SENSOR_MAX_POINTS) -> tuple[int, int, int]:
    """(min, opt, max) voxels of the TensorRT profile: opt = the real sample's voxel count (what kernels are
    tuned for), max = ``max_voxels`` (default: the 128 x 2048 sensor bound above), min = 1024 (or less)."""
    opt = int(sample_voxels)
    return min(PROFILE_MIN_VOXELS, opt), opt, max(int(max_voxels), opt)
MAX_WIDTH = {"subm": 26, "down": 8, "up": 1}  # out-table widths: neighbours per site, children per cell, parents


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str
    profile_sha256: str

    @property
    def file_stem(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")
        return (f"{self.onnx_sha256[:12]}_trt{self.tensorrt_version}_{gpu}_sm{self.compute_capability}_"
                f"{self.precision}_p{self.profile_sha256[:8]}")


Profiles = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profile_digest(profiles: Profiles) -> str:
    return hashlib.sha256(json.dumps(profiles, sort_keys=True).encode()).hexdigest()


def make_key(pkg: ModelPackage, tensorrt_version: str, gpu_name: str, compute_capability: str,
             precision: str) -> EngineKey:
    if precision not in PRECISIONS:
        raise DataError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return EngineKey(pkg.onnx_sha256, tensorrt_version, gpu_name, compute_capability, precision,
                     profile_digest(derive_profiles(pkg)))


def derive_profiles(pkg: ModelPackage) -> Profiles:
    """(min, opt, max) shape of every graph input from the sidecar.

    Sites per level are bounded by the voxel count; neighbour pairs per site by ``max_pairs_per_site``; the
    opt shapes are the real sample's shapes measured at export, scaled to the opt voxel count."""
    v_min, v_opt, v_max = (int(v) for v in pkg.profile["num_voxels"])
    per_site = int(pkg.profile.get("max_pairs_per_site", 16))
    sample = pkg.sidecar.get("sample_shapes", {})
    scale = v_opt / max(1, int(pkg.sidecar.get("parity", {}).get("sample_voxels", v_opt)))
    cin = int(pkg.spec.in_channels)
    profiles: Profiles = {"features": ((v_min, cin), (v_opt, cin), (v_max, cin))}
    for name in ("order", "restore"):
        profiles[name] = ((v_min,), (v_opt,), (v_max,))
    for name in input_names()[2:]:
        rb, part = name.split("_", 1)
        kind = rb.rstrip("0123456789")
        k = KERNEL_VOLUME[kind]
        b = int(pkg.chunks[rb])
        max_pairs = per_site * v_max if kind == "subm" else v_max
        max_chunks = -(-max_pairs // b) + k + 1
        opt = sample.get(name)
        if part in ("in", "kernel"):
            opt_chunks = max(1, min(max_chunks, int(round(opt[0] * scale)))) if opt else max(1, max_chunks // 4)
            if part == "in":
                profiles[name] = ((1, b), (opt_chunks, b), (max_chunks, b))
            else:
                profiles[name] = ((1,), (opt_chunks,), (max_chunks,))
        else:
            width = MAX_WIDTH[kind]
            opt_shape = ((min(width, int(opt[0])), min(v_max, int(round(opt[1] * scale)))) if opt
                         else (width, v_opt // bands(kind)))
            profiles[name] = ((1, 0), opt_shape, (width, v_max))
    return profiles


def check_shapes(profiles: Profiles, feeds: Mapping[str, np.ndarray]) -> None:
    """Refuse a scan whose inputs do not fit the engine's profile (DataError naming the input)."""
    for name, (lo, _, hi) in profiles.items():
        shape = tuple(feeds[name].shape)
        if len(shape) != len(lo) or any(not (a <= s <= b) for s, a, b in zip(shape, lo, hi)):
            raise DataError(f"scan does not fit the TensorRT profile: input {name!r} has shape {shape}, "
                            f"profile allows {lo} .. {hi} (re-export with a larger --profile, then rebuild)")


def check_onnx(model) -> list[str]:
    """Problems TensorRT would hit with this ONNX model (empty list: none)."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset not in TRT_OPSETS:
        problems.append(f"opset {opset} outside TensorRT's {TRT_OPSETS.start}..{TRT_OPSETS.stop - 1}")
    other = sorted({n.op_type for n in model.graph.node if n.op_type not in TRT_OPS or n.domain not in ("",)})
    if other:
        problems.append(f"ops outside the checked TensorRT set: {other}")
    from onnx import TensorProto

    index_types = set()
    for inp in model.graph.input:
        t = inp.type.tensor_type
        if inp.name != "features":
            index_types.add(t.elem_type)
        dims = t.shape.dim
        if any(not d.dim_param and d.dim_value <= 0 for d in dims):
            problems.append(f"input {inp.name} has an unnamed dynamic axis")
    if index_types - {TensorProto.INT32}:
        problems.append("index inputs must all be int32 (TensorRT's native index type)")
    if any(i.data_type == TensorProto.DOUBLE for i in model.graph.initializer):
        problems.append("float64 initializers (TensorRT has no fp64)")
    return problems


def record_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


def decide(engine_path: Path, key: EngineKey) -> tuple[bool, str]:
    """(rebuild?, why): rebuild when the engine or its record is missing, the record names another key (ONNX,
    TensorRT version, GPU, precision, profile), or the engine file's sha256 differs from the record."""
    rec_path = record_path(engine_path)
    if not engine_path.is_file() or not rec_path.is_file():
        return True, f"no cached engine at {engine_path}"
    try:
        record = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return True, f"engine record {rec_path} is unreadable"
    recorded = record.get("key", {})
    for field, value in asdict(key).items():
        if recorded.get(field) != value:
            return True, f"cached engine was built for {field}={recorded.get(field)!r}, now {value!r}"
    if record.get("engine_sha256") != sha256_of(engine_path):
        return True, f"cached engine {engine_path.name} does not match its record (corrupt or replaced)"
    return False, f"cached engine {engine_path.name} matches"


def write_record(engine_path: Path, key: EngineKey, profiles: Profiles, build_seconds: float) -> None:
    from ssov_train.io import write_json_atomic

    write_json_atomic(record_path(engine_path), {
        "key": asdict(key), "engine_sha256": sha256_of(engine_path),
        "profiles": {k: [list(s) for s in v] for k, v in profiles.items()}, "build_seconds": build_seconds})


def engine_path(pkg: ModelPackage, key: EngineKey, cache_dir: Optional[Path] = None) -> Path:
    return Path(cache_dir or pkg.root / "engines") / f"{key.file_stem}.engine"


def trtexec_command(pkg: ModelPackage, precision: str, out: str = "model.engine") -> str:
    """The trtexec equivalent of ``ssov-export engine`` (same profiles, precision)."""
    profiles = derive_profiles(pkg)

    def shapes(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in p[i])}" for n, p in profiles.items())

    flags = " --fp16" if precision == "fp16" else ""
    return (f"trtexec --onnx={pkg.onnx_path} --saveEngine={out}{flags} --skipInference "
            f"--minShapes={shapes(0)} --optShapes={shapes(1)} --maxShapes={shapes(2)}")


def sample_shapes(inputs: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Shapes of the kernel-map inputs of one scan (stored in the sidecar as the opt-profile reference)."""
    return {k: [int(d) for d in v.shape] for k, v in inputs.items() if k not in ("order", "restore")}

