"""Two gloo processes (as torchrun starts them) train one model: both ranks end with identical weights, and only
rank 0 writes the run directory; `torchrun -m ssov_train` itself runs the command line that way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

from ssov_train.config import from_dict, to_dict
from ssov_train.training.engine import train
from ssov_train.training.stages import TrainConfig, build_task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    task = build_task(from_dict(TrainConfig, cfg_dict))
    train(task, progress=False)
    torch.save(task.model.state_dict(), Path(out) / f"rank{rank}.pt")


def test_two_ranks_end_with_identical_weights(config_factory, tmp_path):
    cfg = config_factory("pretrain", tmp_path / "run",
                         optim={"epochs": 2, "batch_size": 1, "lr": 0.1, "num_workers": 0})
    mp.spawn(_rank_main, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = build_task(cfg).model.state_dict()
    assert any(not torch.equal(initial[k], s0[k]) for k in s0)  # it trained
    for name, tensor in s0.items():
        assert torch.equal(tensor, s1[name]), name  # parameters and BN statistics alike
    run = cfg.output
    assert (run / "last.pt").exists() and (run / "epoch_002.pt").exists()
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 4  # 3 scans -> 2 per rank per epoch


def test_torchrun_runs_the_command_line_on_two_processes(config_factory, tmp_path):
    """The documented route, `torchrun --nproc_per_node 2 -m ssov_train ...` (on the CPU: gloo; valid on any
    machine): rank 0 alone prints and writes, and the run is one run (the steps split over the ranks)."""
    cfg = config_factory("annotation_free", tmp_path / "run",
                         optim={"epochs": 1, "batch_size": 1, "lr": 0.05, "num_workers": 0})
    cfg_path = tmp_path / "af.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ssov_train", "annotation-free", "--cfg", str(cfg_path), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    device_lines = [line for line in lines if line.startswith("device: ")]
    assert device_lines == ["device: cpu, 2 processes"], lines
    assert [line for line in lines if line.startswith("annotation_free: ")] == [
        f"annotation_free: 1 epochs, 2 steps -> {tmp_path / 'run' / 'last.pt'}"]  # 3 train scans -> 2 per rank
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["global_step"] == 2
