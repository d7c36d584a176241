"""The method's ablation, reproduced end to end on a synthetic world (`ssov-train ablation`).

world -> oracle teacher (default corruption) -> superpoints -> four rows, all evaluated on the val split
over every point (points no camera sees count, as in the nuScenes protocol):

1. the pseudo-labels themselves (unlabelled points count as misses),
2. annotation-free training from scratch,
3. TMP pre-training + annotation-free training,
4. the same + AFI at inference.

Writes ``ablation.md`` (table + the exact command), ``ablation.json`` and ``ablation.png`` (per-class IoU).
Every step resumes: rerunning after an interruption skips what is done.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import load_config
from .io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]


@dataclass
class AblationPlan:
    out: Path
    train_scenes: int = 32
    val_scenes: int = 8
    frames: int = 10
    image_width: int = 640
    image_height: int = 360
    pretrain_epochs: int = 4
    train_epochs: int = 4
    arch: str = "MinkUNet18"
    width: float = 0.5
    batch_size: int = 2
    max_steps_per_epoch: int | None = None
    seed: int = 0


def _stage_overrides(plan: AblationPlan, world: Path) -> dict:
    return {"dataset.root": str(world), "teacher.root": str(plan.out / "teacher_oracle"),
            "output": str(plan.out / "superpoints")}


def _train_overrides(plan: AblationPlan, world: Path, output: Path, epochs: int) -> dict:
    """Overrides of a synthetic training config for this ablation (the teacher only matters for TMP)."""
    return {"dataset.root": str(world), "superpoints": str(plan.out / "superpoints"), "output": str(output),
            "model.arch": plan.arch, "model.width": plan.width, "optim.epochs": epochs,
            "optim.batch_size": plan.batch_size, "optim.max_steps_per_epoch": plan.max_steps_per_epoch,
            "optim.num_workers": 0, "seed": plan.seed, "val_split": None, "eval_split": "val"}


def _train(cfg_name: str, overrides: dict, pretraining: Path | None = None) -> Path:
    from .training.engine import train
    from .training.stages import TrainConfig, build_task

    cfg = load_config(TrainConfig, REPO / "config" / cfg_name, overrides)
    last = Path(cfg.output) / "last.pt"
    resume = last.exists()
    result = train(build_task(cfg, pretraining), resume=resume)
    return Path(result["last"])


def _evaluate(cfg_name: str, overrides: dict, checkpoint: Path, afi: bool) -> dict:
    from .training.stages import TrainConfig, run_evaluation

    cfg = load_config(TrainConfig, REPO / "config" / cfg_name, overrides)
    return run_evaluation(cfg, checkpoint, afi=afi)


def run_ablation(plan: AblationPlan) -> dict:
    from .data.synthetic import generate_world
    from .data.synthetic.world import scene_name
    from .evaluation.plots import iou_bar_chart
    from .pipeline import Stage, SuperpointsStageConfig, run_report, run_superpoints_stage, run_teach
    from .vocab import load_dictionary

    t0 = time.perf_counter()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    names = [scene_name(i) for i in range(plan.train_scenes + plan.val_scenes)]
    if not (world / "v1.0-synthetic").exists():
        generate_world(world, name="synthetic", num_scenes=len(names), frames_per_scene=plan.frames, seed=plan.seed,
                       image_width=plan.image_width, image_height=plan.image_height,
                       splits={"train": names[:plan.train_scenes], "val": names[plan.train_scenes:]})

    pseudo: dict = {}
    for split in ("train", "val"):
        overrides = {**_stage_overrides(plan, world), "dataset.split": split}
        stage = Stage.from_config(load_config(SuperpointsStageConfig, REPO / "config" / "superpoints_synthetic.yaml",
                                              overrides))
        failures = run_teach(stage)
        result = run_superpoints_stage(stage)
        if failures or result.failed:
            raise RuntimeError(f"ablation: {split} samples failed: {(failures + result.failed)[:3]}")
        pseudo[split] = run_report(stage)

    af_scratch = _train("annotation_free_synthetic.yaml",
                        _train_overrides(plan, world, out / "annotation_free_scratch", plan.train_epochs))
    tmp = _train("pretrain_synthetic.yaml", {**_train_overrides(plan, world, out / "pretrain", plan.pretrain_epochs),
                                             "teacher.root": str(out / "teacher_oracle")})
    af_tmp = _train("annotation_free_synthetic.yaml",
                    _train_overrides(plan, world, out / "annotation_free_tmp", plan.train_epochs), pretraining=tmp)
    eval_overrides = _train_overrides(plan, world, out / "unused", plan.train_epochs)
    rows = {
        "pseudo-labels (oracle teacher)": _pseudo_row(pseudo["val"]),
        "annotation-free, from scratch": _evaluate("annotation_free_synthetic.yaml", eval_overrides, af_scratch, False),
        "TMP + annotation-free": _evaluate("annotation_free_synthetic.yaml", eval_overrides, af_tmp, False),
        "TMP + annotation-free + AFI": _evaluate("annotation_free_synthetic.yaml", eval_overrides, af_tmp, True),
    }
    dictionary = load_dictionary("nuscenes")
    per_class = {name: [np.nan if r["per_class_iou"].get(c) is None else r["per_class_iou"][c]
                        for c in dictionary.eval_classes] for name, r in rows.items()}
    iou_bar_chart(per_class, dictionary.eval_classes, dictionary.palette, out / "ablation.png",
                  title=f"Synthetic-world ablation: val split, {plan.val_scenes} scenes x {plan.frames} frames, "
                        "IoU over all points")
    summary = {"plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(plan).items()},
               "rows": {name: {"miou": r["miou"], "per_class_iou": r["per_class_iou"]} for name, r in rows.items()},
               "pseudo_labels_val_labelled_points_miou": pseudo["val"].get("miou_labelled_points"),
               "pseudo_labels_val_labelled_fraction": pseudo["val"].get("labelled_fraction"),
               "minutes": round((time.perf_counter() - t0) / 60, 1)}
    # The TMP + annotation-free model, without optimiser state: the demo weights the node and `make demo` use.
    from .training.checkpoint import load_checkpoint, save_checkpoint, without_training_state

    save_checkpoint(out / "model.pt", without_training_state(load_checkpoint(af_tmp)))
    summary["model"] = str(out / "model.pt")
    write_json_atomic(out / "ablation.json", summary)
    write_text_atomic(out / "ablation.md", _markdown(summary, plan))
    return summary


def _pseudo_row(report: dict) -> dict:
    """The pseudo-labels scored like a student: all val points, unlabelled ones count as misses."""
    return {"miou": report["miou_all_points"], "per_class_iou": report["per_class_iou_all_points"]}


def _markdown(summary: dict, plan: AblationPlan) -> str:
    cmd = "ssov-train ablation " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in summary["plan"].items()
        if v is not None and k != "seed")
    lines = ["| row | val mIoU (all points) |", "|---|---|"]
    for name, r in summary["rows"].items():
        lines.append(f"| {name} | {100 * r['miou']:.1f} |")
    lab = summary["pseudo_labels_val_labelled_points_miou"]
    return ("\n".join(lines) + "\n\n"
            f"Pseudo-labels cover {100 * summary['pseudo_labels_val_labelled_fraction']:.0f}% of the val points "
            f"(mIoU {100 * lab:.1f} on those). {plan.arch} width {plan.width}, {plan.pretrain_epochs} TMP epochs, "
            f"{plan.train_epochs} annotation-free epochs; {summary['minutes']} min on this machine.\n\n"
            f"Command: `{cmd}`\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ssov-train ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = AblationPlan(out=Path("runs/ablation"))
    ap.add_argument("--out", type=Path, default=defaults.out)
    for name in ("train_scenes", "val_scenes", "frames", "image_width", "image_height", "pretrain_epochs",
                 "train_epochs", "batch_size", "max_steps_per_epoch"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    ap.add_argument("--arch", default=defaults.arch, choices=["MinkUNet18", "MinkUNet34C"])
    ap.add_argument("--width", type=float, default=defaults.width)
    args = ap.parse_args(argv)
    summary = run_ablation(AblationPlan(**vars(args)))
    print((args.out / "ablation.md").read_text())
    print(json.dumps({k: round(100 * v["miou"], 1) for k, v in summary["rows"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
