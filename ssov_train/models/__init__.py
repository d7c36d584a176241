"""3D networks.  Importing this package first installs the spconv CPU-build fixes (see spconv_cpu.py)."""

from . import spconv_cpu  # noqa: F401  (side effect: patches spconv's CPU build before any model runs)
from .minkunet import ARCHS, MinkUNet, MinkUNetConfig, count_parameters
from .spconv_cpu import CPU_FIXES_ACTIVE

__all__ = ["ARCHS", "CPU_FIXES_ACTIVE", "MinkUNet", "MinkUNetConfig", "count_parameters"]
