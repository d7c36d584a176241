"""Device choice: auto / cpu / cuda / cuda:N against what a machine has, one GPU per torchrun process, and one clear
error (or, for auto, one line) naming what is missing."""

from __future__ import annotations

import re

import pytest
import torch

from ssov_train.device import Accelerators, DeviceChoice, choose_device, resolve_device
from ssov_train.errors import ConfigError

GPU_BOX = Accelerators("2.11.0+cu130", "13.0", cuda_devices=2, spconv_cuda=True)
CPU_TORCH = Accelerators("2.13.0+cpu", None, cuda_devices=0, spconv_cuda=False)
NO_DEVICE = Accelerators("2.11.0+cu130", "13.0", cuda_devices=0, spconv_cuda=True)
CPU_SPCONV = Accelerators("2.11.0+cu130", "13.0", cuda_devices=2, spconv_cuda=False)


def test_cpu_is_always_the_cpu():
    for found in (GPU_BOX, CPU_TORCH, NO_DEVICE, CPU_SPCONV):
        assert choose_device("cpu", found, local_rank=1, local_world_size=2) == DeviceChoice("cpu", "device: cpu")


@pytest.mark.parametrize("found, why", [(CPU_TORCH, "torch 2.13.0+cpu is a CPU build"),
                                        (NO_DEVICE, "torch sees no CUDA device"),
                                        (CPU_SPCONV, "spconv is a CPU-only build")])
def test_auto_falls_back_to_the_cpu_saying_why_and_cuda_refuses(found, why):
    choice = choose_device("auto", found)
    assert choice.device == "cpu" and not choice.is_cuda
    assert choice.note.startswith("device: cpu (auto: ") and why in choice.note
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=re.escape(f"device '{requested}' requested, but {why}")):
            choose_device(requested, found)


def test_a_teacher_needs_no_cuda_spconv():
    teacher_box = Accelerators("2.11.0+cu130", "13.0", cuda_devices=1, spconv_cuda=None)
    assert choose_device("auto", teacher_box).device == "cuda:0"


def test_each_torchrun_process_takes_its_local_rank_gpu():
    assert choose_device("auto", GPU_BOX).device == "cuda:0"
    assert choose_device("cuda", GPU_BOX).device == "cuda:0"
    for rank in (0, 1):
        for requested in ("auto", "cuda"):
            choice = choose_device(requested, GPU_BOX, local_rank=rank, local_world_size=2)
            assert (choice.device, choice.index, choice.note) == (f"cuda:{rank}", rank, f"device: cuda:{rank}")


def test_more_processes_than_gpus_is_one_error_naming_nproc_per_node():
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 2 needs cuda:2, but torch sees 2 CUDA device\(s\): start at "
                                          r"most 2 processes per node \(--nproc_per_node 2\)"):
        choose_device("auto", GPU_BOX, local_rank=2, local_world_size=3)


def test_an_explicit_gpu():
    assert choose_device("cuda:1", GPU_BOX).device == "cuda:1"
    assert choose_device("cuda:1", GPU_BOX, local_rank=0, local_world_size=1).device == "cuda:1"
    with pytest.raises(ConfigError, match=r"'cuda:2' requested, but torch sees 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        choose_device("cuda:2", GPU_BOX)
    # several processes of a node on one GPU: NCCL refuses that, so training does too; a teacher may
    with pytest.raises(ConfigError, match="all 2 processes of this node on one GPU.*use --device cuda"):
        choose_device("cuda:1", GPU_BOX, local_rank=0, local_world_size=2)
    assert choose_device("cuda:1", GPU_BOX, local_rank=0, local_world_size=2, one_gpu_per_process=False).index == 1


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda1", "", "cpu:0"])
def test_bad_names(name):
    with pytest.raises(ConfigError, match=re.escape(f"device must be auto, cpu, cuda or cuda:N, got '{name}'")):
        choose_device(name, GPU_BOX)


def _this_machine_problem() -> str | None:
    """What this machine lacks for spconv on CUDA, found without ssov's code."""
    from spconv.cppconstants import CPU_ONLY_BUILD

    if torch.version.cuda is None:
        return "is a CPU build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if CPU_ONLY_BUILD:
        return "spconv is a CPU-only build"
    return None


def test_this_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    problem = _this_machine_problem()
    if problem is None:
        assert resolve_device("auto").device == "cuda:0"
        assert resolve_device("auto").note.startswith(f"device: cuda:0 ({torch.cuda.get_device_name(0)}")
        return
    auto = resolve_device("auto")
    assert auto.device == "cpu" and problem in auto.note
    with pytest.raises(ConfigError, match=problem):
        resolve_device("cuda")
    assert resolve_device("cpu").device == "cpu"
