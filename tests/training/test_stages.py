"""Stages end to end on the tiny world: pretrain -> annotation-free -> evaluate (+ AFI), downstream / linear
probe initialisation, losses that go down, the CLI's one-line errors, and every shipped config loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ssov_train.cli import main
from ssov_train.config import load_config, to_dict
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.training.data import collate_scans
from ssov_train.training.engine import train
from ssov_train.training.stages import TrainConfig, build_task, run_evaluation

REPO = Path(__file__).resolve().parents[2]
TRAINING_CONFIGS = sorted(p for p in (REPO / "config").glob("*.yaml")
                          if p.name.startswith(("pretrain_", "annotation_free_", "semseg_")))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(TrainConfig, path)
    assert path.name.startswith({"pretrain": "pretrain_", "annotation_free": "annotation_free_",
                                 "downstream": "semseg_"}[cfg.stage])


def test_all_reference_and_synthetic_configs_are_shipped():
    names = {p.stem for p in TRAINING_CONFIGS}
    for teacher in ("catseg", "fcclip", "san", "synthetic"):
        assert {f"pretrain_{teacher}", f"annotation_free_{teacher}"} <= names
    assert {"semseg_nuscenes", "semseg_kitti", "semseg_synthetic"} <= names


def _losses_on_fixed_batch(task, steps: int = 4) -> list[float]:
    batch = collate_scans([task.train_set[0], task.train_set[1]])
    opt = torch.optim.SGD(task.param_groups(), lr=task.cfg.optim.lr, momentum=0.9)
    task.model.train()
    out = []
    for _ in range(steps):
        loss = task.losses(task.model, batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("stage, lr", [("pretrain", 0.1), ("annotation_free", 0.05)])
def test_loss_decreases_on_a_fixed_batch(config_factory, tmp_path, stage, lr):
    task = build_task(config_factory(stage, tmp_path, optim={"lr": lr, "batch_size": 2}, augment={"rotate": False}))
    losses = _losses_on_fixed_batch(task)
    assert losses[-1] < losses[0], losses


def test_pretrain_annotation_free_evaluate_end_to_end(config_factory, tmp_path, world):
    pre = config_factory("pretrain", tmp_path / "pre", optim={"epochs": 1, "batch_size": 2, "lr": 0.1,
                                                               "max_steps_per_epoch": 1})
    pre_yaml = tmp_path / "pre.yaml"
    pre_yaml.write_text(yaml.safe_dump(to_dict(pre)))
    assert main(["pretrain", "--cfg", str(pre_yaml)]) == 0
    run = pre.output
    assert {"last.pt", "epoch_001.pt", "metrics.csv", "config.yaml", "tensorboard"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["stage"] == "pretrain" and ckpt["feature_dim"] == 64 and ckpt["model"]["out_channels"] == 64
    assert ckpt["model"]["normalize_features"] is True and ckpt["input_fields"] == ["intensity"]
    assert ckpt["text_embeddings"]["dim"] == 64 and len(ckpt["palette"]) == len(ckpt["class_names"]) == 17

    af = config_factory("annotation_free", tmp_path / "af", val_split="val",
                        optim={"epochs": 1, "batch_size": 2, "lr": 0.02, "lr_head": 0.5})
    task = build_task(af, run / "last.pt")
    assert "skipped 2" in task.init_report  # the 64-d TMP head
    pre_state = ckpt["state_dict"]
    own = task.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in pre_state.items() if not k.startswith("final."))
    assert [len(g["params"]) for g in task.param_groups()][1] == 2  # head: weight + bias, its own lr
    result = train(task, progress=False)
    assert "val/miou" in result["metrics"]
    assert load_checkpoint(af.output / "last.pt")["model"]["out_channels"] == 17

    metrics = run_evaluation(af, af.output / "last.pt", tmp_path / "eval", progress=False)
    assert {"miou", "per_class_iou", "confusion", "accuracy", "num_points", "files"} <= set(metrics)
    assert metrics["num_scans"] == 3
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "iou.png").exists()
    assert metrics["confusion"]["matrix"][0] == [0] * 17 and all(row[0] == 0 for row in metrics["confusion"]["matrix"])
    with_afi = run_evaluation(af, af.output / "last.pt", tmp_path / "eval_afi", afi=True, progress=False)
    assert with_afi["num_points"] == metrics["num_points"]

    # Downstream from the annotation-free model: same 17 classes, so its head is loaded too (method.md §7).
    probe = config_factory("downstream", tmp_path / "probe", freeze_layers=True,
                           optim={"epochs": 1, "batch_size": 2, "lr": 0.05})
    task = build_task(probe, af.output / "last.pt")
    assert "skipped 0" in task.init_report
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    train(task, progress=False)
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"final.weight", "final.bias"}  # trunk and BN statistics frozen


def test_cli_errors_are_one_line(config_factory, tmp_path, capsys):
    def run(*argv) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    af = config_factory("annotation_free", tmp_path / "af")
    cfg = tmp_path / "af.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(af)))
    assert "does not exist" in run("annotation-free", "--cfg", str(cfg), "--set", "dataset.root=/nonexistent")
    assert "no superpoints" in run("annotation-free", "--cfg", str(cfg), "--set", f"superpoints={tmp_path}/none")
    assert "checkpoint not found" in run("annotation-free", "--cfg", str(cfg), "--pretraining-path",
                                         str(tmp_path / "missing.pt"))
    assert "configures stage annotation_free" in run("pretrain", "--cfg", str(cfg))
    assert "checkpoint not found" in run("evaluate", "--cfg", str(cfg), "--resume-path", str(tmp_path / "x.pt"))
    assert "needs `superpoints:`" in run("annotation-free", "--cfg", str(cfg), "--set", "superpoints=null")


def test_the_intensity_normalisation_travels_in_the_checkpoint(config_factory, tmp_path):
    """A normalised-intensity model: two input channels, its percentile and clip in the checkpoint; a later
    stage with another normalisation or another feature refuses it by name."""
    from ssov_train.errors import ConfigError
    from ssov_train.inference import ModelSpec

    one_step = {"epochs": 1, "batch_size": 2, "lr": 0.1, "max_steps_per_epoch": 1}
    pre = config_factory("pretrain", tmp_path / "pre", feature="normalized_intensity", optim=one_step,
                         augment={"intensity_sensor": True, "intensity_dropout": 0.5})
    train(build_task(pre), progress=False)
    ckpt = load_checkpoint(pre.output / "last.pt")
    assert ckpt["input_fields"] == ["normalized_intensity"] and ckpt["model"]["in_channels"] == 2
    assert ckpt["input_normalization"] == {"percentile": 99.0, "clip": 1.5}
    assert ckpt["state_dict"]["stem_conv.weight"].shape[-1] == 2  # the stem reads both channels
    assert ModelSpec.from_checkpoint(ckpt).input_normalization.percentile == 99.0
    other = config_factory("annotation_free", tmp_path / "af", feature="normalized_intensity",
                           intensity_normalization={"percentile": 95.0, "clip": 1.5})
    with pytest.raises(ConfigError, match="input_normalization"):
        build_task(other, pre.output / "last.pt")
    raw = config_factory("annotation_free", tmp_path / "af_raw")
    with pytest.raises(ConfigError, match="input_fields"):
        build_task(raw, pre.output / "last.pt")
    # a model file whose input needs a normalisation it does not carry is refused at load
    del ckpt["input_normalization"]
    with pytest.raises(ConfigError, match="needs its input_normalization"):
        ModelSpec.from_checkpoint(ckpt)
