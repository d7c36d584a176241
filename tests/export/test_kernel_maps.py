"""Kernel maps (ssov_export/kernel_maps.py) against spconv's own convolutions and a brute-force neighbour count."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import ssov_train.models  # noqa: F401  (spconv CPU fixes)
import spconv.pytorch as spconv
from ssov_export.kernel_maps import NUM_LEVELS, SUBM_CENTER, SUBM_OFFSETS, build_kernel_maps, input_names
from ssov_export.onnx_graph import _fold
from ssov_train.errors import DataError
from ssov_train.geometry.voxelize import VoxelConfig, voxelize


def apply(rulebook, x: np.ndarray, stack: np.ndarray, centre: bool) -> np.ndarray:
    """The graph's conv in numpy: chunked messages, banded per-output sums (+ centre)."""
    xp = np.concatenate([x, np.zeros((1, x.shape[1]), x.dtype)])
    m = np.matmul(xp[rulebook.in_chunks], stack[rulebook.chunk_kernel]).reshape(-1, stack.shape[2])
    out = np.concatenate([m[t].sum(0) for t in rulebook.out_tables])
    return out + x @ stack[SUBM_CENTER] if centre else out


def apply_cpu(rulebook, x: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """The cpu graph's submanifold conv in numpy: chunked messages summed per output row (ScatterND add)."""
    xp = np.concatenate([x, np.zeros((1, x.shape[1]), x.dtype)])
    m = np.matmul(xp[rulebook.in_chunks], stack[rulebook.chunk_kernel]).reshape(-1, stack.shape[2])
    out = x @ stack[SUBM_CENTER]
    np.add.at(out, rulebook.slot_out, m)
    return out


def row_map(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Index into ``ours`` of every row of ``theirs`` (same coordinate set)."""
    key = lambda c: (c[:, 0].astype(np.int64) * 4096 + c[:, 1]) * 4096 + c[:, 2]  # noqa: E731
    lookup = {k: i for i, k in enumerate(key(ours))}
    return np.array([lookup[k] for k in key(theirs)])


@pytest.fixture(scope="module")
def scan(real_sweep):
    xyz, intensity = real_sweep
    vox = voxelize(xyz, VoxelConfig(), features=intensity)
    return vox, build_kernel_maps(vox.coords)


def sparse_tensor(coords: np.ndarray, feats: np.ndarray, shape) -> spconv.SparseConvTensor:
    idx = np.concatenate([np.zeros((len(coords), 1), np.int64), coords], 1).astype(np.int32)
    return spconv.SparseConvTensor(torch.from_numpy(feats), torch.from_numpy(idx), list(shape), 1)


def test_submanifold_maps_match_spconv_at_every_level(scan):
    vox, maps = scan
    cpu_maps = build_kernel_maps(vox.coords, maps.chunks(), flavour="cpu")
    assert np.array_equal(cpu_maps.order, np.arange(vox.num_voxels))  # no reorder in the cpu graph
    torch.manual_seed(0)
    shape = np.array([-(-s // 16) * 16 for s in vox.spatial_shape])
    for level in range(NUM_LEVELS):
        coords = maps.level_coords[level]
        x = np.random.default_rng(level).normal(size=(len(coords), 4)).astype(np.float32)
        conv = spconv.SubMConv3d(4, 5, 3, bias=False)
        with torch.no_grad():
            ref = conv(sparse_tensor(coords, x, shape // 2**level)).features.numpy()
        stack, _ = _fold(conv.weight, None)
        np.testing.assert_allclose(apply(maps.subm[level], x, stack, True), ref, atol=1e-5)
        # the cpu flavour keeps every level's rows in key order: the same sites, summed by scatter
        coords_cpu = cpu_maps.level_coords[level]
        rows = row_map(coords, coords_cpu)
        np.testing.assert_allclose(apply_cpu(cpu_maps.subm[level], x[rows], stack), ref[rows], atol=1e-5)


def test_strided_and_inverse_maps_match_spconv(scan):
    vox, maps = scan
    torch.manual_seed(1)
    shape = [-(-s // 16) * 16 for s in vox.spatial_shape]
    x = np.random.default_rng(0).normal(size=(vox.num_voxels, 3)).astype(np.float32)
    down = spconv.SparseConv3d(3, 6, 2, stride=2, bias=False, indice_key="d0")
    up = spconv.SparseInverseConv3d(6, 2, 2, indice_key="d0", bias=False)
    with torch.no_grad():
        coarse = down(sparse_tensor(vox.coords, x, shape))
        fine = up(coarse).features.numpy()
    # level 0 rows are the input voxels in maps.order
    ours = apply(maps.down[0], x[maps.order], _fold(down.weight, None)[0], False)
    rows = row_map(maps.level_coords[1], coarse.indices[:, 1:].numpy())
    np.testing.assert_allclose(ours[rows], coarse.features.numpy(), atol=1e-5)
    coarse_ours = np.empty_like(ours)
    coarse_ours[rows] = coarse.features.numpy()
    back = apply(maps.up[0], coarse_ours, _fold(up.weight, None)[0], False)
    np.testing.assert_allclose(back[maps.restore], fine, atol=1e-5)
    assert len(maps.up[0].out_tables) == 1 and maps.up[0].out_tables[0].shape == (1, vox.num_voxels)


def test_one_by_one_weights_follow_spconvs_layout():
    conv = spconv.SubMConv3d(4, 6, 1, bias=False)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    coords = np.stack([np.arange(5), np.zeros(5, int), np.zeros(5, int)], 1)
    with torch.no_grad():
        ref = conv(sparse_tensor(coords, x, [8, 8, 8])).features.numpy()
    np.testing.assert_allclose(x @ _fold(conv.weight, None)[0][0], ref, atol=1e-6)


def test_pairs_are_exactly_the_occupied_neighbours():
    rng = np.random.default_rng(5)
    coords = np.unique(rng.integers(0, 9, (300, 3)), axis=0)
    rng.shuffle(coords)  # any input row order
    maps = build_kernel_maps(coords)
    occupied = {tuple(c) for c in coords}
    expected = np.array([sum(tuple(c + o) in occupied for k, o in enumerate(SUBM_OFFSETS) if k != SUBM_CENTER)
                         for c in coords])
    ours = np.zeros(len(coords), int)
    padded = maps.subm[0].in_chunks.size
    pad_slot = int(np.flatnonzero(maps.subm[0].in_chunks.reshape(-1) == len(coords))[0])  # zero message
    counts = np.concatenate([(t != pad_slot).sum(0) for t in maps.subm[0].out_tables])
    ours[maps.order] = counts
    np.testing.assert_array_equal(ours, expected)
    assert maps.subm[0].num_pairs == expected.sum() <= padded
    # rows are sorted by decreasing neighbour count, so the bands are narrow where most rows are
    assert np.all(np.diff(counts) <= 0)
    assert np.array_equal(maps.order[maps.restore], np.arange(len(coords)))
    assert all(c.dtype == np.int64 for c in maps.level_coords)  # grid indices stay integers at every level


def test_inputs_are_int32_and_named(scan):
    _, maps = scan
    inputs = maps.inputs()
    assert list(inputs) == input_names()
    assert all(a.dtype == np.int32 for a in inputs.values())
    fixed = build_kernel_maps(scan[0].coords, {name: 64 for name in maps.chunks()})
    assert set(fixed.chunks().values()) == {64}
    cpu = build_kernel_maps(scan[0].coords, maps.chunks(), flavour="cpu").inputs()
    assert list(cpu) == input_names("cpu") and all(a.dtype == np.int32 for a in cpu.values())
    for level, rb in enumerate(maps.subm):  # same pairs and chunking in both flavours, one output row per slot
        assert cpu[f"subm{level}_to"].shape == (rb.padded_pairs,) and cpu[f"subm{level}_in"].shape == rb.in_chunks.shape


def test_bad_coordinates_are_refused():
    with pytest.raises(DataError, match="non-empty"):
        build_kernel_maps(np.zeros((0, 3), np.int32))
    with pytest.raises(DataError, match="duplicate voxels"):
        build_kernel_maps(np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3]]))
    with pytest.raises(DataError, match="non-negative"):
        build_kernel_maps(np.array([[0, -1, 0]]))
    single = build_kernel_maps(np.array([[3, 4, 5]]))  # one voxel: every level has one site, no pairs
    assert single.level_sizes == [1] * NUM_LEVELS and single.subm[0].num_pairs == 0


@pytest.mark.parametrize("num_pairs, kernel_volume, chunk", [
    (0, 27, 16), (27 * 4 * 16, 27, 16), (27 * 4 * 22, 27, 16),  # at least MIN_CHUNK
    (27 * 4 * 23, 27, 32), (27 * 4 * 45, 27, 32), (27 * 4 * 46, 27, 64),  # the power of 2 nearest to pairs / 4K
    (27 * 4 * 362, 27, 256), (27 * 4 * 363, 27, 512), (27 * 4 * 100_000, 27, 512),  # at most MAX_CHUNK
    (8 * 4 * 100, 8, 128),
])
def test_chunk_length_by_hand(num_pairs, kernel_volume, chunk):
    """B = 2^round(log2(pairs / (4 K))), clipped to 16 .. 512 (log2 23 = 4.52 -> 32, log2 45 = 5.49 -> 32,
    log2 46 = 5.52 -> 64, log2 362 = 8.4998 -> 256, log2 363 = 8.5038 -> 512)."""
    from ssov_export.kernel_maps import _chunk_size

    assert _chunk_size(num_pairs, kernel_volume) == chunk


def band_cost(degree: np.ndarray, cuts: list[int]) -> int:
    """Padded table size of bands cut at ``cuts``: rows x (largest degree in the band, at least 1)."""
    bounds = [0, *cuts, len(degree)]
    return sum((hi - lo) * max(1, int(degree[lo:hi].max())) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo)


@pytest.mark.parametrize("degree", [
    [5, 5, 4, 1, 1, 1, 1, 1, 1, 0], [3, 3, 3, 3], [9, 1, 1, 1, 1, 1, 1, 1], [4, 4, 4, 4, 4, 4, 2, 2, 1],
    [2, 1], [7, 0, 0, 0], [6, 5, 4, 3, 2, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0], [12, 11, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1],
])
@pytest.mark.parametrize("num_bands", [1, 2, 3])
def test_band_cuts_are_the_cheapest_by_brute_force(degree, num_bands):
    """The cuts give the smallest padded size over every possible placement of num_bands - 1 cuts."""
    from itertools import combinations_with_replacement

    from ssov_export.kernel_maps import _band_cuts

    degree = np.array(degree, np.int64)
    n = len(degree)
    cuts = _band_cuts(degree, num_bands)
    assert len(cuts) == num_bands - 1 and all(0 <= a <= b <= n for a, b in zip([0, *cuts], [*cuts, n]))
    best = min(band_cost(degree, list(c)) for c in combinations_with_replacement(range(n + 1), num_bands - 1))
    assert band_cost(degree, cuts) == best


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"^kernel maps: flavour must be one of \('portable', 'cpu'\), got 'gpu'$"):
        build_kernel_maps(np.zeros((1, 3), np.int32), flavour="gpu")
    for bad in (np.zeros((0, 3), np.int32), np.zeros((4, 2), np.int32), np.zeros(3, np.int32)):
        with pytest.raises(DataError, match=rf"^kernel maps: coords must be a non-empty \(V, 3\) array, got "
                                            rf"{re.escape(str(bad.shape))}$"):
            build_kernel_maps(bad)
    with pytest.raises(DataError, match=r"^kernel maps: coords must be non-negative grid indices"):
        build_kernel_maps(np.array([[0, 0, 0], [-1, 0, 0]]))
    with pytest.raises(DataError, match=r"^kernel maps: coords contain duplicate voxels \(use the voxelizer's"):
        build_kernel_maps(np.array([[2, 2, 2], [1, 1, 1], [2, 2, 2]]))
    assert input_names("cpu")[:3] == ["subm0_in", "subm0_kernel", "subm0_to"]
    assert input_names()[:5] == ["order", "restore", "subm0_in", "subm0_kernel", "subm0_out0"]
    assert len(input_names()) == 2 + 5 * (2 + 3) + 8 * (2 + 1) and len(input_names("cpu")) == 5 * 3 + 8 * 3
