"""`make gpu-check`: training on CUDA against the CPU, then the GPU inference backends, on an NVIDIA machine.

Training (first; needs spconv's CUDA build and nuscenes-devkit): on a small synthetic world (oracle teacher), the
paper's MinkUNet34C at full width trains a few steps of TMP pre-training and of annotation-free training from the
same initial weights on the CPU, on CUDA and on CUDA with mixed precision (``amp``); the per-step losses of CUDA
must match the CPU's (first step within 0.1 %, later steps 2 %), the fp16 run's first loss the fp32 one's within
2 %; then the CUDA-trained checkpoint is evaluated on both devices (at most 0.1 % of the points predicted
differently) and one `torchrun -m ssov_train annotation-free --device cuda` run checks the command line.

Inference: for the demo model and MinkUNet34C at full width (random weights, 37.8M parameters): spconv CUDA,
the onnxruntime CUDA execution provider and TensorRT (where each is installed), parity against spconv on CPU
(max |logit diff|, labels identical) and timings (median of --repeats after a warm-up, CUDA synchronised) on
the real nuScenes sweep and on a 200k-point dense cloud (bench/clouds.py).  Results go to
runs/gpu_check/gpu_check.json and into docs/performance.md, section "GPU check" (the block between its
markers is replaced).

On a machine without an NVIDIA GPU it prints why and exits 0 (nothing to check).  Each missing piece is
skipped with the reason and what to install; the whole run stops starting new work after --budget-s
(default 420 s, so `make gpu-check` stays under 8 minutes).

What it needs (the project's GPU machines have Python 3.12, torch with CUDA, onnx and a CPU onnxruntime; no
internet), as wheels brought from a connected machine:

    pip download --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d gpu_wheels \\
        spconv-cu126==2.3.8 cumm-cu126==0.7.11 onnxruntime-gpu==1.32.0 numba==0.68.1 llvmlite==0.50.0 \\
        pccm==0.4.16 ccimport==0.4.4 lark==1.3.1 fire==0.7.1 pyyaml==6.0.4
    # the training check reads its synthetic world with nuscenes-devkit; --no-deps: its requirements (numpy<2,
    # pycocotools, ...) name more than the reader imports (the machine's numpy 2 is not yet tried with it)
    pip download --no-deps --only-binary :all: -d gpu_wheels/devkit nuscenes-devkit==1.2.0 pyquaternion==0.9.9
    # then on the GPU machine (no index):
    python3 -m pip install --no-index --find-links gpu_wheels spconv-cu126 onnxruntime-gpu numba pyyaml
    python3 -m pip install --no-index --no-deps gpu_wheels/devkit/*.whl
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


def training_reason() -> str | None:
    """None when the training check can run: spconv's CUDA build and the reader of the synthetic world."""
    reason = spconv_reason()
    if reason:
        return reason
    from ssov_train.device import Accelerators

    problem = Accelerators.detect(needs_spconv=True).cuda_problem()
    if problem:
        return problem + " (see this script's doc)"
    try:
        import nuscenes.nuscenes  # noqa: F401  (reads the synthetic world)
    except ImportError as exc:
        return f"nuscenes-devkit is not importable ({exc}); bring its wheel and pyquaternion's (see this script's doc)"
    return None


# ---- training on CUDA against the CPU -----------------------------------------------------------------

TRAIN_STEPS = 5  # optimiser steps per run (batch 2): the first is set-up, the median of the others is timed
FIRST_STEP_RTOL, LATER_STEPS_RTOL, AMP_FIRST_STEP_RTOL = 1e-3, 2e-2, 2e-2
EVAL_MAX_DISAGREE = 1e-3  # fraction of points predicted differently by the CPU and CUDA, at most


def training_world() -> dict:
    """A small synthetic world (3 train / 1 val scenes x 3 keyframes) with oracle teacher outputs and superpoints
    for both splits, made once under runs/gpu_check/train_world."""
    from ssov_train.config import from_dict
    from ssov_train.data.synthetic import generate_world
    from ssov_train.pipeline import Stage, SuperpointsStageConfig, run_superpoints_stage, run_teach

    root = WORK / "train_world"
    paths = {"dataroot": root / "world", "teacher": root / "teacher", "superpoints": root / "superpoints"}
    if not (root / "done").is_file():
        generate_world(paths["dataroot"], name="gpucheck", num_scenes=4, frames_per_scene=3, seed=0,
                       image_width=320, image_height=180, overwrite=True)
        for split in ("train", "val"):
            stage = Stage.from_config(from_dict(SuperpointsStageConfig, {
                "dataset": {"kind": "nuscenes", "root": str(paths["dataroot"]), "version": "v1.0-gpucheck",
                            "split": split},
                "teacher": {"format": "ssov", "root": str(paths["teacher"]), "builtin": "oracle"},
                "output": str(paths["superpoints"])}))
            if run_teach(stage, progress=False) or run_superpoints_stage(stage, progress=False).failed:
                raise RuntimeError(f"training world: teacher or superpoints failed on split {split}")
        (root / "done").write_text("ok\n")
    return paths


def train_config(world: dict, stage: str, out: Path, device: str, amp: bool = False):
    from ssov_train.config import from_dict
    from ssov_train.training.stages import TrainConfig

    data = {"stage": stage, "output": str(out), "device": device, "amp": amp,
            "dataset": {"kind": "nuscenes", "root": str(world["dataroot"]), "version": "v1.0-gpucheck",
                        "split": "train"},
            "model": {"arch": "MinkUNet34C", "width": 1.0},
            "optim": {"epochs": 1, "batch_size": 2, "lr": 0.05, "num_workers": 2, "max_steps_per_epoch": TRAIN_STEPS},
            "superpoints": str(world["superpoints"])}
    if stage == "pretrain":
        data["teacher"] = {"format": "ssov", "root": str(world["teacher"])}
    return from_dict(TrainConfig, data)


def timed_training(cfg) -> tuple[list[float], float]:
    """(loss of every step, median ms of the steps after the first), CUDA synchronised at every step."""
    import shutil

    import torch

    from ssov_train.training.engine import train
    from ssov_train.training.stages import build_task

    shutil.rmtree(cfg.output, ignore_errors=True)
    losses, stamps = [], []

    def on_step(event):
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        losses.append(event.losses["total"])

    train(build_task(cfg), progress=False, on_step=on_step)
    return losses, statistics.median(np.diff(stamps)) * 1e3 if len(stamps) > 1 else float("nan")


def relative_diffs(got: list[float], want: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, want)]


def check_training(report: dict, deadline: float) -> None:
    """Training and evaluation on CUDA vs the CPU (rows in report["training"]); see the module doc.  Starts no
    new part after ``deadline`` (time.perf_counter()), so that the backends keep their share of the budget."""
    import math
    import os
    import subprocess

    import yaml

    from ssov_train.config import to_dict
    from ssov_train.training.stages import run_evaluation

    world = training_world()
    out = WORK / "training"
    def late(what: str) -> bool:
        if time.perf_counter() > deadline:
            report["skipped"].append(f"{what}: the training check's share of the time budget is spent")
            return True
        return False

    for stage in ("pretrain", "annotation_free"):
        if late(f"train {stage}"):
            return
        runs = {label: timed_training(train_config(world, stage, out / f"{stage}_{label}", device, amp))
                for label, device, amp in (("cpu", "cpu", False), ("cuda", "cuda", False), ("cuda_amp", "cuda", True))}
        cpu_losses = runs["cpu"][0]
        for label, (losses, step_ms) in runs.items():
            if label == "cpu":
                diffs, ok = [0.0] * len(losses), all(map(math.isfinite, losses))
            elif label == "cuda":
                diffs = relative_diffs(losses, cpu_losses)
                ok = (len(losses) == len(cpu_losses) and all(map(math.isfinite, losses)) and diffs[0] <= FIRST_STEP_RTOL
                      and all(d <= LATER_STEPS_RTOL for d in diffs))
            else:  # fp16: the first step (same weights, same batch) against CUDA fp32
                diffs = relative_diffs(losses, runs["cuda"][0])
                ok = all(map(math.isfinite, losses)) and diffs[0] <= AMP_FIRST_STEP_RTOL
            row = {"check": f"train {stage}", "run": label.replace("_", " "), "steps": len(losses),
                   "median_step_ms": step_ms, "losses": losses, "max_rel_diff": max(diffs), "ok": ok}
            report["training"].append(row)
            log(f"  train {stage:<16} {row['run']:<9} {len(losses)} steps  {step_ms:8.1f} ms/step  losses "
                f"{' '.join(f'{x:.4f}' for x in losses)}  max rel diff {max(diffs):.1e}  {'ok' if ok else 'FAILED'}")

    # evaluation of the CUDA-trained checkpoint on both devices (the val split, every point)
    if late("evaluate"):
        return
    model = out / "annotation_free_cuda" / "last.pt"
    metrics, seconds = {}, {}
    for device in ("cpu", "cuda"):
        cfg = train_config(world, "annotation_free", out / "annotation_free_cuda", device)
        start = time.perf_counter()
        metrics[device] = run_evaluation(cfg, model, out / f"eval_{device}", progress=False)
        seconds[device] = time.perf_counter() - start
    cm_cpu = np.array(metrics["cpu"]["confusion"]["matrix"])
    cm_cuda = np.array(metrics["cuda"]["confusion"]["matrix"])
    disagree = float(np.abs(cm_cuda - cm_cpu).sum() / 2 / cm_cpu.sum())  # an upper bound on differing points
    for device in ("cpu", "cuda"):
        ok = disagree <= EVAL_MAX_DISAGREE
        miou = metrics[device]["miou"]
        report["training"].append({"check": "evaluate", "run": device, "steps": metrics[device]["num_scans"],
                                   "median_step_ms": 1e3 * seconds[device] / metrics[device]["num_scans"],
                                   "miou": miou, "max_rel_diff": disagree, "ok": ok})
        log(f"  evaluate {device:<5} {metrics[device]['num_scans']} scans, mIoU "
            f"{'n/a' if miou is None else f'{100 * miou:.2f}'}, {seconds[device]:.1f} s; points differing "
            f"<= {disagree:.1e}  {'ok' if ok else 'FAILED'}")

    # the command line under torchrun on this machine's GPU (LOCAL_RANK 0, pinned batches from 2 workers)
    if late("torchrun"):
        return
    cfg = train_config(world, "annotation_free", out / "cli_torchrun", "cuda")
    cfg_path = out / "cli_torchrun.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           "-m", "ssov_train", "annotation-free", "--cfg", str(cfg_path), "--device", "cuda"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                      os.environ.get("PYTHONPATH")]))))
    device_line = next((line for line in proc.stdout.splitlines() if line.startswith("device: ")), "")
    ok = proc.returncode == 0 and device_line.startswith("device: cuda:0") and (out / "cli_torchrun" / "last.pt").is_file()
    report["training"].append({"check": "torchrun -m ssov_train annotation-free --device cuda",
                               "run": device_line or f"exit {proc.returncode}", "steps": TRAIN_STEPS,
                               "median_step_ms": float("nan"), "max_rel_diff": float("nan"), "ok": ok,
                               "seconds": time.perf_counter() - start})
    log(f"  torchrun --nproc_per_node 1 -m ssov_train annotation-free --device cuda: exit {proc.returncode}, "
        f"{device_line!r}  {'ok' if ok else 'FAILED'}" + ("" if ok else "\n" + proc.stderr[-2000:]))


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
    if report.get("training"):
        lines += ["Training (MinkUNet34C width 1.0, batch 2, synthetic world; losses against the CPU's from the same "
                  "weights; fp16 against CUDA fp32; evaluation: share of points predicted differently, at most):", "",
                  "| check | run | steps / scans | ms per step / scan | max relative difference | result |",
                  "|---|---|---:|---:|---:|---|"]
        def figure(value: float, spec: str) -> str:
            return "-" if value != value else format(value, spec)  # NaN: not measured

        lines += [f"| {r['check']} | {r['run']} | {r['steps']} | {figure(r['median_step_ms'], '.1f')} | "
                  f"{figure(r['max_rel_diff'], '.1e')} | {'ok' if r['ok'] else 'FAILED'} |" for r in report["training"]]
        lines += [""]
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
    ap.add_argument("--no-training", action="store_true", help="skip the training check (inference backends only)")
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
              "training": [], "skipped": []}
    log(f"gpu-check on {report['gpu']} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    no_training = training_reason()
    if no_training:
        report["skipped"].append(f"training on CUDA: {no_training}")
    elif args.no_training:
        report["skipped"].append("training on CUDA: --no-training")
    else:
        try:
            check_training(report, deadline=start + args.budget_s / 2)
        except Exception as exc:  # report it and go on to the backends: one broken part must not hide the others
            import traceback

            traceback.print_exc()
            report["training"].append({"check": "training on CUDA", "run": f"crashed: {exc!r}"[:200], "steps": 0,
                                       "median_step_ms": float("nan"), "max_rel_diff": float("nan"), "ok": False})
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
    ok = all(r["parity_ok"] for r in report["rows"]) and all(r["ok"] for r in report["training"])
    log(f"gpu-check: {len(report['rows']) + len(report['training'])} checks, parity {'ok' if ok else 'FAILED'}, "
        f"{time.perf_counter() - start:.0f} s -> {WORK / 'gpu_check.json'}"
        + ("" if args.no_doc else f", {DOC.relative_to(REPO)}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
