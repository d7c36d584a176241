"""Fixes for spconv 2.x on the CPU, applied once, idempotently, when ``ssov_train.models`` is imported.

spconv 2.3.8's CPU wheel runs forward, but (see /work/shared/docs/deps.md §1):

(a) **Backward crashes** with "Torch not compiled with CUDA enabled": ``ops.indice_conv_backward`` calls
    ``get_current_stream()`` (``torch.cuda.current_stream()``) unconditionally, although its CPU branch never
    uses the stream.  Fix: every ``spconv`` module's ``get_current_stream`` returns 0 while CUDA is unavailable.
(b) **Silently wrong outputs and gradients** with more than one torch thread: ``SpconvOps.scatter_add_cpu``
    (C++ ``GatherCPU::scatter_add``) shares its row pointers across OpenMP threads, so threads race and add
    rows into the wrong outputs (17/30 wrong SparseConv3d outputs, 18/30 wrong gradients at 2 threads).  Its
    only callers are the CPU branches of ``ops.indice_conv`` (forward: per kernel offset,
    ``out[out_idx] += buf``) and ``ops.indice_conv_backward`` (input gradient, ``din[in_idx] += buf``).  Fix:
    ``ops.SpconvOps`` becomes a proxy whose ``scatter_add_cpu`` is ``Tensor.index_add_`` on zero-copy views.
    Pinning torch to one thread also avoids the race, but halves speed; this keeps both cores.
(c) **Biased convolutions fail in eval mode** with "cpu don't support act and bias": in inference mode the
    conv module hands its bias to ``ops.indice_conv`` to be fused, which only the CUDA kernels can do (training
    mode adds the bias afterwards and works).  Avoided by design -- ssov's 3x3x3 convs are ``bias=False``
    followed by BatchNorm and the 1x1 head is ``nn.Linear`` -- and handled here anyway: on CPU the bias is added
    after the unbiased conv, exactly like training mode does.  A fused activation (``act_type``, an
    inference-only feature ssov never uses) raises a ``NotImplementedError`` that says what to do.

(b) and (c) are installed in every build: a CUDA build runs CPU tensors through the same CPU branches (a CPU
run, or the CPU reference of a parity check, on a GPU machine), and both fixes leave CUDA tensors to spconv's own
kernels (the scatter is only called from CPU branches; the bias wrapper hands CUDA tensors' biases through).
(a) is installed in the CPU-only build alone (a CUDA build has a stream when it runs).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import torch
from cumm import tensorview as tv

import spconv.pytorch  # noqa: F401  (imports every spconv.pytorch module the fixes rebind)
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import cppcore, ops

_NO_ACT = tv.gemm.Activation.None_


def _stream_or_zero() -> int:
    """The current CUDA stream handle, or 0 (the CPU "stream") when CUDA is unavailable."""
    if torch.cuda.is_available():
        return torch.cuda.current_stream().cuda_stream
    return 0


def scatter_add_cpu(out: tv.Tensor, inp: tv.Tensor, indices: tv.Tensor) -> None:
    """``out[indices[i]] += inp[i]`` for ``i < len(indices)``; race-free replacement of the C++ kernel.

    The tensorview arguments are CPU buffers owned by torch tensors; ``numpy_view`` + ``torch.from_numpy``
    wraps them without copying, so ``index_add_`` writes straight into spconv's output/gradient buffer.  The
    int32 indices are widened first: ``index_add_`` with int64 indices is 2-4x faster here (2 us to convert).
    """
    idx = torch.from_numpy(indices.numpy_view()).long()
    dst = torch.from_numpy(out.numpy_view())
    dst.index_add_(0, idx, torch.from_numpy(inp.numpy_view())[: idx.shape[0]])


class _RaceFreeSpconvOps:
    """Stands in for ``spconv.core_cc...SpconvOps`` inside ``spconv.pytorch.ops``: all static methods are the
    original ones except ``scatter_add_cpu``."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    scatter_add_cpu = staticmethod(scatter_add_cpu)


def _with_cpu_bias(indice_conv: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap ``ops.indice_conv`` so CPU eval-mode biases are added after the conv instead of asserting."""

    def indice_conv_cpu_bias(features: torch.Tensor, filters: torch.Tensor, indice_pairs: torch.Tensor,
                             indice_pair_num: torch.Tensor, num_activate_out: int, inverse: bool = False,
                             subm: bool = False, algo: Any = ops.ConvAlgo.Native,
                             timer: Any = ops.CUDAKernelTimer(False), bias: Optional[torch.Tensor] = None,
                             act_alpha: float = 0.0, act_beta: float = 0.0,
                             act_type: Any = _NO_ACT) -> torch.Tensor:
        on_cpu = not features.is_cuda
        if on_cpu and act_type != _NO_ACT:
            raise NotImplementedError(
                f"spconv's CPU build cannot fuse an activation ({act_type}) into a sparse conv; "
                "build the conv with act_type=None_ and apply the activation as a separate module")
        fused_bias = None if on_cpu else bias
        out = indice_conv(features, filters, indice_pairs, indice_pair_num, num_activate_out, inverse, subm,
                          algo=algo, timer=timer, bias=fused_bias, act_alpha=act_alpha, act_beta=act_beta,
                          act_type=act_type)
        if on_cpu and bias is not None:
            out += bias
        return out

    indice_conv_cpu_bias.__wrapped__ = indice_conv  # type: ignore[attr-defined]
    return indice_conv_cpu_bias


def apply_cpu_fixes() -> bool:
    """Install fixes (b) and (c), and (a) in spconv's CPU-only build; safe to call repeatedly.  Returns True (the
    CPU path is fixed)."""
    if CPU_ONLY_BUILD and cppcore.get_current_stream is not _stream_or_zero:
        original = cppcore.get_current_stream
        # Modules that did ``from spconv.pytorch.cppcore import get_current_stream`` hold their own binding.
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "spconv" and getattr(module, "get_current_stream", None) is original:
                module.get_current_stream = _stream_or_zero
    if not isinstance(ops.SpconvOps, _RaceFreeSpconvOps):
        ops.SpconvOps = _RaceFreeSpconvOps(ops.SpconvOps)
    if not hasattr(ops.indice_conv, "__wrapped__"):
        ops.indice_conv = _with_cpu_bias(ops.indice_conv)
    return True


CPU_FIXES_ACTIVE: bool = apply_cpu_fixes()
