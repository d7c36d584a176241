"""Which device a process computes on: the one place that turns ``auto | cpu | cuda | cuda:N`` into a device.

``auto`` is CUDA when it can work, else the CPU with one line saying why.  For the training network "can work"
means torch sees a CUDA device *and* spconv is a CUDA build (the CPU wheel of spconv has no GPU kernels); the
teachers only need torch.  Under ``torchrun`` every process takes the GPU of its ``LOCAL_RANK``, so that
``--nproc_per_node`` processes share a node's GPUs one each (what NCCL requires).

:func:`choose_device` is the pure rule (what was asked, what the machine has -> a device or one clear error);
:func:`resolve_device` feeds it this process's environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError

DEVICE_NAME = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


@dataclass(frozen=True)
class Accelerators:
    """What this process could compute on."""

    torch_version: str
    torch_cuda: Optional[str]  # torch.version.cuda; None for a CPU build of torch
    cuda_devices: int  # CUDA devices torch sees (0 when torch.cuda.is_available() is False)
    spconv_cuda: Optional[bool]  # spconv is a CUDA build; None: not asked (spconv not needed)

    @classmethod
    def detect(cls, needs_spconv: bool) -> "Accelerators":
        import torch

        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        spconv_cuda = None
        if needs_spconv:
            from spconv.cppconstants import CPU_ONLY_BUILD

            spconv_cuda = not CPU_ONLY_BUILD
        return cls(torch.__version__, torch.version.cuda, devices, spconv_cuda)

    def cuda_problem(self) -> Optional[str]:
        """Why CUDA cannot be used here, or None."""
        if self.torch_cuda is None:
            return f"torch {self.torch_version} is a CPU build (no CUDA)"
        if self.cuda_devices == 0:
            return ("torch sees no CUDA device (torch.cuda.is_available() is False: no NVIDIA GPU or driver, or "
                    "CUDA_VISIBLE_DEVICES hides them)")
        if self.spconv_cuda is False:
            return "spconv is a CPU-only build; install its CUDA build (spconv-cu126, see requirements-gpu.txt)"
        return None


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" or "cuda:N"
    note: str  # one line for the log: the device and, when auto fell back to the CPU, why

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def index(self) -> Optional[int]:
        return int(self.device.split(":")[1]) if self.is_cuda else None


def choose_device(requested: str, found: Accelerators, local_rank: Optional[int] = None,
                  local_world_size: int = 1, one_gpu_per_process: bool = True) -> DeviceChoice:
    """The device for ``requested`` on a machine with ``found``.

    ``local_rank`` / ``local_world_size``: torchrun's ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (None / 1 outside it).
    ``cuda`` and ``auto`` take ``cuda:<local_rank>``; ``cuda:N`` is taken as given, except with several processes
    on this node when ``one_gpu_per_process`` (DDP over NCCL: every process needs a GPU of its own).  An explicit
    ``cuda`` that cannot work is an error naming the reason; ``auto`` then falls back to the CPU and says why."""
    try:
        check_device_name(requested)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if requested == "cpu":
        return DeviceChoice("cpu", "device: cpu")
    problem = found.cuda_problem()
    if problem is not None:
        if requested == "auto":
            return DeviceChoice("cpu", f"device: cpu (auto: {problem})")
        raise ConfigError(f"device {requested!r} requested, but {problem}")
    explicit = DEVICE_NAME.fullmatch(requested).group(1)
    if explicit is not None:
        index = int(explicit)
        if one_gpu_per_process and local_world_size > 1:
            raise ConfigError(f"device {requested!r} would put all {local_world_size} processes of this node on one "
                              "GPU; under torchrun each process takes cuda:<LOCAL_RANK>: use --device cuda (or auto)")
    else:
        index = local_rank or 0
    if index >= found.cuda_devices:
        n = found.cuda_devices
        if explicit is None and local_rank:  # torchrun started more processes than this node has GPUs
            raise ConfigError(f"the process of LOCAL_RANK {local_rank} needs cuda:{index}, but torch sees {n} CUDA "
                              f"device(s): start at most {n} processes per node (--nproc_per_node {n})")
        raise ConfigError(f"device {requested!r} requested, but torch sees {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return DeviceChoice(f"cuda:{index}", f"device: cuda:{index}")


def resolve_device(requested: str, needs_spconv: bool = True, one_gpu_per_process: bool = True) -> DeviceChoice:
    """:func:`choose_device` for this process: its machine, and torchrun's ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE``."""
    if requested == "cpu":  # nothing to detect (and nothing CUDA is touched)
        return choose_device("cpu", Accelerators("", None, 0, None))
    found = Accelerators.detect(needs_spconv)
    local_rank = os.environ.get("LOCAL_RANK")
    choice = choose_device(requested, found, None if local_rank is None else int(local_rank),
                           int(os.environ.get("LOCAL_WORLD_SIZE", "1")), one_gpu_per_process)
    if choice.is_cuda:
        import torch

        name = torch.cuda.get_device_name(choice.index)
        choice = DeviceChoice(choice.device, f"{choice.note} ({name})")
    return choice
