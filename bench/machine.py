"""What every bench prints first: the machine it ran on and the SGEMM rate it measured there, so that runs on
different machines compare as ratios (a figure over this run's SGEMM, or one backend over another in the same
run), never as absolute milliseconds.

    from machine import machine_report      # bench scripts put bench/ on sys.path (they run as scripts)
    info = machine_report(threads=2)        # prints two lines, returns the figures (for JSON outputs)

The SGEMM rate is torch's fp32 matmul (the library the networks run on; numpy's OpenBLAS may be pinned to an
older kernel and under-report), at a square shape and at the thin shapes sparse convolutions run
(rows = sites, 32..96 channels).  It is measured, not looked up: it moves with machine load like every other
figure of the run.
"""

from __future__ import annotations

import os
import platform
import time

# SIMD features that decide a CPU's GEMM rate (x86 and Arm names as /proc/cpuinfo spells them)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "asimd", "sve", "sve2")
SGEMM_SHAPES = ((2048, 2048, 2048), (16000, 96, 96), (16000, 32, 32))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, platform elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The GEMM-relevant SIMD flags this CPU reports, in :data:`SIMD_FLAGS` order."""
    present: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("flags", "Features"):
                    present = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return [flag for flag in SIMD_FLAGS if flag in present]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sgemm_gflops(threads: int, repeats: int = 5) -> dict[str, float]:
    """torch fp32 matmul GFLOP/s at :data:`SGEMM_SHAPES` with ``threads`` intra-op threads (best of repeats);
    torch's thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for m, k, n in SGEMM_SHAPES:
            a, b = torch.randn(m, k), torch.randn(k, n)
            torch.matmul(a, b)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - t)
            out[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
        return out
    finally:
        torch.set_num_threads(before)


def machine_report(threads: int, print_it: bool = True) -> dict:
    """Describe the machine and measure SGEMM with ``threads`` threads; print two lines (``print_it``)."""
    import torch

    gemm = sgemm_gflops(threads)
    info = {"cpu": cpu_model(), "flags": cpu_flags(), "cores": usable_cores(),
            "load_average": round(os.getloadavg()[0], 2), "torch": torch.__version__, "threads": threads,
            "sgemm_gflops": {k: round(v, 1) for k, v in gemm.items()}}
    if print_it:
        print(f"machine: {info['cpu']}; {info['cores']} usable cores, load average {info['load_average']:.2f}; "
              f"flags {' '.join(info['flags']) or '(none found)'}; torch {info['torch']}")
        print(f"torch SGEMM fp32, {threads} thread{'s' if threads != 1 else ''}: "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    return info
