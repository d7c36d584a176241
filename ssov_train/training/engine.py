"""The training loop every stage shares: data order, optimisation, logging, checkpoints, resume and DDP.

Reproducibility contract: a run killed at any point (``kill -9`` included) and resumed with ``--resume``
reaches the same weights as an uninterrupted run.  This holds because everything random is a function of
state the checkpoint stores or of the config: the shuffling order is drawn from ``(seed, epoch)`` by the
sampler, augmentations from ``(seed, epoch, index)`` by the dataset, and the torch RNG state is saved; the
checkpoint (written atomically after every epoch) carries weights, optimiser, scheduler, epoch and step.

Users (and tests) follow the loop through ``on_step``, called after every optimiser step with a
:class:`StepEvent`; Ctrl-C ends a run with :class:`~ssov_train.jobs.Interrupted` (where it stopped, whether
``last.pt`` exists to resume from).  ``keep_checkpoints: N`` keeps only the newest N ``epoch_NNN.pt`` files;
``last.pt`` and ``best.pt`` are separate files and always kept.

Devices (``cfg.device``, :mod:`ssov_train.device`): the model, the loss's buffers and every batch (features,
indices, labels, TMP pairings; the loader pins them) move to the chosen device; ``cfg.amp`` adds fp16 autocast
and gradient scaling on CUDA (the losses are computed in fp32).  Checkpoints hold CPU tensors whatever the
device, and are read onto the CPU first, so a run may resume on another device; the bit-identical resume above
is a property of the CPU (spconv's CUDA kernels may sum in a different order: runs agree to float tolerance).

Multi-process runs start through ``torchrun``: with ``WORLD_SIZE > 1`` the loop joins a process group (NCCL,
each process on the GPU of its ``LOCAL_RANK``; gloo on the CPU), shards every epoch with a
:class:`DistributedSampler`, averages gradients with DDP and makes rank 0's BatchNorm statistics everyone's
after each epoch, so every rank ends with identical weights; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from ..config import to_dict
from ..device import resolve_device
from ..errors import ConfigError
from ..evaluation.metrics import confusion_matrix, mean_iou
from ..io import atomic_path, write_text_atomic
from ..jobs import Interrupted, progress_bar
from .checkpoint import (first_mismatch, load_checkpoint, restore_rng_state, rng_state, save_checkpoint)
from .data import collate_scans
from .stages import Task, checkpoint_expectations, eval_loader, predict

LAST = "last.pt"
# Config keys a resumed run may change: they do not affect the weights.
RESUME_MAY_CHANGE = ("optim.num_workers", "keep_checkpoints", "device")
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


@dataclass(frozen=True)
class StepEvent:
    """One finished optimiser step, as ``train(on_step=...)`` sees it: ``epoch`` counts from 1 (the epoch the
    step belongs to), ``step`` is the global step (1 = the run's first), ``losses`` the step's training losses."""

    epoch: int
    step: int
    losses: dict[str, float]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this module initialised the process group and tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# How long ranks wait for each other: the others wait at a barrier while rank 0 validates and writes checkpoints,
# which on a full validation split takes longer than NCCL's default of 10 minutes.
DIST_TIMEOUT = timedelta(hours=2)


def init_distributed(backend: str = "gloo") -> DistContext:
    """Join the torchrun process group (``nccl`` on GPUs, ``gloo`` on the CPU) when ``WORLD_SIZE > 1``; a single
    process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, timeout=DIST_TIMEOUT)
    return DistContext(dist.get_rank(), dist.get_world_size(), owns)


class RunLogger:
    """Scalars to TensorBoard event files and to ``metrics.csv`` (rows: step, epoch, name, value), rank 0 only.

    On resume both drop what the killed run logged after the checkpoint's step, so each step appears once."""

    def __init__(self, run_dir: Path, resume_step: Optional[int], enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        rows = []
        if resume_step is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "epoch", "name", "value"])
            writer.writeheader()
            writer.writerows(rows)
        self.csv_file = open(self.csv_path, "a", newline="")
        self.csv = csv.writer(self.csv_file)
        self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                purge_step=None if resume_step is None else resume_step + 1)

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.tb.add_scalar(name, value, step)
            self.csv.writerow([step, epoch, name, f"{value:.8g}"])
        self.csv_file.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.csv_file.close()


def _comparable_config(config: dict) -> dict:
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for dotted in RESUME_MAY_CHANGE:
        *section, key = dotted.split(".")
        (config.get(section[0], {}) if section else config).pop(key, None)
    return config


def prune_epoch_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``epoch_NNN.pt`` files of a run (never last.pt / best.pt: other
    names); returns the deleted paths."""
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := EPOCH_FILE.fullmatch(p.name)))
    stale = [p for _, p in found[:max(len(found) - keep, 0)]]
    for path in stale:
        path.unlink()
    return stale


def _epoch_summary(stage: str, epoch: int, epochs: int, train_loss: float, metrics: dict[str, float],
                   best: Optional[dict]) -> str:
    """The line printed after each epoch: mean training loss, validation metrics, the best epoch so far."""
    def show(name: str, value: float) -> str:
        return f"{name} {100 * value:.2f}%" if name.endswith("miou") else f"{name} {value:.4f}"

    parts = [show("train/total", train_loss)] + [show(k, v) for k, v in metrics.items()]
    if best is not None:
        parts.append(f"best {show(best['metric'], best['value'])} at epoch {best['epoch']}")
    return f"{stage} epoch {epoch}/{epochs}: " + ", ".join(parts)


def _resume_state(task: Task, run_dir: Path, resume: bool) -> Optional[dict]:
    """The checkpoint a run continues from: ``last.pt`` of ``run_dir`` with ``resume`` (written under the same
    config, but for the keys in RESUME_MAY_CHANGE), None for a new run (whose directory must hold no run)."""
    path = run_dir / LAST
    if not resume:
        if path.exists():
            raise ConfigError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it "
                              "or choose another output directory")
        return None
    if not path.exists():
        raise ConfigError(f"--resume: nothing to resume in {run_dir} (no {LAST})")
    ckpt = load_checkpoint(path, checkpoint_expectations(task.cfg, task.dictionary))
    key = first_mismatch(_comparable_config(ckpt["config"]), _comparable_config(to_dict(task.cfg)))
    if key:
        raise ConfigError(f"--resume: {path} was written by a run with another config ({key} differs); "
                          "resume with the original config or start a new run directory")
    return ckpt


def _restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> tuple[int, int]:
    """Weights, optimiser, scheduler and torch RNG of a resumed run as its checkpoint holds them; returns the
    (epochs done, global step) it had reached."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return int(state["epoch"]), int(state["global_step"])


# The validation metric that picks the best epoch, and whether higher is better.
BEST_METRIC = {"pretrain": ("val/total", False), "annotation_free": ("val/miou", True),
               "downstream": ("val/miou", True)}
BEST = "best.pt"


def _improves(value: float, best: Optional[dict], higher_is_better: bool) -> bool:
    """Whether a validation value beats the best so far; an undefined (NaN) value never beats a defined one."""
    if best is None or math.isnan(best["value"]):
        return best is None or not math.isnan(value)
    return value > best["value"] if higher_is_better else value < best["value"]


@torch.no_grad()
def _validate_tmp(task: Task, model: torch.nn.Module) -> dict[str, float]:
    """TMP losses on the held-out scans (eval mode, no gradients), averaged over scans."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    device = next(model.parameters()).device
    try:
        for batch in eval_loader(task.val_set, task.cfg.optim.batch_size, task.cfg.optim.num_workers,
                                 pin_memory=device.type == "cuda"):
            for name, value in task.losses(model, batch.to(device, non_blocking=True)).items():
                sums[name] = sums.get(name, 0.0) + value.item() * batch.batch_size
            count += batch.batch_size
    finally:
        model.train(was_training)
    return {f"val/{name}": total / count for name, total in sums.items()}


def _validate(task: Task, model: torch.nn.Module) -> dict[str, float]:
    """Pretrain: TMP losses on held-out scans; otherwise mIoU on ground truth of the validation split (every
    point), for monitoring only (method.md §10). Training's randomness is untouched (a DataLoader draws a
    seed from the torch RNG): a run with validation trains the same weights as one without."""
    with torch.random.fork_rng(devices=[]):
        if task.cfg.stage == "pretrain":
            return _validate_tmp(task, model)
        return _validate_miou(task, model)


def _validate_miou(task: Task, model: torch.nn.Module) -> dict[str, float]:
    c = task.dictionary.num_classes
    cm = np.zeros((c, c), np.int64)
    device = next(model.parameters()).device
    loader = eval_loader(task.val_set, task.cfg.optim.batch_size, task.cfg.optim.num_workers,
                         pin_memory=device.type == "cuda")
    for scan, pred, _ in predict(model, loader):
        cm += confusion_matrix(scan.point_labels, pred, c)
    return {"val/miou": mean_iou(cm)}


def train(task: Task, resume: bool = False, progress: bool = True,
          on_step: Optional[Callable[[StepEvent], None]] = None) -> dict:
    """Run (or resume) ``task`` to ``cfg.optim.epochs``; returns the run's final state summary.

    ``progress``: a progress bar and one summary line per epoch (rank 0).  ``on_step`` is called (rank 0
    and every other rank) after each optimiser step, before the next batch is drawn.  Ctrl-C raises
    :class:`~ssov_train.jobs.Interrupted` naming the epoch and step, and whether ``last.pt`` can resume."""
    cfg, o = task.cfg, task.cfg.optim
    device = resolve_device(cfg.device)
    if device.is_cuda:
        torch.cuda.set_device(device.index)  # before NCCL starts: this process's GPU
    ctx = init_distributed("nccl" if device.is_cuda else "gloo")
    amp = cfg.amp and device.is_cuda
    if progress and ctx.is_main:
        print(device.note + (f", {ctx.world_size} processes" if ctx.world_size > 1 else "")
              + (", mixed precision" if amp else ", amp off (CUDA only)" if cfg.amp else ""), flush=True)
    run_dir = Path(cfg.output)
    epoch, step, saved_epoch = 0, 0, None
    running = 1  # the epoch in progress (training, validating or saving), for the Ctrl-C message
    try:
        state = _resume_state(task, run_dir, resume)
        saved_epoch = None if state is None else int(state["epoch"])
        model = task.model
        model.to(device.device)  # before the optimiser: its state follows the parameters' device
        task.criterion.to(device.device)  # TMP's text embeddings and targets
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        optimizer = torch.optim.SGD(task.param_groups(), lr=o.lr, momentum=o.momentum, dampening=o.dampening,
                                    weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs)
        if state is not None:
            epoch, step = _restore(state, model, optimizer, scheduler)
            if amp and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        logger = RunLogger(run_dir, step if state is not None else None, ctx.is_main)
        net = model
        if ctx.world_size > 1:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.is_cuda else None)
        sampler = DistributedSampler(task.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=cfg.seed)
        loader = DataLoader(task.train_set, batch_size=o.batch_size, sampler=sampler, num_workers=o.num_workers,
                            collate_fn=collate_scans, pin_memory=device.is_cuda)
        metrics: dict[str, float] = {}
        best_metric, higher_is_better = BEST_METRIC[cfg.stage]
        best: Optional[dict] = None if state is None else state.get("best")  # {"epoch", "metric", "value"}
        while epoch < o.epochs:
            running = epoch + 1
            sampler.set_epoch(epoch)
            task.train_set.set_epoch(epoch)
            model.train(not cfg.freeze_layers)  # linear probe: BN statistics stay frozen
            total = len(loader) if o.max_steps_per_epoch is None else min(len(loader), o.max_steps_per_epoch)
            bar = progress_bar(loader, enabled=progress and ctx.is_main, total=total, unit="batch",
                               desc=f"{cfg.stage} epoch {epoch + 1}/{o.epochs}")
            loss_sum, loss_count = 0.0, 0
            for i, batch in enumerate(bar):
                if i >= total:
                    break
                batch = batch.to(device.device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    losses = task.losses(net, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["total"]).backward()  # without amp: the plain backward and step
                scaler.step(optimizer)
                scaler.update()
                step += 1
                values = {f"train/{k}": v.item() for k, v in losses.items()}
                loss_sum, loss_count = loss_sum + values["train/total"], loss_count + 1
                logger.scalars(values, step, epoch + 1)
                bar.set_postfix(loss=f"{values['train/total']:.4f}")
                if on_step is not None:
                    on_step(StepEvent(epoch + 1, step, {k[len("train/"):]: v for k, v in values.items()}))
            bar.close()
            logger.scalars({f"lr/group{i}": g["lr"] for i, g in enumerate(optimizer.param_groups)}, step, epoch + 1)
            scheduler.step()
            epoch += 1
            if ctx.world_size > 1:
                for buffer in model.buffers():  # BN running statistics drift apart per rank: take rank 0's
                    dist.broadcast(buffer, 0)
            if ctx.is_main:
                improved = False
                if task.val_set is not None:
                    metrics = _validate(task, model)
                    value = metrics[best_metric]
                    improved = _improves(value, best, higher_is_better)
                    if improved:
                        best = {"epoch": epoch, "metric": best_metric, "value": value}
                    logger.scalars({**metrics, "val/best_epoch": best["epoch"]}, step, epoch)
                ckpt = {**task.meta, "config": to_dict(cfg), "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "global_step": step, "rng": rng_state(), "metrics": metrics, "best": best,
                        "scaler": scaler.state_dict()}
                # best.pt and epoch_NNN.pt before last.pt: a kill in between redoes this epoch and rewrites
                # them identically; a kill before last.pt still leaves the run resumable
                if improved:
                    save_checkpoint(run_dir / BEST, ckpt)
                if cfg.keep_checkpoints != 0:
                    save_checkpoint(run_dir / epoch_file(epoch), ckpt)
                save_checkpoint(run_dir / LAST, ckpt)
                saved_epoch = epoch
                running = epoch + 1  # this epoch is safe: a Ctrl-C from here on interrupts the next one
                if cfg.keep_checkpoints is not None:
                    prune_epoch_checkpoints(run_dir, cfg.keep_checkpoints)
                if progress:
                    print(_epoch_summary(cfg.stage, epoch, o.epochs, loss_sum / max(loss_count, 1), metrics, best),
                          flush=True)
            if ctx.world_size > 1:
                dist.barrier(device_ids=[device.index] if device.is_cuda else None)
        logger.close()
        return {"run_dir": str(run_dir), "last": str(run_dir / LAST), "epoch": epoch, "global_step": step,
                "metrics": metrics, "best": best}
    except KeyboardInterrupt:
        held = (f"{run_dir / LAST} holds epoch {saved_epoch}" if saved_epoch is not None
                else "no epoch finished, nothing to resume")
        raise Interrupted(f"at epoch {running} step {step} ({held})", resumable=saved_epoch is not None) from None
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
