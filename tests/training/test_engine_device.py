"""The device plumbing of training and evaluation, on this machine's CPU: a batch moves whole, a device that cannot
work is one error before any data is read, `auto` says in one line why it runs on the CPU, `--amp` changes nothing
on the CPU, and a resumed run may change the device but not the precision.  (tests/training/test_cuda.py runs the
GPU side where there is one.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from ssov_train.cli import main
from ssov_train.config import to_dict
from ssov_train.training.checkpoint import load_checkpoint, without_training_state
from ssov_train.training.data import ScanDataset, collate_scans
from ssov_train.geometry.voxelize import VoxelConfig


DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "ssov_synthetic_minkunet34c_w025.pt"


def _cuda_problem() -> str | None:
    """What this machine lacks for spconv on CUDA, found without ssov's code (None: nothing)."""
    from spconv.cppconstants import CPU_ONLY_BUILD

    if torch.version.cuda is None:
        return "is a CPU build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return "spconv is a CPU-only build" if CPU_ONLY_BUILD else None


needs_no_gpu = pytest.mark.skipif(_cuda_problem() is None, reason="this machine can train on CUDA: the CPU-only "
                                                                  "behaviour is not observable here")


def test_a_batch_moves_to_a_device_whole(world, reader):
    """Every tensor the network and the losses read goes to the device (here torch's shape-only 'meta' device,
    which any machine has); the scans stay on the host, where evaluation maps voxels back to points."""
    tokens = reader.split_tokens("train")[:2]
    common = {"voxel": VoxelConfig(), "feature": "intensity",
              "superpoints_dir": world["superpoints"]}
    labelled = collate_scans([ScanDataset(reader, tokens, label_source="pseudo", **common)[i] for i in (0, 1)])
    paired = collate_scans([ScanDataset(reader, tokens, label_source="superpoints", **common)[i] for i in (0, 1)])
    for batch in (labelled, paired):
        moved = batch.to("meta")
        tensors = {f.name: getattr(moved, f.name) for f in dataclasses.fields(moved)
                   if isinstance(getattr(moved, f.name), torch.Tensor)}
        if moved.tmp is not None:
            tensors.update({f"tmp.{f.name}": getattr(moved.tmp, f.name) for f in dataclasses.fields(moved.tmp)})
        assert {"features", "coords", "batch"} <= set(tensors)
        assert all(t.device.type == "meta" for t in tensors.values()), {k: t.device for k, t in tensors.items()}
        assert all(t.device.type == "meta" for t in moved.net_inputs() if isinstance(t, torch.Tensor))
        assert moved.scans is batch.scans and moved.voxel_offsets == batch.voxel_offsets
        assert moved.spatial_shape == batch.spatial_shape
        assert batch.features.device.type == "cpu"  # the original is untouched
    assert labelled.labels is not None and "labels" in {f.name for f in dataclasses.fields(labelled)}
    assert paired.tmp is not None and paired.tmp.to("meta").pair_point.device.type == "meta"


def _write(cfg, path):
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(path)


@needs_no_gpu
def test_an_unusable_device_is_one_error_before_anything_is_read_or_written(config_factory, tmp_path, capsys):
    cfg = _write(config_factory("annotation_free", tmp_path / "run"), tmp_path / "af.yaml")
    problem = _cuda_problem()
    for device in ("cuda", "cuda:1"):
        assert main(["annotation-free", "--cfg", cfg, "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ssov-train annotation-free: error: device '{device}' requested, but ")
        assert problem in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--cfg", cfg, "--model", str(DEMO_MODEL),
                 "--device", "cuda"]) == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["annotation-free", "--cfg", cfg, "--device", "gpu"]) == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


@needs_no_gpu
def test_auto_says_why_it_runs_on_the_cpu_and_amp_changes_nothing_there(config_factory, tmp_path, capsys):
    optim = {"epochs": 1, "batch_size": 1, "lr": 0.05, "max_steps_per_epoch": 2}
    auto = _write(config_factory("annotation_free", tmp_path / "auto", optim=optim), tmp_path / "auto.yaml")
    cpu = _write(config_factory("annotation_free", tmp_path / "cpu", optim=optim), tmp_path / "cpu.yaml")

    assert main(["annotation-free", "--cfg", auto, "--device", "auto", "--amp"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("device: cpu (auto: ") and _cuda_problem() in first
    assert first.endswith(", amp off (CUDA only)")
    assert main(["annotation-free", "--cfg", cpu, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "device: cpu"

    with_amp, plain = load_checkpoint(tmp_path / "auto" / "last.pt"), load_checkpoint(tmp_path / "cpu" / "last.pt")
    assert with_amp["config"]["amp"] is True and with_amp["config"]["device"] == "auto"
    for name, tensor in plain["state_dict"].items():
        assert torch.equal(with_amp["state_dict"][name], tensor), name  # fp32 on the CPU, amp or not
    assert "scaler" in with_amp and "scaler" not in without_training_state(with_amp)

    # the device may change on resume (a run moves between machines); the precision may not
    assert main(["annotation-free", "--cfg", auto, "--device", "cpu", "--amp", "--resume"]) == 0
    capsys.readouterr()
    assert main(["annotation-free", "--cfg", auto, "--device", "cpu", "--resume"]) == 2
    assert "another config (amp differs)" in capsys.readouterr().err
