"""What a training run leaves and prints: one summary line per epoch (training loss, validation mIoU, best epoch)
matching metrics.csv, and only the newest N epoch checkpoints with keep_checkpoints (never last.pt / best.pt)."""

from __future__ import annotations

import csv
import re

import yaml

from ssov_train.cli import main
from ssov_train.config import to_dict
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.training.engine import prune_epoch_checkpoints


def test_prune_keeps_the_newest_epochs_by_number_and_never_last_or_best(tmp_path):
    names = ["epoch_998.pt", "epoch_999.pt", "epoch_1000.pt", "epoch_002.pt", "last.pt", "best.pt",
             "epoch_notes.txt", "epoch_003.pt.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    deleted = prune_epoch_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in deleted) == ["epoch_002.pt", "epoch_998.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["epoch_999.pt", "epoch_1000.pt", "last.pt", "best.pt", "epoch_notes.txt", "epoch_003.pt.tmp"])
    assert prune_epoch_checkpoints(tmp_path, 0) and not list(tmp_path.glob("epoch_*.pt"))


def test_epoch_summaries_and_keep_checkpoints(config_factory, tmp_path, capsys):
    cfg = config_factory("annotation_free", tmp_path / "run", val_split="val",
                         optim={"epochs": 3, "batch_size": 1, "lr": 0.05, "lr_head": 0.5, "max_steps_per_epoch": 2})
    cfg_path = tmp_path / "af.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["annotation-free", "--cfg", str(cfg_path), "--keep-checkpoints", "1"]) == 0
    out = capsys.readouterr().out

    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    miou = {int(r["epoch"]): float(r["value"]) for r in rows if r["name"] == "val/miou"}
    losses = {e: [float(r["value"]) for r in rows if r["name"] == "train/total" and int(r["epoch"]) == e]
              for e in (1, 2, 3)}
    assert sorted(miou) == [1, 2, 3] and all(len(v) == 2 for v in losses.values())
    best_epoch = max(miou, key=lambda e: (miou[e], -e))  # the first epoch reaching the highest mIoU
    summaries = [line for line in out.splitlines() if line.startswith("annotation_free epoch ")]
    assert len(summaries) == 3
    for epoch, line in enumerate(summaries, 1):
        match = re.fullmatch(r"annotation_free epoch (\d)/3: train/total ([\d.]+), val/miou ([\d.]+)%, "
                             r"best val/miou ([\d.]+)% at epoch (\d)", line)
        assert match, line
        assert int(match[1]) == epoch
        assert abs(float(match[2]) - sum(losses[epoch]) / 2) <= 5e-5  # printed with 4 decimals
        assert abs(float(match[3]) - 100 * miou[epoch]) <= 5e-3  # in %, 2 decimals
        best_so_far = max(range(1, epoch + 1), key=lambda e: (miou[e], -e))
        assert int(match[5]) == best_so_far and abs(float(match[4]) - 100 * miou[best_so_far]) <= 5e-3

    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "epoch_003.pt", "last.pt"]
    assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    # keep_checkpoints does not change the weights: a resume may change it
    assert main(["annotation-free", "--cfg", str(cfg_path), "--keep-checkpoints", "2", "--resume"]) == 0
