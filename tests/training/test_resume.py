"""A run killed with SIGKILL (or stopped with Ctrl-C) in its second epoch and resumed ends with exactly the
weights of an uninterrupted run; resuming under another config is refused with one clear error."""

from __future__ import annotations

import os
import re
import shlex
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


# A child process that trains the config at argv[1] and SIGKILLs itself right after optimiser step argv[2]:
# the test installs the engine's public step callback from outside the trainer (no hook in production code).
_KILL_AT_STEP = """
import os, signal, sys
import yaml
from ssov_train.config import from_dict
from ssov_train.training.engine import train
from ssov_train.training.stages import TrainConfig, build_task

cfg = from_dict(TrainConfig, yaml.safe_load(open(sys.argv[1])))
kill_at = int(sys.argv[2])

def on_step(event):
    print(f"step {event.step} epoch {event.epoch}", flush=True)
    if event.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

train(build_task(cfg), progress=False, on_step=on_step)
"""


@pytest.fixture
def one_thread():
    """One intra-op thread here and in the children: float sums, and so the weights, depend on the count, and
    more threads than free cores make a loaded machine several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(before)


def _assert_same_weights(reference: Path, resumed: Path, steps: int) -> None:
    a, b = load_checkpoint(reference), load_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def _logged_steps(run_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]
            if ",train/total," in line]


def test_kill_and_resume_reaches_the_same_weights(config_factory, tmp_path, one_thread):
    reference = _config(config_factory, tmp_path / "uninterrupted")
    train(build_task(reference), progress=False)

    killed = _config(config_factory, tmp_path / "killed")
    cfg_path = _write_yaml(killed, tmp_path / "killed.yaml")
    script = tmp_path / "kill_at_step.py"
    script.write_text(_KILL_AT_STEP)
    # 3 steps per epoch: the child SIGKILLs itself after step 4, in the middle of its second epoch
    proc = subprocess.run([sys.executable, str(script), str(cfg_path), "4"], cwd=REPO, env=one_thread,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"step {s} epoch {1 + (s - 1) // 3}" for s in range(1, 5)]
    last = killed.output / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1, "the run must be killed during its second epoch"

    with pytest.raises(ConfigError, match="already holds a run"):
        train(build_task(killed), progress=False)
    result = train(build_task(killed), resume=True, progress=False)
    assert result["epoch"] == 2
    _assert_same_weights(reference.output / "last.pt", last, 6)
    assert _logged_steps(killed.output) == list(range(1, 7))  # each step once, though the killed run began epoch 2


EPOCHS = 12  # the interrupted run is far from its end when the signal arrives, even on a fast machine


def test_ctrl_c_ends_with_one_line_and_the_command_that_resumes(config_factory, tmp_path, one_thread):
    """SIGINT mid-run through the CLI: exit 130, no traceback, one line naming where it stopped and the exact
    command; that command, run as printed, finishes with the weights of an uninterrupted run."""
    optim = {"epochs": EPOCHS, "batch_size": 1, "lr": 0.05, "lr_head": 0.5, "num_workers": 0}
    reference = config_factory("annotation_free", tmp_path / "uninterrupted", optim=optim)
    train(build_task(reference), progress=False)

    cfg_path = _write_yaml(config_factory("annotation_free", tmp_path / "unused", optim=optim), tmp_path / "af.yaml")
    run_dir = tmp_path / "interrupted"
    argv = ["annotation-free", "--cfg", str(cfg_path), "--output", str(run_dir)]
    # unbuffered: the first epoch's line must reach the test when it is printed, not when the run ends
    proc = subprocess.Popen([sys.executable, "-m", "ssov_train", *argv], cwd=REPO,
                            env={**one_thread, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "device: cpu\n"  # the run's first line: its device
        first = proc.stdout.readline()  # the first epoch's summary: printed once epoch 1 is saved
        assert first.startswith(f"annotation_free epoch 1/{EPOCHS}: train/total "), first
        proc.send_signal(signal.SIGINT)  # early in the run: 3 steps per epoch, EPOCHS epochs, far from the end
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    match = re.fullmatch(r"ssov-train annotation-free: interrupted at epoch (\d+) step (\d+) "
                         r"\((.+)/last\.pt holds epoch (\d+)\); resume with: (.+)", last_line)
    assert match, last_line
    epoch, step, held_dir, held = (int(match[1]), int(match[2]), match[3], int(match[4]))
    assert held_dir == str(run_dir) and held == epoch - 1 == load_checkpoint(run_dir / "last.pt")["epoch"]
    assert 3 * held <= step <= 3 * epoch
    resume = shlex.split(match[5])
    assert resume == ["ssov-train", *argv, "--resume"]

    done = subprocess.run([sys.executable, "-m", "ssov_train", *resume[1:]], cwd=REPO, env=one_thread,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_weights(reference.output / "last.pt", run_dir / "last.pt", 3 * EPOCHS)
    assert _logged_steps(run_dir) == list(range(1, 3 * EPOCHS + 1))


def test_resume_with_another_config_names_the_key(config_factory, tmp_path, capsys):
    cfg = _config(config_factory, tmp_path / "run")
    cfg_path = _write_yaml(cfg, tmp_path / "run.yaml")
    assert main(["annotation-free", "--cfg", str(cfg_path), "--set", "optim.epochs=1"]) == 0
    code = main(["annotation-free", "--cfg", str(cfg_path), "--set", "optim.epochs=1", "--set", "optim.lr=0.1",
                 "--resume"])
    assert code == 2 and "optim.lr differs" in capsys.readouterr().err
    code = main(["annotation-free", "--cfg", str(cfg_path), "--output", str(tmp_path / "empty"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
