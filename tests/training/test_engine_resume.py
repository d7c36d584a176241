"""The training engine's resume path (ssov_train/training/engine.py) on a tiny hand-made task (a 2-weight model,
6 one-voxel scans, a loss with torch randomness in it), so every run takes milliseconds: a run stopped after any
step and resumed ends with exactly the weights, optimiser state, learning rate and log of an uninterrupted run;
what is refused is refused with one clear error. The real-data kill -9 / Ctrl-C versions are in test_resume.py."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssov_train.config import from_dict, to_dict
from ssov_train.errors import ConfigError
from ssov_train.jobs import Interrupted
from ssov_train.training.checkpoint import load_checkpoint, save_checkpoint
from ssov_train.training.data import VoxelScan
from ssov_train.training.engine import LAST, RunLogger, StepEvent, train
from ssov_train.training.stages import TrainConfig

CLASSES = ["noise", "car", "road"]
STEPS_PER_EPOCH = 3  # 6 scans, batch 2


class Scans(torch.utils.data.Dataset):
    """6 one-voxel scans whose feature is the scan index: the batches say which scans the sampler drew."""

    def __init__(self):
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_set.append(epoch)

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> VoxelScan:
        return VoxelScan(token=str(i), coords=np.zeros((1, 3), np.int32), features=np.full((1, 1), i, np.float32),
                         spatial_shape=(1, 1, 1), point_to_voxel=np.zeros(1, np.int64))


class TinyTask:
    """What train() needs of a stage's Task: cfg, dictionary, model, criterion (moved to the device with the model),
    data, losses, param groups, meta."""

    def __init__(self, cfg: TrainConfig):
        torch.manual_seed(0)
        self.cfg = cfg
        self.dictionary = SimpleNamespace(class_names=CLASSES)
        self.model = torch.nn.Linear(1, 1)
        self.criterion = torch.nn.MSELoss()
        self.train_set, self.val_set = Scans(), None
        self.meta = {"voxel": to_dict(cfg.voxel), "input_fields": [cfg.feature], "class_names": CLASSES,
                     "model": {"arch": cfg.model.arch, "width": cfg.model.width,
                               "in_channels": cfg.model.in_channels}}
        self.batches: list[list[str]] = []

    def param_groups(self) -> list[dict]:
        return [{"params": [self.model.weight], "lr": self.cfg.optim.lr},
                {"params": [self.model.bias], "lr": self.cfg.optim.lr * 2}]

    def losses(self, model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
        self.batches.append([s.token for s in batch.scans])
        noise = torch.randn(len(batch.scans), 1)  # the torch RNG is part of the state a resume restores
        error = model(batch.features) - (batch.features + noise)
        return {"total": (error ** 2).mean(), "abs": error.abs().mean()}


def config(output: Path, **changes) -> TrainConfig:
    cfg = from_dict(TrainConfig, {
        "stage": "downstream", "output": str(output),
        "dataset": {"kind": "nuscenes", "root": str(output.parent / "nowhere"), "version": "v1.0-tiny"},
        "optim": {"epochs": 3, "batch_size": 2, "lr": 0.05, "momentum": 0.9, "dampening": 0.0,
                  "weight_decay": 0.0, "num_workers": 0}})
    return replace(cfg, **changes)


def stop_after(step: int):
    def on_step(event: StepEvent) -> None:
        if event.step == step:
            raise KeyboardInterrupt  # what Ctrl-C does, at a step boundary
    return on_step


def logged(run_dir: Path) -> list[tuple[int, int, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), int(r["epoch"]), r["name"]) for r in csv.DictReader(f)]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows the run (events of a resumed writer's purge_step and later
    from the interrupted writer are dropped, as TensorBoard drops them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run: (its task, its result, its last checkpoint)."""
    task = TinyTask(config(tmp_path_factory.mktemp("ref") / "run"))
    result = train(task, progress=False)
    return task, result, load_checkpoint(Path(result["last"]))


def test_an_uninterrupted_run_by_hand(reference):
    task, result, last = reference
    assert result["epoch"] == 3 and result["global_step"] == 9 == last["global_step"] and last["epoch"] == 3
    # every epoch draws each scan once, in a new order
    for e in range(3):
        drawn = task.batches[3 * e:3 * e + 3]
        assert sorted(t for b in drawn for t in b) == [str(i) for i in range(6)]
    assert task.train_set.epochs_set == [0, 1, 2]
    # cosine annealing over 3 epochs, stepped per epoch: after 3 steps lr = lr0 * (1 + cos(pi)) / 2 = 0
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == pytest.approx([0.0, 0.0], abs=1e-12)
    rows = logged(Path(result["run_dir"]))
    assert [(s, e) for s, e, n in rows if n == "train/total"] == [(s, 1 + (s - 1) // 3) for s in range(1, 10)]
    # per epoch: both learning rates at the epoch's last step, at their value during the epoch
    lr0 = [r for r in rows if r[2] == "lr/group0"]
    assert [(s, e) for s, e, _ in lr0] == [(3, 1), (6, 2), (9, 3)]


@pytest.mark.parametrize("stop", [3, 5])  # at the end of epoch 1 (not saved yet), mid-epoch 2
def test_a_run_stopped_after_any_step_and_resumed_ends_as_the_uninterrupted_one(tmp_path, reference, stop):
    ref_task, ref_result, ref_last = reference
    cfg = config(tmp_path / "run")
    with pytest.raises(Interrupted) as stopped:
        train(TinyTask(cfg), progress=False, on_step=stop_after(stop))
    done = (stop - 1) // STEPS_PER_EPOCH  # epochs finished (and saved) before the stop
    if done == 0:
        assert not stopped.value.resumable and "no epoch finished, nothing to resume" in str(stopped.value)
        assert not (cfg.output / LAST).exists()
        return
    assert stopped.value.resumable
    assert str(stopped.value) == (f"at epoch {done + 1} step {stop} ({cfg.output / LAST} holds epoch {done})")
    assert load_checkpoint(cfg.output / LAST)["global_step"] == done * STEPS_PER_EPOCH

    task = TinyTask(cfg)  # a new process: fresh weights and RNG until the checkpoint is restored
    torch.manual_seed(123)
    result = train(task, resume=True, progress=False)
    assert result["epoch"] == 3 and result["global_step"] == 9
    assert task.train_set.epochs_set == list(range(done, 3))
    assert task.batches == ref_task.batches[done * STEPS_PER_EPOCH:]  # the same scans in the same order
    last = load_checkpoint(cfg.output / LAST)
    for name, tensor in ref_last["state_dict"].items():
        assert torch.equal(last["state_dict"][name], tensor), name
    for key in ("epoch", "global_step"):
        assert last[key] == ref_last[key]
    assert last["scheduler"] == ref_last["scheduler"]
    momenta = [s["momentum_buffer"] for s in last["optimizer"]["state"].values()]
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momenta, ref_last["optimizer"]["state"].values()))
    assert torch.equal(last["rng"]["torch"], ref_last["rng"]["torch"])
    # the log holds every step once: what the stopped run logged after its checkpoint is gone
    assert logged(cfg.output) == logged(Path(ref_result["run_dir"]))
    # TensorBoard too: steps after the checkpoint written by the stopped run are purged, none before
    ours, theirs = tensorboard_scalars(cfg.output), tensorboard_scalars(Path(ref_result["run_dir"]))
    assert set(ours) == set(theirs) == {"train/total", "train/abs", "lr/group0", "lr/group1"}
    assert [s for s, _ in ours["train/total"]] == list(range(1, 10))
    for tag, values in theirs.items():
        assert [s for s, _ in ours[tag]] == [s for s, _ in values], tag
        np.testing.assert_allclose([v for _, v in ours[tag]], [v for _, v in values], rtol=1e-6, err_msg=tag)


def test_a_finished_run_resumes_to_nothing_more(tmp_path):
    cfg = config(tmp_path / "run", optim=replace(config(tmp_path).optim, epochs=1))
    train(TinyTask(cfg), progress=False)
    before = load_checkpoint(cfg.output / LAST)
    task = TinyTask(cfg)
    result = train(task, resume=True, progress=False)
    assert (result["epoch"], result["global_step"]) == (1, 3) and task.batches == []
    assert torch.equal(load_checkpoint(cfg.output / LAST)["state_dict"]["weight"], before["state_dict"]["weight"])
    assert torch.equal(task.model.weight.detach(), before["state_dict"]["weight"])  # the weights were loaded


def test_refusals_name_the_problem(tmp_path):
    cfg = config(tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"^--resume: nothing to resume in {re.escape(str(cfg.output))} \(no last\.pt\)$"):
        train(TinyTask(cfg), resume=True, progress=False)
    with pytest.raises(Interrupted):
        train(TinyTask(cfg), progress=False, on_step=stop_after(4))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(cfg.output))} already holds a run \(last\.pt\); pass --resume to "
                                             r"continue it or choose another output directory$"):
        train(TinyTask(cfg), progress=False)
    # a changed learning rate would train other weights: refused, naming the key
    other = replace(cfg, optim=replace(cfg.optim, lr=0.1))
    with pytest.raises(ConfigError, match=rf"^--resume: {re.escape(str(cfg.output / LAST))} was written by a run with another "
                                             r"config \(optim\.lr differs\); resume with the original config or "
                                             r"start a new run directory$"):
        train(TinyTask(other), resume=True, progress=False)
    # the keys that do not change the weights may change
    fine = replace(cfg, keep_checkpoints=1, optim=replace(cfg.optim, num_workers=1))
    assert train(TinyTask(fine), resume=True, progress=False)["global_step"] == 9
    # a checkpoint of other classes (model-bound) is refused before any config comparison
    ckpt = load_checkpoint(cfg.output / LAST)
    save_checkpoint(cfg.output / LAST, {**ckpt, "class_names": ["noise", "car"]})
    with pytest.raises(ConfigError, match="class_names"):
        train(TinyTask(cfg), resume=True, progress=False)


def test_the_log_of_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,epoch,name,value\n3,1,train/total,0.5\n4,2,train/total,0.25\n"
                                     "5,2,train/total,0.125\n")
    logger = RunLogger(run, 4, enabled=True)
    logger.scalars({"train/total": 2.0, "lr/group0": 0.125}, 5, 2)
    logger.close()
    assert (run / "metrics.csv").read_text().splitlines() == [
        "step,epoch,name,value", "3,1,train/total,0.5", "4,2,train/total,0.25", "5,2,train/total,2",
        "5,2,lr/group0,0.125"]
    fresh = RunLogger(run, None, enabled=True)  # a new run starts an empty log
    fresh.close()
    assert (run / "metrics.csv").read_text().splitlines() == ["step,epoch,name,value"]
    off = RunLogger(tmp_path / "elsewhere", None, enabled=False)  # other ranks write nothing
    off.scalars({"a": 1.0}, 1, 1)
    off.close()
    assert not (tmp_path / "elsewhere").exists()


def test_config_comparison_leaves_out_what_may_change_and_copes_with_missing_keys():
    from ssov_train.training.engine import RESUME_MAY_CHANGE, _comparable_config

    assert RESUME_MAY_CHANGE == ("optim.num_workers", "keep_checkpoints", "device")
    saved = {"seed": 1, "keep_checkpoints": 2, "device": "cuda:0", "optim": {"lr": 0.5, "num_workers": 4},
             "model": {"width": 1.0}}
    assert _comparable_config(saved) == {"seed": 1, "optim": {"lr": 0.5}, "model": {"width": 1.0}}
    assert saved["optim"] == {"lr": 0.5, "num_workers": 4} and saved["keep_checkpoints"] == 2  # not modified
    # a config without those keys, or without an optim section at all, compares as it is
    assert _comparable_config({"seed": 1, "optim": {"lr": 0.5}}) == {"seed": 1, "optim": {"lr": 0.5}}
    assert _comparable_config({"seed": 1}) == {"seed": 1}
