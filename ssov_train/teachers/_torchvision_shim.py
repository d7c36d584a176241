"""Make ``import torchvision`` work on the CPU torch wheel (import this before open_clip; deps.md §2).

The PyPI torchvision 0.28.0 wheel is a CUDA build: its ``_C`` extension cannot load next to torch 2.13.0+cpu, and
``import torchvision`` then dies registering fake kernels for operators that were never defined.  open_clip (and
timm) import torchvision for transforms and FrozenBatchNorm2d only, so defining the two operator schemas it
registers first is enough; ``torchvision.ops.nms`` / ``roi_align`` stay unusable ("Couldn't load custom C++ ops").
Only the open_clip teacher imports this module, so the rest of ssov never pays for torchvision.
"""

from __future__ import annotations

import sys

import torch

_LIBRARY = None  # the registration lives as long as this object


def install() -> None:
    """Import torchvision; when its C++ ops cannot load (the CUDA wheel on a CPU torch), define the two operator
    schemas it needs and import it again.  A torchvision that works as installed is left alone."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    import torchvision  # noqa: F401,F811

install()
