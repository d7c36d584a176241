"""spconv on the CPU with ssov's fixes against dense torch references, at 2 threads where the scatter-add race
showed (without the fix every trial here gives wrong outputs and gradients); the same CPU branches run in a CUDA
build of spconv, so these tests hold there too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cumm import tensorview as tv

import ssov_train.models  # noqa: F401  (installs the fixes)
import spconv.pytorch as spconv
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import cppcore, ops
from spconv.pytorch.conv import SparseConvolution
from ssov_train.models import MinkUNet, MinkUNetConfig
from ssov_train.models.spconv_cpu import CPU_FIXES_ACTIVE, apply_cpu_fixes

pytestmark = pytest.mark.skipif(not CPU_FIXES_ACTIVE, reason="the CPU fixes are not installed")

SHAPE = (8, 8, 8)
BATCH = 2


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _random_sites(g: torch.Generator, per_batch: int = 150, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    cells = SHAPE[0] * SHAPE[1] * SHAPE[2]
    idx = []
    for b in range(BATCH):
        flat = torch.randperm(cells, generator=g)[:per_batch]
        zyx = torch.stack([flat // (SHAPE[1] * SHAPE[2]), (flat // SHAPE[2]) % SHAPE[1], flat % SHAPE[2]], 1)
        idx.append(torch.cat([torch.full((per_batch, 1), b), zyx], 1))
    indices = torch.cat(idx).int()
    return torch.randn(indices.shape[0], channels, generator=g, dtype=torch.float64), indices


def _dense(features: torch.Tensor, indices: torch.Tensor, shape) -> torch.Tensor:
    """(B, C, D, H, W), differentiable in ``features``."""
    d = features.new_zeros(BATCH, *shape, features.shape[1])
    d = d.index_put(tuple(indices.long().T), features)
    return d.permute(0, 4, 1, 2, 3)


def _at(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return dense.permute(0, 2, 3, 4, 1)[tuple(indices.long().T)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_convs_and_gradients_match_dense_reference(two_threads):
    """SubMConv3d -> SparseConv3d(k2, s2) -> SparseInverseConv3d, forward and all gradients, fp64, 20 trials.
    Weight layout (Cout, kD, kH, kW, Cin) -> F.conv3d's (Cout, Cin, k...) / conv_transpose3d's (Cin, Cout, k...)."""
    wrong = {"subm": 0, "strided": 0, "inverse": 0, "grad": 0}
    trials = 20
    for trial in range(trials):
        g = torch.Generator().manual_seed(trial)
        feats, idx = _random_sites(g)
        subm = spconv.SubMConv3d(4, 6, 3, bias=False, indice_key="s").double()
        down = spconv.SparseConv3d(6, 5, 2, stride=2, bias=False, indice_key="d").double()
        inv = spconv.SparseInverseConv3d(5, 3, 2, indice_key="d", bias=False).double()
        for m in (subm, down, inv):
            torch.nn.init.normal_(m.weight, generator=g)

        f_sp = feats.clone().requires_grad_(True)
        a = subm(spconv.SparseConvTensor(f_sp, idx, list(SHAPE), BATCH))
        b = down(a)
        c = inv(b)

        f_ref = feats.clone().requires_grad_(True)
        w = [m.weight.detach().clone().requires_grad_(True) for m in (subm, down, inv)]
        ra = _at(F.conv3d(_dense(f_ref, idx, SHAPE), w[0].permute(0, 4, 1, 2, 3), padding=1), idx)
        rb = _at(F.conv3d(_dense(ra, idx, SHAPE), w[1].permute(0, 4, 1, 2, 3), stride=2), b.indices)
        rc = _at(F.conv_transpose3d(_dense(rb, b.indices, b.spatial_shape), w[2].permute(4, 0, 1, 2, 3), stride=2), idx)

        assert torch.equal(c.indices, idx)  # inverse conv returns the strided conv's input sites, in order
        wrong["subm"] += not _close(a.features, ra)
        wrong["strided"] += not _close(b.features, rb)
        wrong["inverse"] += not _close(c.features, rc)
        grad_out = torch.randn(rc.shape, generator=g, dtype=torch.float64)
        (c.features * grad_out).sum().backward()
        (rc * grad_out).sum().backward()
        got = [f_sp.grad] + [m.weight.grad for m in (subm, down, inv)]
        want = [f_ref.grad] + [t.grad for t in w]
        wrong["grad"] += not all(_close(x, y) for x, y in zip(got, want))
    assert wrong == dict.fromkeys(wrong, 0), f"wrong results in {trials} trials at 2 threads: {wrong}"


@pytest.mark.skipif(not CPU_ONLY_BUILD, reason="a CUDA build of spconv has a CUDA stream (fix (a) is for the CPU build)")
def test_backward_runs_without_cuda():
    assert cppcore.get_current_stream() == 0 and ops.get_current_stream() == 0
    g = torch.Generator().manual_seed(0)
    feats, idx = _random_sites(g)
    feats.requires_grad_(True)
    conv = spconv.SubMConv3d(4, 2, 3, bias=False).double()
    conv(spconv.SparseConvTensor(feats, idx, list(SHAPE), BATCH)).features.sum().backward()
    assert feats.grad is not None and conv.weight.grad is not None and torch.isfinite(feats.grad).all()


def test_fixes_are_idempotent():
    wrapped_ops, wrapped_conv = ops.SpconvOps, ops.indice_conv
    assert apply_cpu_fixes() and apply_cpu_fixes()
    assert ops.SpconvOps is wrapped_ops and ops.indice_conv is wrapped_conv
    assert not hasattr(ops.indice_conv.__wrapped__, "__wrapped__")
    assert not hasattr(ops.SpconvOps._wrapped, "_wrapped")


@pytest.mark.parametrize("make", [
    lambda: spconv.SubMConv3d(4, 3, 3, bias=True, indice_key="k"),
    lambda: spconv.SparseConv3d(4, 3, 2, stride=2, bias=True, indice_key="k"),
])
def test_biased_conv_in_eval_mode_matches_training_mode(make):
    """spconv alone asserts "cpu don't support act and bias" here; the fix adds the bias after the conv."""
    feats, idx = _random_sites(torch.Generator().manual_seed(1))
    conv = make().double()
    torch.nn.init.uniform_(conv.bias, 1.0, 2.0)
    x = spconv.SparseConvTensor(feats, idx, list(SHAPE), BATCH)
    train_out = conv.train()(x).features
    with torch.no_grad():
        eval_out = conv.eval()(x).features
    assert _close(train_out.detach(), eval_out)


def test_fused_activation_on_cpu_is_a_clear_error():
    feats, idx = _random_sites(torch.Generator().manual_seed(2))
    conv = SparseConvolution(3, 4, 3, 3, subm=True, bias=False, act_type=tv.gemm.Activation.ReLU)
    conv = conv.double().eval()
    with pytest.raises(NotImplementedError, match="separate module"):
        conv(spconv.SparseConvTensor(feats, idx, list(SHAPE), BATCH))


def test_model_eval_mode_on_cpu(two_threads):
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet18", width=0.25, out_channels=5)).eval()
    g = torch.Generator().manual_seed(3)
    _, idx = _random_sites(g)
    with torch.no_grad():
        out = model(torch.randn(idx.shape[0], 1, generator=g), idx[:, 1:], idx[:, 0], SHAPE, BATCH)
    assert out.shape == (idx.shape[0], 5) and torch.isfinite(out).all()
