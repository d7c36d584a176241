"""`make demo`: the first stage of the pipeline on the embedded defaults, with pictures.

1. The shipped real nuScenes keyframe: box teacher -> superpoints -> report, camera overlays.
2. A small synthetic world: generated, taught by the oracle teacher (an imitation of an open-vocabulary
   segmenter with its typical mistakes) -> superpoints -> pseudo-label quality against ground truth.
3. The shipped demo model (``models/``, trained by `make ablation` on other synthetic streets) segments
   that world: mIoU over every point, confusion matrix and a bird's-eye view of prediction vs truth.

Everything lands in ``--out`` (default ``demo_out/``); run time under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .config import load_config
from .pipeline import Stage, SuperpointsStageConfig, render_overlay, run_report, run_superpoints_stage, run_teach

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models" / "ssov_synthetic_minkunet34c_w025.pt"
DEMO_WORLD_SEED = 2026  # not a seed the demo model's training world used: these streets are new to it


def _stage(cfg_name: str, out: Path, dataset_root: Path) -> Stage:
    overrides = {"dataset.root": str(dataset_root), "teacher.root": str(out / "teacher"),
                 "output": str(out / "superpoints")}
    return Stage.from_config(load_config(SuperpointsStageConfig, REPO / "config" / cfg_name, overrides))


def _run_stage(stage: Stage, out: Path, label: str) -> dict:
    failures = run_teach(stage)
    result = run_superpoints_stage(stage)
    report = run_report(stage)
    token = stage.tokens()[0]
    render_overlay(stage, token, out / "overlay_depth.png", color_by="depth")
    render_overlay(stage, token, out / "overlay_pseudo_labels.png", color_by="pseudo_label")
    if failures or result.failed:
        print(f"{label}: skipped {failures + result.failed}")
    return report


def _segment_with_demo_model(world: Path, out: Path) -> dict:
    """Evaluate the shipped model on the demo world (all points; its own training config, new data)."""
    from .config import from_dict
    from .training.checkpoint import load_checkpoint
    from .training.stages import TrainConfig, run_evaluation

    if not DEMO_MODEL.exists():
        print(f"no demo model at {DEMO_MODEL}: skipped (make ablation trains one)")
        return {}
    saved = load_checkpoint(DEMO_MODEL)["config"]
    cfg = from_dict(TrainConfig, {**saved, "dataset": {**saved["dataset"], "root": str(world), "split": "train"},
                                  "superpoints": str(out / "superpoints"), "output": str(out / "model"),
                                  "eval_split": "train", "val_split": None}, str(DEMO_MODEL))
    metrics = run_evaluation(cfg, DEMO_MODEL, out / "model_eval")
    return {"model": str(DEMO_MODEL.relative_to(REPO)), "miou_all_points": metrics["miou"],
            "accuracy": metrics["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssov_train.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", type=Path)
    ap.add_argument("--frames", type=int, default=12, help="keyframes of the synthetic scene")
    args = ap.parse_args(argv)
    out: Path = args.out
    t0 = time.perf_counter()

    print("== 1/3 real nuScenes sample (box teacher) ==")
    real = _run_stage(_stage("superpoints_sample.yaml", out / "real_sample", REPO / "data" / "nuscenes_sample"),
                      out / "real_sample", "real sample")

    print("== 2/3 synthetic world (oracle teacher) ==")
    from .data.synthetic import generate_world

    world = out / "synthetic" / "world"
    if not (world / "v1.0-synthetic").exists():
        generate_world(world, name="synthetic", num_scenes=1, frames_per_scene=args.frames, seed=DEMO_WORLD_SEED,
                       splits={"train": ["scene-0000"]})
    synth = _run_stage(_stage("superpoints_synthetic.yaml", out / "synthetic", world), out / "synthetic",
                       "synthetic")

    print("== 3/3 the demo model on that world ==")
    model = _segment_with_demo_model(world, out / "synthetic")

    summary = {
        "real_sample": {k: real.get(k) for k in ("num_points", "paired_fraction", "labelled_fraction",
                                                 "box_points_labelled_fraction", "box_points_accuracy")},
        "synthetic": {k: synth.get(k) for k in ("num_samples", "num_points", "paired_fraction", "labelled_fraction",
                                                "miou_labelled_points", "miou_all_points")},
        "demo_model": model,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    pictures = [p for p in sorted(out.rglob("*.png")) if "world" not in p.parts and "teacher" not in p.parts]
    print("\nPictures:\n  " + "\n  ".join(str(p) for p in pictures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
