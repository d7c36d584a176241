"""The method's ablation, reproduced end to end on a synthetic world (`ssov-train ablation`).

world (scene i swept by the (i mod n)-th of ``--sensors``) -> oracle teacher (default corruption) ->
superpoints -> the rows below, all evaluated on the val split over every point (points no camera sees count,
as in the nuScenes protocol), overall and per lidar preset:

1. the pseudo-labels themselves (unlabelled points count as misses),
2. annotation-free training from scratch (``--no-scratch`` leaves it out),
3. TMP pre-training + annotation-free training,
4. the same + AFI at inference, fed the labels (one-hot, the reference) and fed the probabilities.

The networks take the input of the training configs (``config/pretrain_synthetic.yaml``,
``config/annotation_free_synthetic.yaml``: per-cloud normalised intensity with sensor and dropout
augmentation).  Writes ``ablation.md`` (table + the exact command), ``ablation.json``, ``ablation.png``
(per-class IoU) and ``curves.png`` (training curves).  Every step resumes: rerunning after an interruption
skips what is done.
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
    sensors: str = "all"  # lidar presets of config/sensors.yaml ('a,b' or 'all'); scene i takes the (i mod n)-th
    street: str = "varied"
    lr: float | None = None  # annotation-free trunk learning rate (None: the config's)
    lr_head: float | None = None  # annotation-free head learning rate (None: the config's)
    scratch: bool = True  # the "from scratch" row (one more annotation-free training)
    seed: int = 0


def _stage_overrides(plan: AblationPlan, world: Path) -> dict:
    return {"dataset.root": str(world), "teacher.root": str(plan.out / "teacher_oracle"),
            "output": str(plan.out / "superpoints")}


def _train_overrides(plan: AblationPlan, world: Path, output: Path, epochs: int) -> dict:
    """Overrides of a synthetic training config for this ablation (the teacher only matters for TMP)."""
    return {"dataset.root": str(world), "superpoints": str(plan.out / "superpoints"), "output": str(output),
            "model.arch": plan.arch, "model.width": plan.width, "optim.epochs": epochs,
            "optim.batch_size": plan.batch_size, "optim.max_steps_per_epoch": plan.max_steps_per_epoch,
            "optim.num_workers": 0, "seed": plan.seed, "val_split": None, "eval_split": "val",
            "keep_checkpoints": 0}


def _annotation_free_overrides(plan: AblationPlan, world: Path, output: Path, validate: bool = False) -> dict:
    overrides = _train_overrides(plan, world, output, plan.train_epochs)
    if plan.lr is not None:
        overrides["optim.lr"] = plan.lr
    if plan.lr_head is not None:
        overrides["optim.lr_head"] = plan.lr_head
    if validate:  # per-epoch val mIoU (ground truth, monitoring only): the training curves
        overrides["val_split"] = "val"
    return overrides


def _train(cfg_name: str, overrides: dict, pretraining: Path | None = None) -> Path:
    from .training.engine import train
    from .training.stages import TrainConfig, build_task

    cfg = load_config(TrainConfig, REPO / "config" / cfg_name, overrides)
    last = Path(cfg.output) / "last.pt"
    resume = last.exists()
    result = train(build_task(cfg, pretraining), resume=resume)
    return Path(result["last"])


def _evaluate(cfg_name: str, overrides: dict, checkpoint: Path, out_dir: Path, presets: tuple[str, ...],
              afi: bool = False, afi_input: str = "labels") -> dict:
    """mIoU over the val split (every point) and per lidar preset: one evaluation per preset's val scenes,
    the confusion matrices summed for the whole split."""
    from .evaluation.metrics import iou_by_class, mean_iou, none_if_nan
    from .training.stages import TrainConfig, run_evaluation

    cfg = load_config(TrainConfig, REPO / "config" / cfg_name, overrides)
    total, per_preset, classes = None, {}, None
    for preset in presets:
        split = _val_split(preset, presets)
        cfg.eval_split = split
        m = run_evaluation(cfg, checkpoint, out_dir=out_dir / split, afi=afi, afi_input=afi_input)
        cm = np.asarray(m["confusion"]["matrix"], np.int64)
        total = cm if total is None else total + cm
        per_preset[preset] = m["miou"]
        classes = m["confusion"]["classes"][1:]
    return {"miou": none_if_nan(mean_iou(total)), "per_class_iou": iou_by_class(total, classes),
            "per_preset": per_preset}


def _val_split(preset: str, presets: tuple[str, ...]) -> str:
    """The val split of one preset's scenes (the whole val split when there is one preset)."""
    return "val" if len(presets) == 1 else f"val_{preset}"


def _pseudo_by_preset(out: Path, reader, dictionary, presets: tuple[str, ...]) -> dict:
    """The val pseudo-labels scored per preset like a student: every point, unlabelled ones count as misses."""
    from .evaluation.metrics import confusion_matrix, mean_iou, none_if_nan
    from .superpoints import load_superpoints, sample_path

    result = {}
    for preset in presets:
        cm = np.zeros((dictionary.num_classes,) * 2, np.int64)
        for token in reader.split_tokens(_val_split(preset, presets)):
            frame = reader.load(token)
            sp = load_superpoints(sample_path(out / "superpoints", token), arrays=("pseudo_label",))
            cm += confusion_matrix(frame.labels, sp.pseudo_label, dictionary.num_classes)
        result[preset] = none_if_nan(mean_iou(cm))
    return result


def run_ablation(plan: AblationPlan) -> dict:
    from .data import DatasetConfig, open_dataset
    from .data.synthetic import generate_world
    from .data.synthetic.presets import resolve_presets
    from .data.synthetic.world import scene_name
    from .evaluation.plots import iou_bar_chart, training_curves
    from .pipeline import Stage, SuperpointsStageConfig, run_report, run_superpoints_stage, run_teach
    from .vocab import load_dictionary

    t0 = time.perf_counter()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    names = [scene_name(i) for i in range(plan.train_scenes + plan.val_scenes)]
    presets = resolve_presets(plan.sensors)
    splits = {"train": names[:plan.train_scenes], "val": names[plan.train_scenes:]}
    if len(presets) > 1:  # scene i is swept by preset i mod n (generate_world)
        for k, preset in enumerate(presets):
            splits[_val_split(preset, presets)] = [n for i, n in enumerate(names)
                                                   if i >= plan.train_scenes and i % len(presets) == k]
        empty = [name for name, scenes in splits.items() if not scenes]
        if empty:
            raise ValueError(f"ablation: no scenes for {empty}: give at least {len(presets)} val scenes")
    if not (world / "v1.0-synthetic").exists():
        generate_world(world, name="synthetic", num_scenes=len(names), frames_per_scene=plan.frames, seed=plan.seed,
                       image_width=plan.image_width, image_height=plan.image_height, splits=splits,
                       lidar=list(presets), street=plan.street)

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

    dictionary = load_dictionary("nuscenes")
    reader = open_dataset(DatasetConfig(kind="nuscenes", root=world, version="v1.0-synthetic", split="val"),
                          dictionary)
    tmp = _train("pretrain_synthetic.yaml", {**_train_overrides(plan, world, out / "pretrain", plan.pretrain_epochs),
                                             "teacher.root": str(out / "teacher_oracle")})
    af_tmp = _train("annotation_free_synthetic.yaml",
                    _annotation_free_overrides(plan, world, out / "annotation_free_tmp", validate=True),
                    pretraining=tmp)
    af_scratch = (_train("annotation_free_synthetic.yaml",
                         _annotation_free_overrides(plan, world, out / "annotation_free_scratch"))
                  if plan.scratch else None)
    eval_overrides = _train_overrides(plan, world, out / "unused", plan.train_epochs)
    cfg_name, evals = "annotation_free_synthetic.yaml", out / "eval"
    rows = {"pseudo-labels (oracle teacher)": {**_pseudo_row(pseudo["val"]),
                                               "per_preset": _pseudo_by_preset(out, reader, dictionary, presets)}}
    if af_scratch is not None:
        rows["annotation-free, from scratch"] = _evaluate(cfg_name, eval_overrides, af_scratch, evals / "scratch",
                                                          presets)
    rows["TMP + annotation-free"] = _evaluate(cfg_name, eval_overrides, af_tmp, evals / "tmp", presets)
    rows["TMP + annotation-free + AFI (labels)"] = _evaluate(cfg_name, eval_overrides, af_tmp, evals / "tmp_afi",
                                                             presets, afi=True)
    rows["TMP + annotation-free + AFI (probabilities)"] = _evaluate(
        cfg_name, eval_overrides, af_tmp, evals / "tmp_afi_probs", presets, afi=True, afi_input="probabilities")
    per_class = {name: [np.nan if r["per_class_iou"].get(c) is None else r["per_class_iou"][c]
                        for c in dictionary.eval_classes] for name, r in rows.items()}
    iou_bar_chart(per_class, dictionary.eval_classes, dictionary.palette, out / "ablation.png",
                  title=f"Synthetic-world ablation: val split, {plan.val_scenes} scenes x {plan.frames} frames, "
                        "IoU over all points")
    training_curves({"TMP pre-training": out / "pretrain", "annotation-free (after TMP)": out / "annotation_free_tmp",
                     **({"annotation-free, from scratch": out / "annotation_free_scratch"} if plan.scratch else {})},
                    out / "curves.png", pseudo_miou=rows["pseudo-labels (oracle teacher)"]["miou"])
    summary = {"plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(plan).items()},
               "presets": list(presets),
               "rows": {name: {"miou": r["miou"], "per_class_iou": r["per_class_iou"],
                               "per_preset": r.get("per_preset", {})} for name, r in rows.items()},
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
        (f"--{k.replace('_', '-')}" if v is True else f"--no-{k}" if v is False
         else f"--{k.replace('_', '-')} {shlex.quote(str(v))}")
        for k, v in summary["plan"].items() if v is not None and k != "seed" and not (k == "scratch" and v))
    presets = summary["presets"]
    multi = len(presets) > 1
    lines = ["| row | val mIoU (all points) |" + "".join(f" {p} |" for p in presets if multi),
             "|---|---|" + "---|" * (len(presets) if multi else 0)]
    for name, r in summary["rows"].items():
        cells = "".join(f" {_pct(r['per_preset'].get(p))} |" for p in presets if multi)
        lines.append(f"| {name} | {_pct(r['miou'])} |{cells}")
    lab = summary["pseudo_labels_val_labelled_points_miou"]
    return ("\n".join(lines) + "\n\n"
            f"Pseudo-labels cover {100 * summary['pseudo_labels_val_labelled_fraction']:.0f}% of the val points "
            f"(mIoU {100 * lab:.1f} on those). {plan.arch} width {plan.width}, {plan.pretrain_epochs} TMP epochs, "
            f"{plan.train_epochs} annotation-free epochs; lidar presets {', '.join(presets)}, {plan.street} "
            f"streets; {summary['minutes']} min on this machine.\n\n"
            f"Command: `{cmd}`\n")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


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
    ap.add_argument("--sensors", default=defaults.sensors,
                    help="lidar presets of config/sensors.yaml, 'a,b' or 'all' (scene i takes the (i mod n)-th)")
    ap.add_argument("--street", default=defaults.street, help="synthetic street style: classic | varied")
    ap.add_argument("--lr", type=float, default=None, help="annotation-free trunk learning rate (default: config)")
    ap.add_argument("--lr-head", type=float, default=None, help="annotation-free head learning rate")
    ap.add_argument("--no-scratch", dest="scratch", action="store_false",
                    help="leave out the 'annotation-free, from scratch' row (one training less)")
    args = ap.parse_args(argv)
    summary = run_ablation(AblationPlan(**vars(args)))
    print((args.out / "ablation.md").read_text())
    print(json.dumps({k: None if v["miou"] is None else round(100 * v["miou"], 1)
                      for k, v in summary["rows"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
