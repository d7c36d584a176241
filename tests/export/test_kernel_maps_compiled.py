"""The compiled kernel maps (ssov_export/kernel_maps.py, numba) against the numpy implementation they replaced,
kept here as the reference: every array of every rulebook must be identical (same rows, same order, same
padding), on the real sweep in both flavours and on edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from ssov_export.kernel_maps import NUM_LEVELS, SUBM_BANDS, SUBM_CENTER, build_kernel_maps
from ssov_train.errors import DataError
from ssov_train.geometry.voxelize import VoxelConfig, voxelize

# ---- reference: the numpy implementation (searchsorted neighbours, np.unique downsampling) ----

MIN_CHUNK, MAX_CHUNK = 16, 512


def ref_pack(coords, dims):
    c = coords.astype(np.int64) + 1
    return (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]


def ref_chunk_size(num_pairs, kernel_volume):
    target = max(1, num_pairs // (4 * kernel_volume))
    return int(np.clip(1 << int(np.round(np.log2(target))), MIN_CHUNK, MAX_CHUNK))


def ref_band_cuts(degree, num_bands):
    n = len(degree)
    starts = np.concatenate([[0], np.flatnonzero(degree[1:] != degree[:-1]) + 1])
    if num_bands == 1 or len(starts) <= 1:
        return [n] * (num_bands - 1)
    heights = np.maximum(degree[starts], 1).astype(np.int64)
    if len(starts) == 2:
        cost = starts[1:] * heights[0] + (n - starts[1:]) * heights[1:]
        return [int(starts[1 + np.argmin(cost)])] + [n] * (num_bands - 2)
    i, j = np.triu_indices(len(starts), 1)
    keep = i > 0
    i, j = i[keep], j[keep]
    cost = starts[i] * heights[0] + (starts[j] - starts[i]) * heights[i] + (n - starts[j]) * heights[j]
    best = int(np.argmin(cost))
    if cost[best] >= n * heights[0]:
        return [n] * (num_bands - 1)
    return [int(starts[i[best]]), int(starts[j[best]])]


def ref_rulebook(in_rows, out_rows, kernel, num_in, num_out, kernel_volume, chunk, num_bands=1, with_tables=True):
    n = len(in_rows)
    kernel = kernel.astype(np.uint8)
    order = np.argsort(kernel, kind="stable")
    in_rows, out_rows, kernel = in_rows[order], out_rows[order], kernel[order]
    b = chunk or ref_chunk_size(n, kernel_volume)
    counts = np.bincount(kernel, minlength=kernel_volume)
    chunks_per_kernel = -(-counts // b)
    if chunks_per_kernel.sum() * b == n:
        chunks_per_kernel[-1] += 1
    n_chunks = int(chunks_per_kernel.sum())
    first_pair = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_slot = np.concatenate([[0], np.cumsum(chunks_per_kernel)[:-1]]) * b
    slot = (first_slot - first_pair)[kernel] + np.arange(n)
    in_chunks = np.full(n_chunks * b, num_in, np.int32)
    in_chunks[slot] = in_rows
    zero_slot = int(np.flatnonzero(in_chunks == num_in)[0])
    chunk_kernel = np.repeat(np.arange(kernel_volume, dtype=np.int32), chunks_per_kernel)
    slot_out = np.zeros(n_chunks * b, np.int32)
    slot_out[slot] = out_rows
    if not with_tables:
        return in_chunks.reshape(n_chunks, b), chunk_kernel, [], n, slot_out
    rank = np.empty(n, np.int64)
    per_out = np.zeros(num_out, np.int64)
    for k in np.flatnonzero(counts):
        lo, hi = first_pair[k], first_pair[k] + counts[k]
        rank[lo:hi] = per_out[out_rows[lo:hi]]
        per_out[out_rows[lo:hi]] += 1
    full = np.full((max(1, int(per_out.max()) if n else 1), num_out), zero_slot, np.int32)
    full[rank, out_rows] = slot
    bounds = [0, *ref_band_cuts(per_out, num_bands), num_out] if num_bands > 1 else [0, num_out]
    tables = [full[:max(1, int(per_out[lo:hi].max()) if hi > lo else 1), lo:hi]
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    return in_chunks.reshape(n_chunks, b), chunk_kernel, tables, n, slot_out


def ref_subm_pairs(coords):
    dims = coords.max(0).astype(np.int64) + 3
    keys = ref_pack(coords, dims)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    n = len(sorted_keys)
    padded = np.concatenate([sorted_keys, np.full(3, -1, np.int64)])
    found = {}
    for d0, d1 in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        base = sorted_keys + (d0 * dims[1] + d1) * dims[2]
        start = np.searchsorted(sorted_keys, base - 1)
        window = [padded[start], padded[start + 1], padded[start + 2]]
        for d2 in (-1, 0, 1):
            at = [w == base + d2 for w in window]
            hit = at[0] | at[1] | at[2]
            offset = at[1].astype(np.int64) + 2 * at[2]
            found[9 * (d0 + 1) + 3 * (d1 + 1) + (d2 + 1)] = (np.arange(n)[hit], (start + offset)[hit])
    prev = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1] + 1)
    found[12] = (prev + 1, prev)
    ins, outs, kernels = [], [], []
    for k in range(27):
        if k != SUBM_CENTER:
            out_pos, in_pos = found[k] if k < SUBM_CENTER else found[26 - k][::-1]
            ins.append(in_pos)
            outs.append(out_pos)
            kernels.append(np.full(len(in_pos), k, np.uint8))
    return order[np.concatenate(ins)], order[np.concatenate(outs)], np.concatenate(kernels)


def ref_downsample(coords):
    parent = coords // 2
    dims = parent.max(0).astype(np.int64) + 3
    coarse_keys, inverse = np.unique(ref_pack(parent, dims), return_inverse=True)
    coarse = np.empty((len(coarse_keys), 3), np.int64)
    coarse[inverse.reshape(-1)] = parent
    cell = coords - 2 * parent
    return coarse, inverse.reshape(-1).astype(np.int64), (cell[:, 0] * 4 + cell[:, 1] * 2 + cell[:, 2])


def ref_build(coords, chunks=None, flavour="portable"):
    chunks = chunks or {}
    portable = flavour == "portable"
    level = np.asarray(coords).astype(np.int64)
    out = {"sizes": [], "subm": [], "down": [], "up": [], "coords": []}
    pending = None
    for lv in range(NUM_LEVELS):
        ins, outs, ks = ref_subm_pairs(level)
        if portable:
            degree = np.bincount(outs, minlength=len(level)).astype(np.uint8)
            order = np.argsort(np.uint8(255) - degree, kind="stable")
            rank = np.empty(len(level), np.int64)
            rank[order] = np.arange(len(level))
            level, ins, outs = level[order], rank[ins], rank[outs]
        else:
            order = rank = np.arange(len(level))
        out["sizes"].append(len(level))
        out["coords"].append(level)
        if lv == 0:
            out["order"], out["restore"] = order, rank
        else:
            parent, kernel, num_fine = pending
            parent, fine = rank[parent], np.arange(num_fine)
            out["down"].append(ref_rulebook(fine, parent, kernel, num_fine, len(level), 8, chunks.get(f"down{lv - 1}")))
            out["up"].append(ref_rulebook(parent, fine, kernel, len(level), num_fine, 8, chunks.get(f"up{lv - 1}")))
        out["subm"].append(ref_rulebook(ins, outs, ks, len(level), len(level), 27, chunks.get(f"subm{lv}"),
                                        SUBM_BANDS, with_tables=portable))
        if lv < NUM_LEVELS - 1:
            coarse, parent, kernel = ref_downsample(level)
            pending = (parent, kernel, len(level))
            level = coarse
    return out


def assert_same_maps(coords, chunks=None, flavour="portable"):
    ours, ref = build_kernel_maps(coords, chunks, flavour), ref_build(coords, chunks, flavour)
    assert ours.level_sizes == ref["sizes"]
    np.testing.assert_array_equal(ours.order, ref["order"])
    np.testing.assert_array_equal(ours.restore, ref["restore"])
    for a, b in zip(ours.level_coords, ref["coords"], strict=True):
        np.testing.assert_array_equal(a, b)
    for kind in ("subm", "down", "up"):
        for level, (rb, (in_chunks, chunk_kernel, tables, num_pairs, slot_out)) in enumerate(
                zip(getattr(ours, kind), ref[kind], strict=True)):
            where = f"{kind}{level}"
            assert rb.in_chunks.dtype == np.int32 and rb.chunk_kernel.dtype == np.int32, where
            np.testing.assert_array_equal(rb.in_chunks, in_chunks, err_msg=where)
            np.testing.assert_array_equal(rb.chunk_kernel, chunk_kernel, err_msg=where)
            np.testing.assert_array_equal(rb.slot_out, slot_out, err_msg=where)
            assert rb.num_pairs == num_pairs, where
            assert len(rb.out_tables) == len(tables), where
            for ta, tb in zip(rb.out_tables, tables):
                assert ta.dtype == np.int32 and ta.flags.c_contiguous, where
                np.testing.assert_array_equal(ta, tb, err_msg=where)
    return ours


@pytest.mark.parametrize("flavour", ["portable", "cpu"])
def test_real_sweep_maps_equal_the_numpy_reference(real_sweep, flavour):
    xyz, intensity = real_sweep
    vox = voxelize(xyz, VoxelConfig(), features=intensity)
    maps = assert_same_maps(vox.coords, flavour=flavour)
    assert maps.level_sizes[0] == vox.num_voxels > 10_000
    # the export freezes chunk lengths: maps rebuilt with another scan's chunks are the same rows, re-chunked
    assert_same_maps(vox.coords[: vox.num_voxels // 3], maps.chunks(), flavour)


def cube(n):
    return np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 3)


EDGE_CASES = {
    "one voxel": np.array([[0, 0, 0]]),
    "one voxel far out": np.array([[1000, 70, 3]]),
    "isolated voxels (no pairs)": np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4], [8, 8, 8]]),
    "dense cube (every offset, coarse levels collapse to one site)": cube(9),
    "a z column (only the previous-key neighbour)": np.stack([np.zeros(40, int), np.zeros(40, int),
                                                              np.arange(40)], 1),
    "shuffled random (unsorted input path)": np.random.default_rng(3).permutation(
        np.unique(np.random.default_rng(2).integers(0, 12, (900, 3)), axis=0)),
    "sparse wide extent": np.unique(np.random.default_rng(4).integers(0, 3000, (500, 3)), axis=0),
    "int32 coords on the grid boundary": np.array([[0, 0, 0], [0, 0, 1], [1, 1, 1], [2, 3, 5]], np.int32),
}


@pytest.mark.parametrize("flavour", ["portable", "cpu"])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_case_maps_equal_the_numpy_reference(case, flavour):
    assert_same_maps(EDGE_CASES[case], flavour=flavour)


def test_chunks_filled_exactly_get_a_padding_chunk():
    """Pair counts that are exact multiples of the chunk length: a spare chunk holds the zero message."""
    coords = cube(4)  # 64 sites, each 2^3 cell full: 8 pairs per kernel index of the stride-2 conv
    chunks = {f"{k}{lv}": 8 for k, n in (("subm", NUM_LEVELS), ("down", 4), ("up", 4)) for lv in range(n)}
    maps = assert_same_maps(coords, chunks)
    assert maps.down[0].in_chunks.shape == (8 + 1, 8)  # 8 full chunks + the spare one
    assert np.count_nonzero(maps.down[0].in_chunks == 64) == 8


def test_duplicate_voxels_are_refused():
    with pytest.raises(DataError, match="duplicate"):
        build_kernel_maps(np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3]]))
