"""``ssov-train``: the offline pipeline's command line (one subcommand per stage)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .errors import SsovError
from .jobs import INTERRUPTED_EXIT, Interrupted, configure_threads


def _shard(text: str) -> tuple[int, int]:
    """'i/n' with 1-based i, as users count machines: --shard 2/4 is the second of four."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like 2/4, got {text!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= i <= n")
    return i - 1, n


def _override(text: str) -> tuple[str, object]:
    """'a.b=value' with the value parsed as YAML (so numbers, booleans and lists keep their types)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _load_stage(args):
    from .config import load_config
    from .pipeline import Stage, SuperpointsStageConfig

    overrides = dict(args.set or [])
    if getattr(args, "split", None):
        overrides["dataset.split"] = args.split
    if getattr(args, "output", None):
        overrides["output"] = args.output
    return Stage.from_config(load_config(SuperpointsStageConfig, args.cfg, overrides))


def cmd_synth(args) -> int:
    from .data.synthetic import generate_world

    path = generate_world(args.out, name=args.name, num_scenes=args.scenes, frames_per_scene=args.frames,
                          seed=args.seed, image_width=args.width, image_height=args.height, lidar=args.sensor,
                          street=args.street, overwrite=args.overwrite)
    print(f"synthetic world written to {path}")
    return 0


def cmd_teach(args) -> int:
    from .pipeline import run_teach

    stage = _load_stage(args)
    failures = run_teach(stage, shard=args.shard, overwrite=args.overwrite)
    print(f"teacher outputs in {stage.cfg.teacher.root}")
    return _report_failures(failures)


def cmd_fuse(args) -> int:
    from .openvocab.fusion import FusionRun, run_fusion

    stage = _load_stage(args)
    out = Path(args.out)
    tokens, teacher = stage.tokens(), stage.teacher()  # each call re-lists the split / re-opens the teacher
    result = run_fusion(stage.reader, tokens, teacher, out,
                        FusionRun(source=args.source, projection=stage.cfg.projection), split=stage.cfg.dataset.split,
                        shard=args.shard, overwrite=args.overwrite)
    print(f"fused features: {len(result.done)} computed, {len(result.skipped)} already present, "
          f"{len(result.failed)} failed in {result.seconds:.1f} s -> {out}")
    if args.evaluate:
        from .inference import Segmenter, open_backend
        from .openvocab.ensemble import evaluate_open_vocabulary

        text = teacher.text_embeddings()
        if text is None:
            from .errors import DataError

            raise DataError(f"teacher outputs at {stage.cfg.teacher.root} have no text embeddings to classify with")
        results = evaluate_open_vocabulary(Segmenter(open_backend(args.evaluate)), stage.reader, tokens, out,
                                           text, stage.dictionary, out / f"eval_{stage.cfg.dataset.split}")
        for mode, m in results.items():
            miou = m["miou"]
            print(f"  {mode:9s} mIoU {'n/a' if miou is None else f'{100 * miou:.2f}'}")
    return _report_failures(result.failed)


def cmd_query(args) -> int:
    from .openvocab.query import load_scan, run_query

    if args.scan:
        xyz, intensity = load_scan(args.scan)
        name = Path(args.scan).name
    else:
        stage = _load_stage(args)
        token = args.sample or stage.tokens()[0]
        frame = stage.reader.load(token)
        xyz, intensity, name = frame.points, frame.intensity, f"{frame.dataset} {token}"
    summary = run_query(Path(args.resume_path), args.text, xyz, intensity, Path(args.out),
                        embeddings=args.embeddings, text_encoder=args.text_encoder, backend=args.backend,
                        scan_name=name)
    print(f"query {args.text!r}: {summary['description']}; scores {summary['score_min']:.3f}..{summary['score_max']:.3f} "
          f"over {summary['num_points']} points -> {summary['files']['heatmap']}")
    return 0


def cmd_superpoints(args) -> int:
    from .pipeline import run_report, run_superpoints_stage

    stage = _load_stage(args)
    result = run_superpoints_stage(stage, shard=args.shard, overwrite=args.overwrite)
    n = len(result.done)
    print(f"superpoints: {n} computed, {len(result.skipped)} already present, {len(result.failed)} failed "
          f"in {result.seconds:.1f} s ({n / max(result.seconds, 1e-9):.1f} samples/s) -> {stage.cfg.output}")
    if args.shard[1] == 1 and not args.no_report:
        _print_report(run_report(stage))
    return _report_failures(result.failed)


def cmd_report(args) -> int:
    from .pipeline import run_report

    _print_report(run_report(_load_stage(args)))
    return 0


def cmd_overlay(args) -> int:
    from .pipeline import render_overlay

    stage = _load_stage(args)
    out = render_overlay(stage, args.sample, Path(args.out), color_by=args.color_by)
    print(f"overlay written to {out}")
    return 0


def _load_train_config(args, stages: tuple[str, ...]):
    """The stage config of a training command; a config of another stage gets one clear error."""
    from .config import load_config
    from .errors import ConfigError
    from .training.stages import TrainConfig

    overrides = dict(args.set or [])
    if getattr(args, "output", None):
        overrides["output"] = args.output
    if getattr(args, "keep_checkpoints", None) is not None:
        overrides["keep_checkpoints"] = args.keep_checkpoints
    if getattr(args, "device", None):
        overrides["device"] = args.device
    if getattr(args, "amp", False):
        overrides["amp"] = True
    cfg = load_config(TrainConfig, args.cfg, overrides)
    if cfg.stage not in stages:
        raise ConfigError(f"{args.cfg} configures stage {cfg.stage}; `ssov-train {args.command}` runs "
                          f"{' / '.join(stages)} configs")
    return cfg


def cmd_train(args) -> int:
    from .training.engine import train
    from .training.stages import build_task

    from .device import resolve_device

    stage = args.command.replace("-", "_")
    cfg = _load_train_config(args, (stage,))
    resolve_device(cfg.device)  # a device that cannot work is one error before the data is opened
    task = build_task(cfg, getattr(args, "pretraining_path", None))
    if task.init_report:
        print(task.init_report)
    result = train(task, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary line
        print(f"{stage}: {result['epoch']} epochs, {result['global_step']} steps -> {result['last']}")
    return 0


def cmd_evaluate(args) -> int:
    from .training.stages import run_evaluation

    cfg = _load_train_config(args, ("annotation_free", "downstream"))
    if not (args.model or args.resume_path):
        from .errors import ConfigError

        raise ConfigError("evaluate: give the model with --model (or --resume-path)")
    metrics = run_evaluation(cfg, Path(args.model or args.resume_path), Path(args.out) if args.out else None,
                             afi=args.afi, backend=args.backend, afi_input=args.afi_input)
    miou = metrics["miou"]
    print(f"mIoU {'n/a' if miou is None else f'{100 * miou:.2f}'} over {metrics['num_scans']} scans "
          f"-> {metrics['files']['json']}")
    return 0



def cmd_realcheck(args) -> int:
    from .evaluation.realcheck import parse_model_argument, run_realcheck, text_report

    doc = run_realcheck([parse_model_argument(m) for m in args.model], args.out, args.data, variants=args.inputs,
                        backend=args.backend, afi=not args.no_afi, figures=not args.no_figures)
    print(text_report(doc))
    print("\n" + ", ".join([str(Path(args.out) / "realcheck.json"), str(Path(args.out) / "realcheck.md"),
                            *(v for k, v in doc.get("files", {}).items() if k in ("bev", "box_accuracy"))]))
    return 0

def _print_report(report: dict) -> None:
    keys = ["num_samples", "num_missing", "paired_fraction", "labelled_fraction", "miou_labelled_points",
            "miou_all_points", "accuracy_labelled_points", "box_points", "box_points_labelled_fraction",
            "box_points_accuracy"]
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=1))
    print("report: " + ", ".join(report["files"].values()))


def _report_failures(failures) -> int:
    if not failures:
        return 0
    print(f"\n{len(failures)} item(s) skipped:", file=sys.stderr)
    for token, reason in failures:
        print(f"  {token}: {reason}", file=sys.stderr)
    return 1


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number >= 1, got {text!r}")
    return n


DEVICE_HELP = ("auto | cpu | cuda | cuda:N (config `device`; auto: CUDA when torch sees a GPU and spconv is a CUDA "
               "build, else the CPU, saying why; under torchrun each process takes cuda:<LOCAL_RANK>)")


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_threads, metavar="N",
                        help="torch CPU threads (default: 1 on machines with <= 2 cores, where more threads wait "
                             "on each other; torch's default otherwise; OMP_NUM_THREADS, when set, is kept)")
    return common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssov-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = _common_options()

    def add_command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    s = add_command("synth", help="generate a synthetic nuScenes-format world")
    s.add_argument("--out", required=True, help="dataset root to create")
    s.add_argument("--name", default="synthetic", help="version name: tables go to v1.0-<name>")
    s.add_argument("--scenes", type=int, default=2)
    s.add_argument("--frames", type=int, default=40, help="keyframes per scene")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--width", type=int, default=None, help="camera image width (default: the generator's)")
    s.add_argument("--height", type=int, default=None)
    s.add_argument("--sensor", default=None, metavar="PRESET[,PRESET...]|all",
                   help="lidar presets of config/sensors.yaml (nuscenes_hdl32e, vlp16, hdl64e, os1_128; default: "
                        "its default, the nuScenes HDL-32E); with several, scene i is swept by the (i mod n)-th")
    s.add_argument("--street", default="classic",
                   help="street style: classic (today's streets) or varied (verges, terrain, houses, roadworks, "
                        "every object class on every street)")
    s.add_argument("--overwrite", action="store_true", help="replace a world already at --out")
    s.set_defaults(func=cmd_synth)

    def stage_parser(name: str, help_: str, func, shardable: bool = False):
        sp = add_command(name, help=help_)
        sp.add_argument("--cfg", required=True, help="stage config YAML (config/superpoints_*.yaml)")
        sp.add_argument("--split", help="override dataset.split")
        sp.add_argument("--output", help="override output")
        sp.add_argument("--set", action="append", type=_override, metavar="KEY=VALUE",
                        help="override any config value, e.g. --set projection.multi_camera=last (repeatable)")
        if shardable:
            sp.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: process the i-th of n shards")
            sp.add_argument("--overwrite", action="store_true", help="recompute samples already done")
        sp.set_defaults(func=func)
        return sp

    te = stage_parser("teach", "run the config's built-in teacher (oracle | boxes | openclip | catseg | san | fcclip) "
                               "over the split", cmd_teach, True)
    te.set_defaults(shard=None)  # no --shard: under torchrun each process takes its RANK's shard
    fu = stage_parser("fuse", "multi-view fusion of the teacher's 2D features onto points (open vocabulary)",
                      cmd_fuse, True)
    fu.add_argument("--out", required=True, help="output directory of the fused features")
    fu.add_argument("--source", choices=["mask", "pixel"], default="mask",
                    help="mask features (every teacher) or per-pixel features (teachers that store them)")
    fu.add_argument("--evaluate", type=Path, metavar="MODEL",
                    help="then score a feature (TMP) model in fusion / distill / ensemble modes on the split")
    sp = stage_parser("superpoints", "pairings, superpoints and pseudo-labels for the split", cmd_superpoints, True)
    sp.add_argument("--no-report", action="store_true", help="skip the quality report at the end")
    stage_parser("report", "pseudo-label quality report (JSON + PNG) of computed superpoints", cmd_report)
    ov = stage_parser("overlay", "PNG of a scan's points projected on its camera images", cmd_overlay)
    ov.add_argument("--sample", help="sample token (default: first of the split)")
    ov.add_argument("--out", required=True, help="PNG path")
    ov.add_argument("--color-by", choices=["depth", "pseudo_label"], default="depth")

    def train_parser(name: str, help_: str, pretraining: bool):
        sp = add_command(name, help=help_)
        sp.add_argument("--cfg", required=True, help="stage config YAML (config/{pretrain,annotation_free,semseg}_*.yaml)")
        sp.add_argument("--output", help="override output (the run directory)")
        sp.add_argument("--set", action="append", type=_override, metavar="KEY=VALUE",
                        help="override any config value, e.g. --set optim.epochs=2 (repeatable)")
        sp.add_argument("--resume", action="store_true", help="continue the run in the output directory from last.pt")
        sp.add_argument("--keep-checkpoints", type=int, metavar="N",
                        help="keep only the newest N epoch_NNN.pt files (config keep_checkpoints; last.pt and "
                             "best.pt are always kept)")
        sp.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
        sp.add_argument("--amp", action="store_true",
                        help="mixed precision on CUDA: fp16 autocast + gradient scaling (config `amp`; off by default)")
        if pretraining:
            sp.add_argument("--pretraining-path", type=Path,
                            help="checkpoint to initialise from (all shape-matching weights; a TMP head is skipped)")
        sp.set_defaults(func=cmd_train)
        return sp

    train_parser("pretrain", "TMP pre-training: superpoints x teacher mask features x text", False)
    train_parser("annotation-free", "distil the teacher's pseudo-labels into the 3D network", True)
    train_parser("downstream", "finetune (dataset_skip_step) or linear-probe (freeze_layers) on ground truth", True)
    ev = add_command("evaluate", help="mIoU of a checkpoint on the config's eval_split, every point of every scan")
    ev.add_argument("--cfg", required=True, help="the annotation_free / semseg config the checkpoint was trained with")
    ev.add_argument("--resume-path", help="checkpoint to evaluate")
    ev.add_argument("--model", help="checkpoint or exported model package (ssov-export) to evaluate; its network, "
                                    "voxel grid and input come from the file, not from --cfg")
    ev.add_argument("--backend", default="auto",
                    help="inference backend: auto | torch | onnxruntime | tensorrt | cpu-gemm")
    ev.add_argument("--afi", action="store_true", help="refine predictions with AFI before scoring")
    ev.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP + "; for a checkpoint (spconv), a package runs "
                                                       "where its --backend runs")
    ev.add_argument("--afi-input", default="labels", choices=["labels", "probabilities"],
                    help="what AFI refines: the predicted labels, one-hot (the reference; default) or the softmax "
                         "probabilities")
    ev.add_argument("--out", help="output directory (default: <config output>/eval_<model>_<split>[_afi or "
                                  "_afi_probs], under runs/)")
    ev.add_argument("--set", action="append", type=_override, metavar="KEY=VALUE", help="override a config value")
    ev.set_defaults(func=cmd_evaluate)
    rc = add_command("realcheck", help="plausibility checks on the shipped real nuScenes keyframe, models side by "
                                       "side: box accuracy, flat share of low points, ego lane, vehicle share")
    rc.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                    help="checkpoint (.pt) or exported model package (.ssovpkg); repeat to compare models "
                         "(NAME labels it in the tables, default: the file name)")
    rc.add_argument("--data", type=Path, default=Path("data/nuscenes_sample"),
                    help="single-sample folder (sample.json with boxes; default: the shipped keyframe)")
    rc.add_argument("--out", type=Path, default=Path("runs/realcheck"),
                    help="output folder: realcheck.json, realcheck.md, bev_labels.png, box_accuracy.png")
    from .evaluation.realcheck import VARIANTS

    rc.add_argument("--inputs", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="input variants (default: all): " + "; ".join(f"{v.name}: {v.description}"
                                                                     for v in VARIANTS.values()))
    rc.add_argument("--backend", default="auto", help="inference backend: auto | torch | onnxruntime | tensorrt")
    rc.add_argument("--no-afi", action="store_true", help="raw network labels (default: AFI on, as the node runs it)")
    rc.add_argument("--no-figures", action="store_true", help="tables only, no PNGs")
    rc.set_defaults(func=cmd_realcheck)
    q = add_command("query", help="score every point of a scan against a text (heat-map PNG + per-point scores)")
    q.add_argument("--resume-path", required=True, type=Path, help="model file (ssov checkpoint or model package)")
    q.add_argument("--text", required=True, help="the query, e.g. 'traffic cone'")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--scan", type=Path, help="a .pcd.bin (nuScenes), .bin (KITTI) or .npy (N, 3+) point cloud")
    src.add_argument("--cfg", help="a superpoints-stage config: query a sample of its dataset")
    q.add_argument("--sample", help="sample token with --cfg (default: the first of the split)")
    q.add_argument("--split", help="override dataset.split (with --cfg)")
    q.add_argument("--set", action="append", type=_override, metavar="KEY=VALUE", help="override a config value")
    q.add_argument("--out", required=True, help="output directory (scores.npy, query.json, heatmap.png)")
    q.add_argument("--embeddings", type=Path,
                   help="feature models: text-embedding table (.npz) or teacher-output directory")
    q.add_argument("--text-encoder", type=Path,
                   help="feature models: YAML with the open_clip teacher's settings (teacher.openclip), for any text")
    q.add_argument("--backend", default="auto", help="inference backend (auto: by model file type)")
    q.set_defaults(func=cmd_query)
    # Listed for --help only: main() hands `ablation ...` to ssov_train.ablation, which has its own options.
    add_command("ablation", help="the method's ablation end to end on a synthetic world "
                                    "(`ssov-train ablation -h` for its options)")
    return p


# How each command continues after Ctrl-C: training resumes from last.pt, the per-sample stages and the
# ablation skip what is done, synth publishes its world only when whole; the others simply run again.
_TRAIN_COMMANDS = ("pretrain", "annotation-free", "downstream")
_SKIPS_DONE_WORK = ("teach", "superpoints", "fuse", "ablation")


def continue_command(command: str, argv: list[str], resumable: bool = True) -> str:
    """The hint after Ctrl-C: what to type to continue ``ssov-train <argv>`` (shell-quoted)."""
    args = list(argv)
    if command in _TRAIN_COMMANDS:
        if not resumable:  # no epoch finished: nothing to resume, start again
            return "start again with: " + shlex.join(["ssov-train", *[a for a in args if a != "--resume"]])
        return "resume with: " + shlex.join(["ssov-train", *args, *([] if "--resume" in args else ["--resume"])])
    if command in _SKIPS_DONE_WORK:  # --overwrite would redo what is done
        return "resume with: " + shlex.join(["ssov-train", *[a for a in args if a != "--overwrite"]])
    return "start again with: " + shlex.join(["ssov-train", *args])


def _interrupted(command: str, argv: list[str], error: KeyboardInterrupt) -> int:
    """One line for Ctrl-C (the rank 0 process's, under torchrun), instead of a traceback."""
    where = f" {error.where}" if isinstance(error, Interrupted) else ""
    resumable = error.resumable if isinstance(error, Interrupted) else True
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nssov-train {command}: interrupted{where}; {continue_command(command, argv, resumable)}",
              file=sys.stderr, flush=True)
    return INTERRUPTED_EXIT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ablation"]:
        from .ablation import main as ablation_main

        threads, rest = _common_options().parse_known_args(argv[1:])
        try:
            configure_threads(threads.threads)
            return ablation_main(rest)
        except SsovError as e:
            print(f"ssov-train ablation: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            return _interrupted("ablation", argv, e)
    args = build_parser().parse_args(argv)
    try:
        configure_threads(args.threads)
        return args.func(args)
    except SsovError as e:
        print(f"ssov-train {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(args.command, argv, e)


if __name__ == "__main__":
    sys.exit(main())
