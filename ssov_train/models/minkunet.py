"""MinkUNet family (MinkowskiEngine's SR-UNet "Res16UNet", as used by SLidR / UOV) on spconv 2.x.

Layer for layer the reference of method.md §6: stem 3^3 conv + BN + ReLU; four encoder stages of a 2^3
stride-2 conv (channels unchanged) + BN + ReLU and BasicBlocks; four decoder stages of a 2^3 stride-2 transposed
conv + BN + ReLU, concatenation with the encoder skip, BasicBlocks; final 1x1 conv with bias.  MinkUNet34C has
37.8 M parameters at width 1.

Mapping MinkowskiEngine -> spconv:

* 3^3 stride-1 convs -> ``SubMConv3d``: output sites = input sites, as ME's stride-1 conv.  Convs at the same
  resolution share one ``indice_key`` so the rulebook is built once per level and reused by every block.
* 2^3 stride-2 conv -> ``SparseConv3d(kernel 2, stride 2)``: output cell q gathers fine sites 2q and 2q+1 per
  axis, the same cells ME forms as long as the grid origin is a multiple of 16 (see geometry/voxelize.py).
* 2^3 stride-2 *transposed* conv -> ``SparseInverseConv3d`` with the strided conv's ``indice_key``.  ME's
  transposed conv writes to the coordinates that already exist at the finer tensor stride, i.e. exactly the
  sites the strided conv consumed, each fed by its one parent cell through the kernel offset of its position
  in the cell.  The inverse conv replays the strided conv's rulebook backwards, which is that same map, and
  returns the sites in the skip tensor's row order so the concatenation lines up.  (spconv's
  ``SparseConvTranspose3d`` would instead create all 8 children of every coarse cell - a denser, different
  output set.)
* final 1x1 conv with bias -> ``nn.Linear`` on the feature matrix: identical maths, and it keeps every sparse
  conv bias-free, so eval mode never hits spconv's CPU "act and bias" limitation (see spconv_cpu.py).

Weights are laid out the spconv way (Cout, kD, kH, kW, Cin); ME checkpoints need a layout conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import spconv.pytorch as spconv
from spconv.pytorch import SparseConvTensor

from ..errors import ConfigError
from ..geometry.voxelize import GRID_ALIGN

ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # name: (PLANES, LAYERS)
    "MinkUNet34C": ((32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2)),
    "MinkUNet18": ((32, 64, 128, 256, 256, 128, 96, 96), (2, 2, 2, 2, 2, 2, 2, 2)),
}
INIT_DIM = 32


@dataclass(frozen=True)
class MinkUNetConfig:
    """``bn_momentum`` (torch convention) applies to the stem, strided, transposed and 1x1-projection BNs;
    the BNs inside residual blocks use ``block_bn_momentum`` (0.1), because the reference never forwards its
    configured value to the blocks."""

    arch: Literal["MinkUNet34C", "MinkUNet18"] = "MinkUNet34C"
    width: float = 1.0  # multiplies every channel count
    in_channels: int = 1  # lidar intensity
    out_channels: int = 17
    bn_momentum: float = 0.05
    block_bn_momentum: float = 0.1
    normalize_features: bool = False  # L2-normalise the head output (TMP)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; known: {sorted(ARCHS)}")
        if not self.width > 0 or self.in_channels < 1 or self.out_channels < 1:
            raise ConfigError(f"invalid MinkUNet config: width={self.width}, in_channels={self.in_channels}, "
                              f"out_channels={self.out_channels}")

    def channels(self, c: int) -> int:
        return max(1, int(round(c * self.width)))


def _bn(channels: int, momentum: float) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, momentum=momentum)


def _map(x: SparseConvTensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> SparseConvTensor:
    return x.replace_feature(fn(x.features))


class BasicBlock(nn.Module):
    """Two 3^3 convs with BN, residual add, ReLU; a 1x1 conv + BN projects the shortcut when channels change."""

    def __init__(self, cin: int, cout: int, key: str, momentum: float, proj_momentum: float) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
        self.bn1 = _bn(cout, momentum)
        self.conv2 = spconv.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
        self.bn2 = _bn(cout, momentum)
        self.downsample = None
        if cin != cout:
            self.downsample = spconv.SparseSequential(spconv.SubMConv3d(cin, cout, 1, bias=False),
                                                      _bn(cout, proj_momentum))

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        out = _map(self.conv1(x), lambda f: F.relu(self.bn1(f)))
        out = _map(self.conv2(out), self.bn2)
        shortcut = x.features if self.downsample is None else self.downsample(x).features
        return out.replace_feature(F.relu(out.features + shortcut))


class _Stage(nn.Sequential):
    """``n`` BasicBlocks at one resolution; the first maps ``cin`` to ``cout``."""

    def __init__(self, cin: int, cout: int, n: int, key: str, cfg: MinkUNetConfig) -> None:
        super().__init__(*[BasicBlock(cin if i == 0 else cout, cout, key, cfg.block_bn_momentum, cfg.bn_momentum)
                           for i in range(n)])


class _Resample(nn.Module):
    """2^3 stride-2 conv (``inverse=False``) or its inverse, + BN + ReLU, sharing the rulebook ``key``."""

    def __init__(self, cin: int, cout: int, key: str, inverse: bool, momentum: float) -> None:
        super().__init__()
        self.conv = (spconv.SparseInverseConv3d(cin, cout, 2, indice_key=key, bias=False) if inverse
                     else spconv.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=key))
        self.bn = _bn(cout, momentum)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        return _map(self.conv(x), lambda f: F.relu(self.bn(f)))


class MinkUNet(nn.Module):
    """Sparse residual UNet returning per-voxel outputs at input resolution, rows in input order."""

    def __init__(self, cfg: MinkUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        planes_ref, layers = ARCHS[cfg.arch]
        p = [cfg.channels(c) for c in planes_ref]
        init = cfg.channels(INIT_DIM)
        m = cfg.bn_momentum
        self.stem_conv = spconv.SubMConv3d(cfg.in_channels, init, 3, bias=False, indice_key="subm0")
        self.stem_bn = _bn(init, m)
        enc_in = [init, p[0], p[1], p[2]]
        self.down = nn.ModuleList(_Resample(c, c, f"down{i}", False, m) for i, c in enumerate(enc_in))
        self.encoder = nn.ModuleList(_Stage(enc_in[i], p[i], layers[i], f"subm{i + 1}", cfg) for i in range(4))
        skips = [p[2], p[1], p[0], init]
        up_in = [p[3], p[4], p[5], p[6]]
        self.up = nn.ModuleList(_Resample(up_in[i], p[4 + i], f"down{3 - i}", True, m) for i in range(4))
        self.decoder = nn.ModuleList(_Stage(p[4 + i] + skips[i], p[4 + i], layers[4 + i], f"subm{3 - i}", cfg)
                                     for i in range(4))
        self.final = nn.Linear(p[7], cfg.out_channels)
        self.trunk_channels = p[7]

    def trunk(self, features: torch.Tensor, coords: torch.Tensor, batch: torch.Tensor,
              spatial_shape: Sequence[int], batch_size: int) -> torch.Tensor:
        """Last decoder features (V, trunk_channels), before the head.

        ``coords`` (V, 3) int are non-negative grid indices in the voxelizer's axis order, ``batch`` (V,) the
        cloud of each voxel; spconv indices are [batch, c0, c1, c2].  ``spatial_shape`` is rounded up to a
        multiple of 16 so no strided output falls off the grid.
        """
        if features.ndim != 2 or features.shape[1] != self.cfg.in_channels:
            raise ValueError(f"features must be (V, {self.cfg.in_channels}), got {tuple(features.shape)}")
        if coords.shape != (features.shape[0], 3) or batch.shape != (features.shape[0],):
            raise ValueError(f"coords must be (V, 3) and batch (V,) with V={features.shape[0]}, "
                             f"got {tuple(coords.shape)} and {tuple(batch.shape)}")
        shape = [-(-int(s) // GRID_ALIGN) * GRID_ALIGN for s in spatial_shape]
        upper = torch.tensor(shape, device=coords.device)
        if coords.numel() and (coords.min() < 0 or (coords.max(0).values >= upper).any()):
            raise ValueError(f"coords must lie in [0, spatial_shape={list(spatial_shape)}); shift them first")
        indices = torch.cat([batch.reshape(-1, 1), coords], 1).to(torch.int32)
        x = SparseConvTensor(features, indices, shape, batch_size)
        x = _map(self.stem_conv(x), lambda f: F.relu(self.stem_bn(f)))
        skips = []
        for down, stage in zip(self.down, self.encoder):
            skips.append(x)
            x = stage(down(x))
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips)):
            x = up(x)
            x = stage(x.replace_feature(torch.cat([x.features, skip.features], 1)))
        return x.features

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch: torch.Tensor,
                spatial_shape: Sequence[int], batch_size: int) -> torch.Tensor:
        """Per-voxel outputs (V, out_channels), L2-normalised when ``cfg.normalize_features``."""
        out = self.final(self.trunk(features, coords, batch, spatial_shape, batch_size))
        return F.normalize(out, dim=1) if self.cfg.normalize_features else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
