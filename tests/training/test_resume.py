"""A run killed with SIGKILL after its first epoch and resumed ends with exactly the weights of an
uninterrupted run; resuming under another config is refused with one clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ssov_train.cli import main
from ssov_train.config import to_dict
from ssov_train.errors import ConfigError
from ssov_train.training.checkpoint import load_checkpoint
from ssov_train.training.engine import train
from ssov_train.training.stages import build_task

REPO = Path(__file__).resolve().parents[2]


def _config(config_factory, output: Path):
    return config_factory("annotation_free", output,
                          optim={"epochs": 2, "batch_size": 1, "lr": 0.05, "lr_head": 0.5, "num_workers": 0})


def _write_yaml(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def test_kill_and_resume_reaches_the_same_weights(config_factory, tmp_path):
    reference = _config(config_factory, tmp_path / "uninterrupted")
    train(build_task(reference), progress=False)

    killed = _config(config_factory, tmp_path / "killed")
    cfg_path = _write_yaml(killed, tmp_path / "killed.yaml")
    # 3 steps per epoch: the process SIGKILLs itself after step 4, in the middle of its second epoch
    # same intra-op thread count as this process (earlier tests may have changed it): float sums, and so the
    # weights, depend on it
    env = {**os.environ, "SSOV_TEST_KILL_AFTER_STEP": "4", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "ssov_train", "annotation-free", "--cfg", str(cfg_path)],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    last = killed.output / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1, "the run must be killed during its second epoch"

    with pytest.raises(ConfigError, match="already holds a run"):
        train(build_task(killed), progress=False)
    result = train(build_task(killed), resume=True, progress=False)
    assert result["epoch"] == 2

    a = load_checkpoint(reference.output / "last.pt")
    b = load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    steps = [int(line.split(",")[0]) for line in (killed.output / "metrics.csv").read_text().splitlines()[1:]
             if ",train/total," in line]
    assert steps == list(range(1, 7))  # each step logged once, even though the killed run had started epoch 2


def test_resume_with_another_config_names_the_key(config_factory, tmp_path, capsys):
    cfg = _config(config_factory, tmp_path / "run")
    cfg_path = _write_yaml(cfg, tmp_path / "run.yaml")
    assert main(["annotation-free", "--cfg", str(cfg_path), "--set", "optim.epochs=1"]) == 0
    code = main(["annotation-free", "--cfg", str(cfg_path), "--set", "optim.epochs=1", "--set", "optim.lr=0.1",
                 "--resume"])
    assert code == 2 and "optim.lr differs" in capsys.readouterr().err
    code = main(["annotation-free", "--cfg", str(cfg_path), "--output", str(tmp_path / "empty"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
