"""The cpu-gemm backend (ssov_export/gemm_backend.py): its sparse convs against dense 3-D convolutions, its pair
lists against brute force, and the whole network against spconv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssov_train.models  # noqa: F401  (spconv CPU fixes)
from ssov_export.gemm_backend import WEIGHTS_FILE, Blas, GemmBackend, _sparse_conv
from ssov_export.kernel_maps import NUM_LEVELS, SUBM_CENTER, SUBM_OFFSETS, build_pair_maps
from ssov_export.onnx_export import compare, sample_scan, spconv_logits
from ssov_train.errors import ConfigError, DataError
from ssov_train.inference import open_backend
from ssov_train.training.checkpoint import load_model

BLAS = Blas()


def random_cloud(seed: int, size=(7, 8, 9), count: int = 150) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coords = np.unique(rng.integers(0, size, (count, 3)), axis=0)
    rng.shuffle(coords)  # any input row order
    return coords


def dense(coords: np.ndarray, x: np.ndarray, size) -> torch.Tensor:
    grid = torch.zeros((1, x.shape[1], *size))
    grid[0, :, coords[:, 0], coords[:, 1], coords[:, 2]] = torch.from_numpy(x).T
    return grid


def dense_weight(stack: np.ndarray, k: int) -> torch.Tensor:
    """(K = k^3, Cin, Cout) -> conv3d's (Cout, Cin, k, k, k); kernel index 9a + 3b + c (k = 3) or 4a + 2b + c
    (k = 2) is tap (a, b, c) (the convention of ssov_export/kernel_maps.py)."""
    return torch.from_numpy(stack).reshape(k, k, k, *stack.shape[1:]).permute(4, 3, 0, 1, 2).contiguous()


def conv(x, stack, rulebook, rows, centre, bias=None, residual=None, relu=False, block=64):
    cout = stack.shape[2]
    out = np.empty((rows, cout), np.float32)
    buf_in, buf_msg = np.empty((block, x.shape[1]), np.float32), np.empty((block, cout), np.float32)
    bias = np.zeros(cout, np.float32) if bias is None else bias
    residual = np.empty((0, 1), np.float32) if residual is None else residual
    ints = np.zeros(8, BLAS.int_dtype)
    _sparse_conv(BLAS.address, ints, x, stack, centre, *rulebook, bias, residual, relu, out, buf_in, buf_msg)
    return out


@pytest.mark.parametrize("block", [3, 64])  # 3: every kernel index's pairs cut into many blocks
def test_submanifold_conv_equals_a_dense_conv_at_the_occupied_sites(block):
    size = (7, 8, 9)
    coords = random_cloud(0, size)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(len(coords), 5)).astype(np.float32)
    stack = rng.normal(size=(27, 5, 6)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    residual = rng.normal(size=(len(coords), 6)).astype(np.float32)
    maps = build_pair_maps(coords)
    ref = F.conv3d(dense(coords, x, size), dense_weight(stack, 3), padding=1)[0][:, coords[:, 0], coords[:, 1],
                                                                                coords[:, 2]].T.numpy()
    np.testing.assert_allclose(conv(x, stack, maps.subm[0], len(coords), SUBM_CENTER, block=block), ref, atol=1e-5)
    fused = conv(x, stack, maps.subm[0], len(coords), SUBM_CENTER, bias, residual, relu=True, block=block)
    np.testing.assert_allclose(fused, np.maximum(ref + bias + residual, 0), atol=1e-5)


def test_strided_and_transposed_convs_equal_dense_ones():
    size = (8, 8, 10)
    coords = random_cloud(2, size, 200)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(coords), 4)).astype(np.float32)
    down_w = rng.normal(size=(8, 4, 3)).astype(np.float32)
    up_w = rng.normal(size=(8, 3, 2)).astype(np.float32)
    maps = build_pair_maps(coords)
    coarse = np.unique(coords // 2, axis=0)  # level 1 rows: the occupied cells in lexicographic (key) order
    assert maps.level_sizes[:2] == [len(coords), len(coarse)]
    y = conv(x, down_w, maps.down[0], len(coarse), -1)
    ref = F.conv3d(dense(coords, x, size), dense_weight(down_w, 2), stride=2)[0]
    np.testing.assert_allclose(y, ref[:, coarse[:, 0], coarse[:, 1], coarse[:, 2]].T.numpy(), atol=1e-5)
    # the transposed conv writes only the fine sites the strided conv read, each from its one parent
    back = conv(y, up_w, maps.up[0], len(coords), -1)
    up_ref = F.conv_transpose3d(dense(coarse, y, [s // 2 for s in size]), dense_weight(up_w, 2).transpose(0, 1),
                                stride=2)[0]
    np.testing.assert_allclose(back, up_ref[:, coords[:, 0], coords[:, 1], coords[:, 2]].T.numpy(), atol=1e-5)


def test_pair_lists_are_exactly_the_occupied_neighbours_by_kernel_index():
    coords = random_cloud(4, (9, 9, 9), 300)
    maps = build_pair_maps(coords)
    ins, outs, starts = maps.subm[0]
    assert starts[0] == 0 and starts[-1] == len(ins) and np.all(np.diff(starts) >= 0)
    kernel = np.repeat(np.arange(27), np.diff(starts))
    assert not np.any(kernel == SUBM_CENTER)
    np.testing.assert_array_equal(coords[ins], coords[outs] + SUBM_OFFSETS[kernel])  # input = output + offset
    occupied = {tuple(c) for c in coords}
    expected = {(o, k) for o, c in enumerate(coords) for k, d in enumerate(SUBM_OFFSETS)
                if k != SUBM_CENTER and tuple(c + d) in occupied}
    assert set(zip(outs.tolist(), kernel.tolist())) == expected and len(ins) == len(expected)
    single = build_pair_maps(np.array([[3, 4, 5]]))
    assert single.level_sizes == [1] * NUM_LEVELS and single.num_pairs == [0] * NUM_LEVELS
    with pytest.raises(DataError, match="non-negative"):
        build_pair_maps(np.array([[0, -1, 0]]))


@pytest.fixture(scope="module")
def demo_vox(demo_checkpoint):
    model, _ = load_model(demo_checkpoint)
    backend = open_backend(demo_checkpoint, "cpu-gemm")
    vox = sample_scan(backend.spec)
    return model, backend, vox


def test_demo_model_matches_spconv_on_the_real_sweep(demo_vox, demo_checkpoint):
    model, backend, vox = demo_vox
    reference = spconv_logits(model, vox)
    parity = compare(reference, backend.run(vox.features, vox.coords, vox.spatial_shape))
    assert parity.max_abs_diff <= 1e-4 and parity.label_agreement >= 0.9999, parity
    assert set(backend.last_timings_ms) == {"kernel_maps", "network"}
    two = GemmBackend(demo_checkpoint, threads=2)  # the large convs split by kernel index over two threads
    try:
        assert two.network.threads == 2
        parity = compare(reference, two.run(vox.features, vox.coords, vox.spatial_shape))
        assert parity.max_abs_diff <= 1e-4 and parity.label_agreement >= 0.9999, parity
    finally:
        two.close()


@pytest.mark.parametrize("stage", ["annotation_free", "pretrain"])
def test_small_models_match_spconv(tmp_path, checkpoint_factory, real_sweep, stage):
    ckpt = checkpoint_factory(tmp_path / "m.pt", stage=stage, seed=7)  # MinkUNet18, 1/8 width, random BN
    model, _ = load_model(ckpt)
    backend = GemmBackend(ckpt)
    vox = sample_scan(backend.spec)
    ref = spconv_logits(model, vox)
    out = backend.run(vox.features, vox.coords, vox.spatial_shape)
    assert np.abs(ref - out).max() <= 1e-4
    if stage == "pretrain":  # L2-normalised features
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_package_runs_its_folded_weights(small_package, small_checkpoint, real_sweep):
    from ssov_export.package import load_package

    pkg = load_package(small_package)
    assert pkg.gemm_weights_path == small_package / WEIGHTS_FILE
    assert pkg.sidecar["parity"]["gemm_max_abs_diff"] <= 1e-4
    from_package = open_backend(small_package, "cpu-gemm")
    vox = sample_scan(from_package.spec)
    np.testing.assert_array_equal(from_package.run(vox.features, vox.coords, vox.spatial_shape),
                                  GemmBackend(small_checkpoint).run(vox.features, vox.coords, vox.spatial_shape))
    with pytest.raises(DataError, match="features must be"):
        from_package.run(vox.features[:, :0], vox.coords, vox.spatial_shape)
    with pytest.raises(ConfigError, match="CPU only"):
        GemmBackend(small_package, device="cuda")


def test_package_without_or_with_altered_weights_is_refused(tmp_path, small_package):
    import shutil

    import yaml

    altered = tmp_path / "altered.ssovpkg"
    shutil.copytree(small_package, altered)
    data = dict(np.load(altered / WEIGHTS_FILE))
    data["head_b"] = data["head_b"] + 1
    np.savez(altered / WEIGHTS_FILE, **data)
    with pytest.raises(DataError, match="sha256"):
        open_backend(altered, "cpu-gemm")
    sidecar = yaml.safe_load((altered / "model.yaml").read_text())
    del sidecar["gemm_weights"]
    (altered / "model.yaml").write_text(yaml.safe_dump(sidecar))
    with pytest.raises(ConfigError, match="re-export"):
        open_backend(altered, "cpu-gemm")
