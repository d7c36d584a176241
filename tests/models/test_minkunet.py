"""MinkUNet on spconv: shapes, parameter count, eval mode on CPU, gradients, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssov_train.errors import ConfigError
from ssov_train.geometry.voxelize import VoxelConfig, voxelize
from ssov_train.models import MinkUNet, MinkUNetConfig, count_parameters


def _scan(seed: int, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """A small cylindrical-voxelized cloud: (features (V, 1), coords (V, 3) int32, spatial_shape)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-8, -8, -1], [8, 8, 1], size=(n, 3)).astype(np.float32)
    v = voxelize(pts, VoxelConfig("cartesian", (0.25, 0.25, 0.25)), features=rng.uniform(0, 100, n))
    return torch.from_numpy(v.features), torch.from_numpy(v.coords), v.spatial_shape


def _run(model: MinkUNet, feats: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    return model(feats, coords, torch.zeros(len(coords), dtype=torch.int32), shape, 1)


@pytest.mark.parametrize("arch", ["MinkUNet34C", "MinkUNet18"])
def test_shapes_at_quarter_width(arch):
    model = MinkUNet(MinkUNetConfig(arch=arch, width=0.25, out_channels=7))
    feats, coords, shape = _scan(0)
    out = _run(model, feats, coords, shape)
    assert out.shape == (len(coords), 7) and torch.isfinite(out).all()
    trunk = model.trunk(feats, coords, torch.zeros(len(coords), dtype=torch.int32), shape, 1)
    assert trunk.shape == (len(coords), model.trunk_channels) == (len(coords), 24)


def test_parameter_count_matches_reference():
    n = count_parameters(MinkUNet(MinkUNetConfig(arch="MinkUNet34C", out_channels=17)))
    assert abs(n - 37.8e6) / 37.8e6 < 0.01, n
    assert count_parameters(MinkUNet(MinkUNetConfig(arch="MinkUNet18"))) < n


def test_eval_mode_and_normalised_output():
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet34C", width=0.25, out_channels=16, normalize_features=True))
    feats, coords, shape = _scan(1)
    model.eval()
    with torch.no_grad():
        out = _run(model, feats, coords, shape)
    assert torch.allclose(out.norm(dim=1), torch.ones(len(out)), atol=1e-5)


def test_gradients_reach_every_parameter():
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet18", width=0.25, out_channels=5)).train()
    feats, coords, shape = _scan(2)
    target = torch.randint(0, 5, (len(coords),), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(_run(model, feats, coords, shape), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_batch_of_two_equals_separate_runs_in_eval_mode():
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet18", width=0.25, out_channels=5)).double()
    a, b = _scan(3), _scan(4, n=2000)
    with torch.no_grad():  # give BN non-trivial running statistics
        _run(model.train(), a[0].double(), a[1], a[2])
    model.eval()
    with torch.no_grad():
        sep = [_run(model, f.double(), c, s) for f, c, s in (a, b)]
        shape = np.maximum(a[2], b[2])
        batch = torch.cat([torch.zeros(len(a[1])), torch.ones(len(b[1]))]).int()
        joint = model(torch.cat([a[0], b[0]]).double(), torch.cat([a[1], b[1]]), batch, shape, 2)
    assert torch.allclose(joint, torch.cat(sep), rtol=1e-9, atol=1e-9)


def test_bad_inputs_are_rejected():
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet18", width=0.25))
    feats, coords, shape = _scan(5, n=200)
    negative = coords.clone()
    negative[0, 1] = -1
    with pytest.raises(ValueError, match="shift"):
        _run(model, feats, negative, shape)
    with pytest.raises(ValueError, match="features"):
        _run(model, feats.repeat(1, 2), coords, shape)
    with pytest.raises(ConfigError):
        MinkUNetConfig(arch="MinkUNet50")
