"""`make gpu-check`: the GPU backends on an NVIDIA machine, for the demo model and the paper's MinkUNet34C at
full width (random weights, 37.8M parameters): spconv CUDA, the onnxruntime CUDA execution provider and
TensorRT (where each is installed), parity against spconv on CPU (max |logit diff|, labels identical) and
timings (median of --repeats after a warm-up, CUDA synchronised) on the real nuScenes sweep and on a
200k-point dense cloud (bench/clouds.py).  Results go to runs/gpu_check/gpu_check.json and into
docs/performance.md, section "GPU check" (the block between its markers is replaced).

On a machine without an NVIDIA GPU it prints why and exits 0 (nothing to check).  Each missing piece is
skipped with the reason and what to install; the whole run stops starting new work after --budget-s
(default 420 s, so `make gpu-check` stays under 8 minutes).

What it needs (the project's GPU machines have Python 3.12, torch with CUDA, onnx and a CPU onnxruntime; no
internet), as wheels brought from a connected machine:

    pip download --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d gpu_wheels \\
        spconv-cu126==2.3.8 cumm-cu126==0.7.11 onnxruntime-gpu==1.32.0 numba==0.68.1 llvmlite==0.50.0 \\
        pccm==0.4.16 ccimport==0.4.4 lark==1.3.1 fire==0.7.1 pyyaml==6.0.4
    # then on the GPU machine (no index):
    python3 -m pip install --no-index --find-links gpu_wheels spconv-cu126 onnxruntime-gpu numba pyyaml
    # TensorRT, where NVIDIA's index or a local wheel is reachable:  pip install tensorrt-cu12
    make gpu-check        # or: python3 bench/gpu_check.py

Without spconv there, export the packages on a CPU machine first (`make export`, and
`python bench/gpu_check.py --export-only` for MinkUNet34C), copy models/ and runs/gpu_check/ along; the
onnxruntime / TensorRT parts then run, parity against the CPU logits stored at export.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEMO = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
WORK = REPO / "runs" / "gpu_check"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- gpu-check results: begin -->", "<!-- gpu-check results: end -->"
MAX_ABS_DIFF, MIN_LABELS = 1e-4, 0.9999  # fp32 parity, as the export's
FP16_MAX_ABS_DIFF, FP16_MIN_LABELS = 5e-2, 0.999


def log(msg: str) -> None:
    print(msg, flush=True)


def gpu_reason() -> str | None:
    """None when an NVIDIA GPU is usable from torch, else why not."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (no CUDA)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def spconv_reason() -> str | None:
    try:
        import spconv  # noqa: F401
        import spconv.pytorch  # noqa: F401
    except ImportError as exc:
        return f"spconv is not installed ({exc}); bring spconv-cu126 + cumm-cu126 wheels (see this script's doc)"
    return None


def ort_cuda_reason() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers "
                f"{ort.get_available_providers()}): install the onnxruntime-gpu wheel instead of onnxruntime")
    return None


def tensorrt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not importable ({exc}); pip install tensorrt-cu12 where NVIDIA's index is reachable"
    return None


def clouds():
    from clouds import dense_cloud
    from ssov_train.data.sample import SampleReader

    reader = SampleReader(REPO / "data" / "nuscenes_sample")
    frame = reader.load(reader.split_tokens()[0])
    return {"nuScenes sweep": (frame.points, frame.intensity),
            "dense 200k": dense_cloud(frame.points, frame.intensity, 200_000)}


def full_width_checkpoint() -> Path:
    """MinkUNet34C at width 1.0 (the paper's), random weights with non-trivial BN statistics."""
    path = WORK / "minkunet34c_w1.pt"
    if path.is_file():
        return path
    import torch

    from ssov_train.models import MinkUNet, MinkUNetConfig
    from ssov_train.training.checkpoint import save_checkpoint
    from ssov_train.vocab import load_dictionary

    torch.manual_seed(0)
    d = load_dictionary("nuscenes")
    cfg = MinkUNetConfig(arch="MinkUNet34C", width=1.0, out_channels=d.num_classes)
    model = MinkUNet(cfg)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    WORK.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, {
        "stage": "annotation_free", "model": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
        "voxel": {"mode": "cylindrical", "size": [0.1, 1.0, 0.1]}, "input_fields": ["intensity"],
        "class_names": d.class_names, "palette": d.palette.tolist(), "vocabulary": d.name,
        "feature_dim": None, "text_embeddings": None, "state_dict": model.state_dict()})


def package_for(checkpoint: Path) -> Path:
    """The checkpoint's model package (exported here when missing; needs spconv)."""
    from ssov_export.onnx_export import export_package

    pkg = WORK / f"{checkpoint.stem}.ssovpkg"
    if not (pkg / "model.yaml").is_file():
        export_package(checkpoint, pkg)
    return pkg


def reference_logits(checkpoint: Path, xyz, intensity) -> np.ndarray:
    """spconv on CPU: the reference every GPU backend is held to (cached next to the packages)."""
    cache = WORK / f"ref_{checkpoint.stem}_{len(xyz)}.npy"
    if cache.is_file():
        return np.load(cache)
    from ssov_train.inference import open_backend
    from ssov_train.geometry.voxelize import voxelize

    backend = open_backend(checkpoint, "torch", device="cpu")
    vox = voxelize(xyz, backend.spec.voxel, features=backend.spec.point_features(intensity))
    out = backend.run(vox.features, vox.coords, vox.spatial_shape)
    np.save(cache, out)
    return out


def timed(run, repeats: int, sync) -> tuple[np.ndarray, list[float]]:
    out = run()  # warm-up (engine / session / cuDNN set-up)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = run()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return out, times


def check_backend(name: str, open_fn, checkpoint: Path, cloud_set, repeats: int, fp16: bool = False) -> list[dict]:
    import torch

    from ssov_train.geometry.voxelize import voxelize

    backend = open_fn()
    sync = torch.cuda.synchronize
    rows = []
    for cloud_name, (xyz, intensity) in cloud_set.items():
        vox = voxelize(xyz, backend.spec.voxel, features=backend.spec.point_features(intensity))
        ref = reference_logits(checkpoint, xyz, intensity)
        out, times = timed(lambda: backend.run(vox.features, vox.coords, vox.spatial_shape), repeats, sync)
        diff = float(np.abs(out - ref).max())
        agree = float(np.mean(out[:, 1:].argmax(1) == ref[:, 1:].argmax(1)))
        limit = (FP16_MAX_ABS_DIFF, FP16_MIN_LABELS) if fp16 else (MAX_ABS_DIFF, MIN_LABELS)
        row = {"backend": name, "model": checkpoint.name, "cloud": cloud_name, "voxels": vox.num_voxels,
               "median_ms": statistics.median(times), "min_ms": min(times), "max_abs_diff": diff,
               "labels_identical": agree, "parity_ok": diff <= limit[0] and agree >= limit[1],
               "stages_ms": dict(getattr(backend, "last_timings_ms", {}))}
        rows.append(row)
        log(f"  {name:<28} {checkpoint.stem:<34} {cloud_name:<15} {vox.num_voxels:>7} vox  "
            f"{row['median_ms']:8.1f} ms (min {row['min_ms']:.1f})  max|d| {diff:.2e}  labels {agree:.4%}  "
            f"{'ok' if row['parity_ok'] else 'PARITY FAILED'}")
    backend.close()
    return rows


def write_doc(report: dict) -> None:
    lines = [BEGIN, "", f"Run {report['date']} on {report['gpu']} (driver CUDA {report['cuda']}, torch "
             f"{report['torch']}); CPU reference: spconv on CPU; median of {report['repeats']} runs after a "
             "warm-up, network only (kernel maps included for package backends).", ""]
    if report["rows"]:
        lines += ["| backend | model | cloud | voxels | median ms | min ms | max abs logit diff | labels identical "
                  "| parity |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['backend']} | {r['model']} | {r['cloud']} | {r['voxels']:,} | {r['median_ms']:.1f} | "
                  f"{r['min_ms']:.1f} | {r['max_abs_diff']:.2e} | {r['labels_identical']:.4%} | "
                  f"{'ok' if r['parity_ok'] else 'FAILED'} |" for r in report["rows"]]
    lines += [""] + [f"- skipped: {s}" for s in report["skipped"]] + ["", END]
    block = "\n".join(lines)
    text = DOC.read_text() if DOC.is_file() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## GPU check results\n\n" + block + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(DOC)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new check after this many seconds")
    ap.add_argument("--export-only", action="store_true",
                    help="(CPU machine) export the packages and CPU reference logits to carry to the GPU machine")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    args = ap.parse_args()
    start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)

    if args.export_only:
        if spconv_reason():
            log(f"cannot export: {spconv_reason()}")
            return 1
        cloud_set = clouds()
        for ckpt in (DEMO, full_width_checkpoint()):
            log(f"exported {package_for(ckpt)}")
            for xyz, intensity in cloud_set.values():
                reference_logits(ckpt, xyz, intensity)
        log(f"packages and CPU reference logits in {WORK}: copy runs/gpu_check/ to the GPU machine")
        return 0

    reason = gpu_reason()
    if reason:
        log(f"gpu-check: SKIPPED, no NVIDIA GPU usable here: {reason}.")
        log("  On a GPU machine: see bench/gpu_check.py's docstring for the wheels it needs, then `make gpu-check`.")
        return 0

    import torch

    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
              "cuda": torch.version.cuda, "torch": torch.__version__, "repeats": args.repeats, "rows": [],
              "skipped": []}
    log(f"gpu-check on {report['gpu']} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    cloud_set = clouds()
    checkpoints = [DEMO]
    no_spconv = spconv_reason()
    if no_spconv is None:
        checkpoints.append(full_width_checkpoint())
    elif (WORK / "minkunet34c_w1.pt").is_file():
        checkpoints.append(WORK / "minkunet34c_w1.pt")
    missing_refs = [c for c in checkpoints for xyz, _ in cloud_set.values()
                    if no_spconv and not (WORK / f"ref_{c.stem}_{len(xyz)}.npy").is_file()]
    if missing_refs:
        report["skipped"].append(f"parity: no CPU reference logits and {no_spconv} (run --export-only on a CPU "
                                 "machine and copy runs/gpu_check/)")
        checkpoints = [c for c in checkpoints if c not in missing_refs]

    def over_budget(what: str) -> bool:
        if time.perf_counter() - start > args.budget_s:
            report["skipped"].append(f"{what}: time budget of {args.budget_s:.0f} s spent")
            return True
        return False

    from ssov_train.inference import open_backend

    for ckpt in checkpoints:
        if no_spconv:
            report["skipped"].append(f"spconv CUDA ({ckpt.name}): {no_spconv}")
        elif not over_budget(f"spconv CUDA ({ckpt.name})"):
            report["rows"] += check_backend("spconv CUDA (torch eager)",
                                            lambda c=ckpt: open_backend(c, "torch", device="cuda"), ckpt, cloud_set,
                                            args.repeats)
        pkg = WORK / f"{ckpt.stem}.ssovpkg"
        if not (pkg / "model.yaml").is_file():
            if no_spconv:
                report["skipped"].append(f"packages of {ckpt.name}: not exported and {no_spconv}")
                continue
            pkg = package_for(ckpt)
        ort_reason = ort_cuda_reason()
        if ort_reason:
            report["skipped"].append(f"onnxruntime CUDA EP ({ckpt.name}): {ort_reason}")
        elif not over_budget(f"onnxruntime CUDA EP ({ckpt.name})"):
            report["rows"] += check_backend("onnxruntime CUDA EP",
                                            lambda p=pkg: open_backend(p, "onnxruntime", device="cuda"),
                                            ckpt, cloud_set, args.repeats)
        trt_reason = tensorrt_reason()
        if trt_reason:
            report["skipped"].append(f"TensorRT ({ckpt.name}): {trt_reason}")
        else:
            for fp16 in (False, True):
                label = f"TensorRT {'fp16' if fp16 else 'fp32'}"
                if not over_budget(f"{label} ({ckpt.name})"):
                    report["rows"] += check_backend(label, lambda p=pkg, h=fp16: open_backend(p, "tensorrt",
                                                                                  precision="fp16" if h else "fp32"),
                                                    ckpt, cloud_set, args.repeats, fp16=fp16)
    for s in report["skipped"]:
        log(f"  skipped: {s}")
    (WORK / "gpu_check.json").write_text(json.dumps(report, indent=1))
    if not args.no_doc:
        write_doc(report)
    ok = all(r["parity_ok"] for r in report["rows"])
    log(f"gpu-check: {len(report['rows'])} checks, parity {'ok' if ok else 'FAILED'}, "
        f"{time.perf_counter() - start:.0f} s -> {WORK / 'gpu_check.json'}"
        + ("" if args.no_doc else f", {DOC.relative_to(REPO)}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
