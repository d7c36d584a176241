"""Pre-training validation: TMP losses on held-out scans each epoch (no gradients, no side effects on the
weights), the best epoch kept as best.pt, and SLidR's scene-based hold-out split."""

from __future__ import annotations

import csv

import pytest
import torch

from ssov_train.errors import ConfigError
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.training.data import SLIDR_HOLDOUT_SCENES, hold_out_scenes
from ssov_train.training.engine import _validate, train
from ssov_train.training.stages import build_task

OPTIM = {"epochs": 2, "batch_size": 1, "lr": 0.1, "max_steps_per_epoch": 1}


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_pretrain_validates_tmp_losses_on_held_out_scans_and_keeps_the_best_epoch(config_factory, tmp_path):
    task = build_task(config_factory("pretrain", tmp_path / "val", val_split="val", optim=OPTIM))
    assert task.val_set is not None and task.val_set.augment is None
    assert not set(task.val_set.tokens) & set(task.train_set.tokens)
    task.val_set.tokens = task.val_set.tokens[:1]  # one held-out scan is enough here (CPU forward passes)
    result = train(task, progress=False)

    rows = _rows(tmp_path / "val")
    per_epoch = {int(r["epoch"]): float(r["value"]) for r in rows if r["name"] == "val/total"}
    assert sorted(per_epoch) == [1, 2]
    names = {r["name"] for r in rows}
    assert {"val/superpixel_superpoint", "val/text_superpoint", "val/best_epoch"} <= names
    best_epoch = min(per_epoch, key=per_epoch.get)
    assert result["best"]["epoch"] == best_epoch and result["best"]["metric"] == "val/total"
    best = load_checkpoint(tmp_path / "val" / "best.pt")
    assert best["epoch"] == best_epoch and best["metrics"]["val/total"] == pytest.approx(per_epoch[best_epoch])
    assert (tmp_path / "val" / "tensorboard").is_dir()

    # the logged value is what the saved weights give (eval mode, no gradients), and validating changes nothing
    # a resumed or uninterrupted run depends on: weights, BatchNorm statistics, torch RNG, train mode
    task.model.load_state_dict(best["state_dict"])
    task.model.train()
    task.model.zero_grad(set_to_none=True)
    before, rng = {k: v.clone() for k, v in task.model.state_dict().items()}, torch.get_rng_state()
    again = _validate(task, task.model)
    assert again["val/total"] == pytest.approx(per_epoch[best_epoch], rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and task.model.training
    assert all(p.grad is None for p in task.model.parameters())


def test_scene_holdout_split(world, reader, config_factory, tmp_path):
    train_tokens, val_tokens = reader.split_tokens("train"), reader.split_tokens("val")
    tokens = train_tokens + val_tokens  # two scenes
    kept, held = hold_out_scenes(tokens, ["scene-0001"], reader)
    assert kept == train_tokens and held == val_tokens
    with pytest.raises(ConfigError, match="not in the training split"):
        hold_out_scenes(tokens, ["scene-0001", "scene-9999"], reader)
    with pytest.raises(ConfigError, match="not in the training split"):
        hold_out_scenes(tokens, "slidr", reader)  # none of SLidR's scenes is in a synthetic world
    with pytest.raises(ConfigError, match="nothing left"):
        hold_out_scenes(tokens, ["scene-0000", "scene-0001"], reader)
    with pytest.raises(ConfigError, match="nuScenes-format"):
        hold_out_scenes(tokens, "slidr", reader, "semantickitti")
    assert len(SLIDR_HOLDOUT_SCENES) == len(set(SLIDR_HOLDOUT_SCENES)) == 100

    # build_task takes the held-out scenes out of the pre-training split (here: its only scene)
    with pytest.raises(ConfigError, match="nothing left"):
        build_task(config_factory("pretrain", tmp_path, holdout_scenes=["scene-0000"]))


@pytest.mark.parametrize("overrides, match", [
    ({"stage": "annotation_free", "holdout_scenes": "slidr"}, "pretrain option"),
    ({"holdout_scenes": "slidr", "val_split": "val"}, "not both"),
    ({"holdout_scenes": "every-tenth"}, "holdout_scenes"),
])
def test_holdout_config_errors(config_factory, tmp_path, overrides, match):
    stage = overrides.pop("stage", "pretrain")
    with pytest.raises(ConfigError, match=match):
        config_factory(stage, tmp_path, **overrides)


def test_best_epoch_rule():
    from ssov_train.training.engine import _improves
    nan = float("nan")
    assert _improves(0.5, None, True) and _improves(nan, None, True)
    assert _improves(0.6, {"value": 0.5}, True) and not _improves(0.4, {"value": 0.5}, True)
    assert _improves(0.4, {"value": 0.5}, False) and not _improves(0.5, {"value": 0.5}, False)
    assert _improves(0.1, {"value": nan}, True) and not _improves(nan, {"value": 0.1}, True)
