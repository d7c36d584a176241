"""Kernel maps (rulebooks) of the MinkUNet, computed outside the network graph: the one home of this
preprocessing, used by every backend that runs the exported graph (onnxruntime, TensorRT) and by the export
itself.

Sites of one level are packed into int64 keys (sorted once); neighbours are found by four merge passes over
the sorted keys (:func:`_subm_pairs_sorted`).  Every kernel is compiled with numba (ssov_train/jit.py: cached,
one thread, GIL released): a nuScenes sweep's maps take a few ms; tests/export/test_kernel_maps_compiled.py
keeps the former numpy implementation as the reference the output must equal array for array.
Level 0 holds the voxelizer's voxels; level l+1 is the set of cells ``coords_l // 2`` (spconv's 2^3 stride-2
conv with a grid aligned to 16, see geometry/voxelize.py).  Row orders are this module's choice (below); the
graph returns logits in the voxelizer's order.

A **rulebook** says which input row feeds which output row through which kernel weight.  It is stored in the
form the graph consumes without any scatter (TensorRT's ONNX parser has no ScatterND reduction):

* the pairs (input row, kernel index) are grouped by kernel index and cut into chunks of ``B`` pairs:
  ``in_chunks`` (n_chunks, B) holds input rows (``num_in`` = the zero row appended in the graph) and
  ``chunk_kernel`` (n_chunks,) the kernel index of each chunk; the graph gathers rows, gathers each chunk's
  weight matrix and runs one batched MatMul, so only occupied neighbours cost FLOPs (plus < B padding per
  kernel index);
* ``out_tables`` list, for every output row, the message slots (chunk * B + position) that sum into it, as
  (D, rows) tables padded with a padded slot (whose message is exactly zero).  Rows of every level are sorted
  by decreasing neighbour count, so the submanifold tables split into :data:`SUBM_BANDS` bands of rows, each
  only as wide as its own largest count (level 0 of a nuScenes sweep: 2.4 neighbours on average, 16 at most).

Submanifold 3^3 convs leave the centre offset out of the rulebook (every site is its own centre: a plain
MatMul).  The strided 2^3 conv has one pair per fine site; its inverse replays the same pairs backwards, so
every fine site has exactly one message.

Kernel index convention (checked against spconv in tests/export): 3^3 offset (a, b, c) in {0,1,2}^3 is index
``9a + 3b + c`` and reads the input at ``out + (a-1, b-1, c-1)``; the 2^3 stride-2 conv's index ``4a + 2b + c``
reads fine site ``2 * out + (a, b, c)``.  All index arrays are int32 (TensorRT's native index type; 2^31 rows
is far beyond any scan).

The ``cpu-gemm`` backend (ssov_export/gemm_backend.py) takes the same pairs as plain lists grouped by kernel
index, without chunks or tables (:func:`build_pair_maps`).

Two **flavours** of the same rulebooks feed the two graphs of a package (ssov_export/onnx_graph.py):

* ``portable`` (above, scatter-free): TensorRT and the CUDA execution provider;
* ``cpu`` (onnxruntime on CPU): submanifold messages are summed with ``ScatterND(reduction="add")``, which
  onnxruntime's CPU kernel does in one pass over the real slots (no padded tables, no band sums), so the
  submanifold rulebooks carry ``<name>_to``, the output row of every message slot, instead of tables; rows
  keep the voxelizer's / the downsampling's key order (spatially coherent gathers and scatters, no reorder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ssov_train.errors import DataError
from ssov_train.jit import jit

NUM_LEVELS = 5  # input resolution + 4 stride-2 levels of the MinkUNet
SUBM_OFFSETS = np.array([(a - 1, b - 1, c - 1) for a in range(3) for b in range(3) for c in range(3)], np.int64)
SUBM_CENTER = 13
MIN_CHUNK, MAX_CHUNK = 16, 512
SUBM_BANDS = 3  # output-row bands of submanifold rulebooks
INDEX_DTYPE = np.int32
FLAVOURS = ("portable", "cpu")


@dataclass
class Rulebook:
    in_chunks: np.ndarray  # (n_chunks, B) int32 input rows, num_in = zero row
    chunk_kernel: np.ndarray  # (n_chunks,) int32 kernel index of each chunk
    out_tables: list[np.ndarray]  # per band of output rows: (D_g, n_g) int32 message slots (portable flavour)
    num_pairs: int  # real (unpadded) pairs
    slot_out: np.ndarray  # (n_chunks * B,) int32 output row of every slot (padded slots: row 0, zero message)

    @property
    def padded_pairs(self) -> int:
        return int(self.in_chunks.size)


@dataclass
class KernelMaps:
    """Every rulebook of one scan: ``subm[l]`` at level l (0..4), ``down[l]`` from level l to l+1 (0..3), ``up[l]``
    from level l+1 back to level l; ``order`` puts the input voxels in level-0 row order, ``restore`` undoes it."""

    level_sizes: list[int]
    subm: list[Rulebook]
    down: list[Rulebook]
    up: list[Rulebook]
    order: np.ndarray  # (V,) int32: level-0 row r is input voxel order[r]
    restore: np.ndarray  # (V,) int32: input voxel i is level-0 row restore[i]
    level_coords: list[np.ndarray]  # (sites, 3) int64 grid coords of every level's rows, at that level's stride
    flavour: str = "portable"

    def inputs(self) -> dict[str, np.ndarray]:
        """Graph inputs by name (see :func:`input_names`), without the features."""
        cpu = self.flavour == "cpu"
        out: dict[str, np.ndarray] = {} if cpu else {"order": self.order, "restore": self.restore}
        for kind in ("subm", "down", "up"):
            for level, rb in enumerate(getattr(self, kind)):
                out[f"{kind}{level}_in"] = rb.in_chunks
                out[f"{kind}{level}_kernel"] = rb.chunk_kernel
                if kind == "subm" and cpu:
                    out[f"{kind}{level}_to"] = rb.slot_out
                    continue
                for band, table in enumerate(rb.out_tables):
                    out[f"{kind}{level}_out{band}"] = table
        return out

    def chunks(self) -> dict[str, int]:
        """Chunk length of every rulebook, by name."""
        return {f"{kind}{level}": int(rb.in_chunks.shape[1]) for kind in ("subm", "down", "up")
                for level, rb in enumerate(getattr(self, kind))}


def bands(kind: str) -> int:
    """Number of output-row bands of a rulebook kind (submanifold rulebooks are banded by degree)."""
    return SUBM_BANDS if kind == "subm" else 1


def input_names(flavour: str = "portable") -> list[str]:
    """The graph's index inputs, in graph order (after ``features``)."""
    names = [] if flavour == "cpu" else ["order", "restore"]
    for kind, count in (("subm", NUM_LEVELS), ("down", NUM_LEVELS - 1), ("up", NUM_LEVELS - 1)):
        for level in range(count):
            names += [f"{kind}{level}_in", f"{kind}{level}_kernel"]
            if kind == "subm" and flavour == "cpu":
                names.append(f"{kind}{level}_to")
            else:
                names += [f"{kind}{level}_out{band}" for band in range(bands(kind))]
    return names


@jit
def _pack(coords):
    """int64 keys of non-negative (V, 3) coords (each axis has room for a -1 / +1 margin): (keys, row stride,
    column stride, whether the keys are strictly increasing)."""
    n = len(coords)
    top1 = top2 = 0
    for i in range(n):
        top1 = max(top1, coords[i, 1])
        top2 = max(top2, coords[i, 2])
    d1 = np.int64(top1) + 3
    d2 = np.int64(top2) + 3
    keys = np.empty(n, np.int64)
    increasing = True
    for i in range(n):
        keys[i] = ((np.int64(coords[i, 0]) + 1) * d1 + coords[i, 1] + 1) * d2 + coords[i, 2] + 1
        if i > 0 and keys[i] <= keys[i - 1]:
            increasing = False
    return keys, d1 * d2, d2, increasing


def _chunk_size(num_pairs: int, kernel_volume: int) -> int:
    """Chunk length: large enough for efficient MatMuls, small enough that per-kernel padding stays minor."""
    target = max(1, num_pairs // (4 * kernel_volume))  # mean padding ~ B/2 per kernel index: ~1/8 of the pairs
    return min(max(1 << round(math.log2(target)), MIN_CHUNK), MAX_CHUNK)


def _band_cuts(degree: np.ndarray, num_bands: int) -> list[int]:
    """Row cuts of non-increasing ``degree`` into ``num_bands`` (2 or 3) contiguous bands minimising the padded
    table size sum(rows_g * max_degree_g); cuts are searched exhaustively at degree changes (at most 27)."""
    n = len(degree)
    starts = _degree_starts(degree)
    if num_bands == 1 or len(starts) <= 1:
        return [n] * (num_bands - 1)
    heights = np.maximum(degree[starts], 1).astype(np.int64)
    first = n * heights[0]  # cost if one band covered everything
    if num_bands == 2 or len(starts) == 2:
        cost = starts[1:] * heights[0] + (n - starts[1:]) * heights[1:]
        return [int(starts[1 + np.argmin(cost)])] + [n] * (num_bands - 2)
    i, j = np.triu_indices(len(starts), 1)
    keep = i > 0
    i, j = i[keep], j[keep]
    cost = starts[i] * heights[0] + (starts[j] - starts[i]) * heights[i] + (n - starts[j]) * heights[j]
    best = int(np.argmin(cost))
    if cost[best] >= first:
        return [n] * (num_bands - 1)
    return [int(starts[i[best]]), int(starts[j[best]])]


# ---- compiled kernels (numba, one thread; see ssov_train/jit.py). Every loop below visits pairs in the order
# the rulebook format defines (by kernel index, then by the order the pairs were found), so the maps are a
# pure function of the coords.

@jit
def _degree_starts(degree):
    """Rows where a non-increasing degree sequence changes (row 0 included)."""
    n = len(degree)
    starts = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if i == 0 or degree[i] != degree[i - 1]:
            starts[m] = i
            m += 1
    return starts[:m]


@jit
def _subm_pairs_sorted(keys, row_stride, col_stride):
    """(input, output, kernel index) of every non-centre 3^3 neighbour pair of strictly increasing ``keys``,
    as positions in ``keys``, grouped by kernel index.

    Only the 13 offsets before the centre are searched: a pair found at offset k is also the pair of the
    mirrored offset 26 - k with input and output swapped. The keys of (c0 + d0, c1 + d1, c2 - 1 .. c2 + 1) are
    three consecutive integers that only grow with the row, so one merge pointer per (d0, d1) column finds all
    three in O(V) (no search); the (0, 0, -1) neighbour is the previous key. Within a kernel index, pairs come
    by increasing output position (k < 13) or increasing input position (k > 13)."""
    n = len(keys)
    padded = np.empty(n + 3, np.int64)  # sentinels past the end: no bounds test in the loops
    padded[:n] = keys
    padded[n:] = np.iinfo(np.int64).max
    # hits of offset k < 13 in row order: (output position found_out[k, :counts[k]], input found_in[k, ...]);
    # every row writes at the cursor and the cursor moves on a hit only (no branch on the data)
    found_out = np.empty((13, n + 1), np.int32)
    found_in = np.empty((13, n + 1), np.int32)
    counts = np.zeros(27, np.int64)
    for col in range(4):
        d0 = -1 if col < 3 else 0
        d1 = col - 1 if col < 3 else -1
        shift = d0 * row_stride + d1 * col_stride - 1
        k0 = 9 * (d0 + 1) + 3 * (d1 + 1)
        c0 = c1 = c2 = 0
        p = 0
        for i in range(n):
            lo = keys[i] + shift
            while padded[p] < lo:
                p += 1
            # the three targets lie in the window p .. p + 2 if present (strictly increasing keys)
            w0, w1, w2 = padded[p], padded[p + 1], padded[p + 2]
            found_out[k0, c0] = i
            found_in[k0, c0] = p
            c0 += w0 == lo
            found_out[k0 + 1, c1] = i
            found_in[k0 + 1, c1] = p + (w0 != lo + 1)
            c1 += (w0 == lo + 1) | (w1 == lo + 1)
            found_out[k0 + 2, c2] = i
            found_in[k0 + 2, c2] = p + (w0 != lo + 2) + (w1 != lo + 2 and w0 != lo + 2)
            c2 += (w0 == lo + 2) | (w1 == lo + 2) | (w2 == lo + 2)
        counts[k0], counts[k0 + 1], counts[k0 + 2] = c0, c1, c2
    c = 0
    for i in range(1, n):  # (0, 0, -1): the previous key
        found_out[12, c] = i
        found_in[12, c] = i - 1
        c += keys[i - 1] == keys[i] - 1
    counts[12] = c
    for k in range(13):
        counts[26 - k] = counts[k]
    total = 0
    for k in range(27):
        total += counts[k]
    ins = np.empty(total, np.int64)
    outs = np.empty(total, np.int64)
    kernels = np.empty(total, np.uint8)
    at = 0
    for k in range(27):
        if k == 13:
            continue
        src = k if k < 13 else 26 - k
        a, b = (found_in[src], found_out[src]) if k < 13 else (found_out[src], found_in[src])
        for t in range(counts[k]):
            ins[at + t] = a[t]
            outs[at + t] = b[t]
            kernels[at + t] = k
        at += counts[k]
    return ins, outs, kernels


@jit
def _degree_order(outs, num_rows):
    """Rows by decreasing pair count (a stable counting sort): (order, rank of every row)."""
    degree = np.zeros(num_rows, np.int64)
    for o in outs:
        degree[o] += 1
    top = 0
    for d in degree:
        top = max(top, d)
    bucket = np.zeros(top + 2, np.int64)
    for d in degree:
        bucket[top - d + 1] += 1
    for b in range(1, top + 2):
        bucket[b] += bucket[b - 1]
    order = np.empty(num_rows, np.int64)
    rank = np.empty(num_rows, np.int64)
    for r in range(num_rows):
        at = bucket[top - degree[r]]
        bucket[top - degree[r]] = at + 1
        order[at] = r
        rank[r] = at
    return order, rank


@jit
def _pack_pairs(in_rows, out_rows, kernel, kernel_volume, chunk, num_in):
    """Pairs grouped by kernel index (a stable counting sort) and placed in chunks: (in_chunks flat,
    chunk_kernel, slot_out, first padded slot, slot of every grouped pair, grouped output rows)."""
    n = len(in_rows)
    counts = np.zeros(kernel_volume, np.int64)
    for k in kernel:
        counts[k] += 1
    chunks_per_kernel = np.empty(kernel_volume, np.int64)
    n_chunks = 0
    for k in range(kernel_volume):
        chunks_per_kernel[k] = (counts[k] + chunk - 1) // chunk
        n_chunks += chunks_per_kernel[k]
    if n_chunks * chunk == n:  # no padded slot left: add a chunk, its (zero-input) messages are the padding target
        chunks_per_kernel[kernel_volume - 1] += 1
        n_chunks += 1
    fill = np.empty(kernel_volume, np.int64)  # next grouped pair of each kernel index
    slot_base = np.empty(kernel_volume, np.int64)  # slot of a kernel index's first chunk minus its first pair
    chunk_kernel = np.empty(n_chunks, np.int32)
    pair_total = 0
    c = 0
    for k in range(kernel_volume):
        fill[k] = pair_total
        slot_base[k] = c * chunk - pair_total
        pair_total += counts[k]
        for _ in range(chunks_per_kernel[k]):
            chunk_kernel[c] = k
            c += 1
    in_chunks = np.full(n_chunks * chunk, num_in, np.int32)
    slot_out = np.zeros(n_chunks * chunk, np.int32)
    slot = np.empty(n, np.int64)
    grouped_out = np.empty(n, np.int64)
    for p in range(n):
        k = kernel[p]
        g = fill[k]
        fill[k] = g + 1
        at = slot_base[k] + g
        slot[g] = at
        grouped_out[g] = out_rows[p]
        in_chunks[at] = in_rows[p]
        slot_out[at] = out_rows[p]
    zero_slot = 0
    while in_chunks[zero_slot] != num_in:
        zero_slot += 1
    return in_chunks, chunk_kernel, slot_out, zero_slot, slot, grouped_out


@jit
def _pair_ranks(grouped_out, num_out):
    """Rank of every (grouped) pair among its output row's pairs, and the pair count of every output row."""
    rank = np.empty(len(grouped_out), np.int64)
    per_out = np.zeros(num_out, np.int64)
    for g in range(len(grouped_out)):
        o = grouped_out[g]
        rank[g] = per_out[o]
        per_out[o] += 1
    return rank, per_out


@jit
def _fill_tables(flat, bounds, offsets, slot, grouped_out, rank):
    """Write every pair's slot into its band table: band g covers output rows bounds[g] .. bounds[g + 1] and is
    stored row-major (height, width) at flat[offsets[g]:]."""
    num_bands = len(bounds) - 1
    for p in range(len(slot)):
        o = grouped_out[p]
        g = 0
        while o >= bounds[g + 1] and g < num_bands - 1:
            g += 1
        flat[offsets[g] + rank[p] * (bounds[g + 1] - bounds[g]) + o - bounds[g]] = slot[p]


@jit
def _reorder_rows(level, ins, outs, order, rank):
    """Level rows in ``order`` and the pairs' rows renamed by ``rank``."""
    new_level = np.empty_like(level)
    for r in range(len(order)):
        new_level[r] = level[order[r]]
    new_ins = np.empty_like(ins)
    new_outs = np.empty_like(outs)
    for p in range(len(ins)):
        new_ins[p] = rank[ins[p]]
        new_outs[p] = rank[outs[p]]
    return new_level, new_ins, new_outs


@jit
def _downsample_keys(coords):
    """Parent cells of a level (``coords // 2``), packed: (keys, parent coords, kernel index in the 2^3 cell)."""
    n = len(coords)
    parent = np.empty((n, 3), np.int64)
    kernel = np.empty(n, np.int64)
    top = np.zeros(3, np.int64)
    for i in range(n):
        for a in range(3):
            v = coords[i, a] // 2
            parent[i, a] = v
            top[a] = max(top[a], v)
        kernel[i] = (coords[i, 0] - 2 * parent[i, 0]) * 4 + (coords[i, 1] - 2 * parent[i, 1]) * 2 + (
            coords[i, 2] - 2 * parent[i, 2])
    d1 = top[1] + 3
    d2 = top[2] + 3
    keys = np.empty(n, np.int64)
    for i in range(n):
        keys[i] = ((parent[i, 0] + 1) * d1 + parent[i, 1] + 1) * d2 + parent[i, 2] + 1
    return keys, parent, kernel


@jit
def _radix_argsort(keys):
    """Stable argsort of non-negative int64 keys: LSD radix sort, 11-bit digits, as many passes as the largest
    key needs (2-3 for a scan's packed cells)."""
    n = len(keys)
    top = 0
    for k in keys:
        top = max(top, k)
    order = np.arange(n)
    scratch = np.empty(n, np.int64)
    shift = 0
    while shift == 0 or (top >> shift) > 0:
        count = np.zeros(2049, np.int64)
        for i in range(n):
            count[((keys[i] >> shift) & 2047) + 1] += 1
        for d in range(2048):
            count[d + 1] += count[d]
        for t in range(n):
            i = order[t]
            d = (keys[i] >> shift) & 2047
            scratch[count[d]] = i
            count[d] += 1
        order, scratch = scratch, order
        shift += 11
    return order


@jit
def _unique_sorted(keys, order, parent):
    """np.unique(keys, return_inverse=True) given an argsort ``order``: (coarse coords by key, inverse)."""
    n = len(keys)
    inverse = np.empty(n, np.int64)
    coarse = np.empty((n, 3), np.int64)
    m = -1
    last = np.int64(-1)
    for t in range(n):
        i = order[t]
        if t == 0 or keys[i] != last:
            m += 1
            last = keys[i]
            coarse[m, 0] = parent[i, 0]
            coarse[m, 1] = parent[i, 1]
            coarse[m, 2] = parent[i, 2]
        inverse[i] = m
    return coarse[:m + 1].copy(), inverse


def _rulebook(in_rows: np.ndarray, out_rows: np.ndarray, kernel: np.ndarray, num_in: int, num_out: int,
              kernel_volume: int, chunk: int | None, num_bands: int = 1, with_tables: bool = True) -> Rulebook:
    """Pack pairs (input row -> output row via kernel index; an output has at most one pair per kernel index)
    into the chunked form, with the scatter-free output tables (portable flavour) or without (cpu flavour:
    ``slot_out`` only).  With ``num_bands`` > 1 the output rows must come sorted by decreasing pair count (see
    :func:`_band_cuts`)."""
    n = len(in_rows)
    b = chunk or _chunk_size(n, kernel_volume)
    in_chunks, chunk_kernel, slot_out, zero_slot, slot, g_out = _pack_pairs(in_rows, out_rows, kernel,
                                                                           kernel_volume, b, num_in)
    n_chunks = len(chunk_kernel)
    if not with_tables:
        return Rulebook(in_chunks.reshape(n_chunks, b), chunk_kernel, [], n, slot_out)
    rank, per_out = _pair_ranks(g_out, num_out)
    bounds = [0, *_band_cuts(per_out, num_bands), num_out] if num_bands > 1 else [0, num_out]
    heights = [max(1, int(per_out[lo:hi].max()) if hi > lo else 1) for lo, hi in zip(bounds[:-1], bounds[1:])]
    sizes = [h * (hi - lo) for h, lo, hi in zip(heights, bounds[:-1], bounds[1:])]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.full(int(offsets[-1]), zero_slot, INDEX_DTYPE)
    _fill_tables(flat, np.array(bounds, np.int64), offsets, slot, g_out, rank)
    tables = [flat[offsets[g]:offsets[g + 1]].reshape(heights[g], bounds[g + 1] - bounds[g])
              for g in range(len(heights))]
    return Rulebook(in_chunks.reshape(n_chunks, b), chunk_kernel, tables, n, slot_out)


def _subm_pairs(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input row, output row, kernel index) of every non-centre neighbour pair of a 3^3 submanifold conv,
    grouped by kernel index (see :func:`_subm_pairs_sorted`)."""
    keys, row_stride, col_stride, increasing = _pack(coords)
    if increasing:  # the voxelizer and _downsample give key-sorted rows
        return _subm_pairs_sorted(keys, row_stride, col_stride)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise DataError("kernel maps: coords contain duplicate voxels (use the voxelizer's output)")
    ins, outs, kernels = _subm_pairs_sorted(sorted_keys, row_stride, col_stride)
    return order[ins], order[outs], kernels


def _downsample(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse sites (sorted by key), parent row of every fine site, and its kernel index in the 2^3 cell."""
    keys, parent, kernel = _downsample_keys(coords)
    coarse, inverse = _unique_sorted(keys, _radix_argsort(keys), parent)
    return coarse, inverse, kernel


def build_kernel_maps(coords: np.ndarray, chunks: dict[str, int] | None = None,
                      flavour: str = "portable") -> KernelMaps:
    """All rulebooks of one scan from the voxelizer's (V, 3) non-negative int coords.

    Portable flavour: every level's rows are ordered by decreasing neighbour count, so the submanifold output
    tables split into bands of similar width (the graph reorders the input with ``order`` and restores it at
    the end).  Cpu flavour: level 0 keeps the input order (``order`` is the identity), coarser levels their
    key order, and no tables are built.  ``chunks`` fixes the chunk length per rulebook name (``subm0`` ...
    ``up3``), as an exported graph needs; left out, each is chosen from this scan's pair count (what the export
    freezes into the sidecar)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"kernel maps: flavour must be one of {FLAVOURS}, got {flavour!r}")
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3 or len(coords) == 0:
        raise DataError(f"kernel maps: coords must be a non-empty (V, 3) array, got {coords.shape}")
    if coords.min() < 0:
        raise DataError("kernel maps: coords must be non-negative grid indices (as the voxelizer gives)")
    chunks = chunks or {}
    portable = flavour == "portable"
    level = coords.astype(np.int64)
    sizes, subm, down, up, level_coords = [], [], [], [], []
    pending = None  # (parent, kernel, num_fine) of the last downsampling, waiting for the coarse row order
    order0 = restore0 = None
    for lv in range(NUM_LEVELS):
        ins, outs, ks = _subm_pairs(level)
        if portable:
            order, rank = _degree_order(outs, len(level))
            level, ins, outs = _reorder_rows(level, ins, outs, order, rank)
        else:
            order = rank = np.arange(len(level))
        sizes.append(len(level))
        level_coords.append(level)
        if lv == 0:
            order0, restore0 = order.astype(INDEX_DTYPE), rank.astype(INDEX_DTYPE)
        else:
            parent, kernel, num_fine = pending
            parent, fine_rows = rank[parent], np.arange(num_fine)
            down.append(_rulebook(fine_rows, parent, kernel, num_fine, len(level), 8, chunks.get(f"down{lv - 1}")))
            up.append(_rulebook(parent, fine_rows, kernel, len(level), num_fine, 8, chunks.get(f"up{lv - 1}")))
        subm.append(_rulebook(ins, outs, ks, len(level), len(level), 27, chunks.get(f"subm{lv}"), SUBM_BANDS,
                              with_tables=portable))
        if lv < NUM_LEVELS - 1:
            coarse, parent, kernel = _downsample(level)
            pending = (parent, kernel, len(level))
            level = coarse
    return KernelMaps(sizes, subm, down, up, order0, restore0, level_coords, flavour)


# ---- pair lists (the cpu-gemm backend, ssov_export/gemm_backend.py) -------------------------------------------

@dataclass
class PairMaps:
    """Every rulebook of one scan as plain pair lists: ``subm[l]``, ``down[l]`` (level l -> l+1) and ``up[l]``
    (level l+1 -> l) are (in rows, out rows, starts): int32 pairs grouped by kernel index, group k at
    ``starts[k]:starts[k + 1]`` (int64, kernel volume + 1 entries).  Submanifold lists leave the centre out (every
    site is its own centre).  Rows: level 0 in the input order, coarser levels in key order (as the cpu flavour)."""

    level_sizes: list[int]
    subm: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    down: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    up: list[tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def num_pairs(self) -> list[int]:
        """Neighbour pairs (centre excluded) of every level's submanifold rulebook."""
        return [len(ins) for ins, _, _ in self.subm]


@jit
def _group_pairs(in_rows, out_rows, kernel, kernel_volume):
    """Pairs grouped by kernel index, a stable counting sort: (in rows, out rows, group starts)."""
    starts = np.zeros(kernel_volume + 1, np.int64)
    for k in kernel:
        starts[k + 1] += 1
    for k in range(kernel_volume):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    ins = np.empty(len(in_rows), np.int32)
    outs = np.empty(len(in_rows), np.int32)
    for p in range(len(in_rows)):
        at = fill[kernel[p]]
        fill[kernel[p]] = at + 1
        ins[at] = in_rows[p]
        outs[at] = out_rows[p]
    return ins, outs, starts


def build_pair_maps(coords: np.ndarray) -> PairMaps:
    """All rulebooks of one scan, as pair lists, from the voxelizer's (V, 3) non-negative int coords: the same
    pairs as :func:`build_kernel_maps`' cpu flavour (same row order), without chunks or tables."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3 or len(coords) == 0:
        raise DataError(f"kernel maps: coords must be a non-empty (V, 3) array, got {coords.shape}")
    if coords.min() < 0:
        raise DataError("kernel maps: coords must be non-negative grid indices (as the voxelizer gives)")
    level = coords.astype(np.int64)
    sizes, subm, down, up = [], [], [], []
    for lv in range(NUM_LEVELS):
        ins, outs, ks = _subm_pairs(level)
        sizes.append(len(level))
        subm.append(_group_pairs(ins, outs, ks, 27))
        if lv < NUM_LEVELS - 1:
            coarse, parent, kernel = _downsample(level)
            fine = np.arange(len(level))
            down.append(_group_pairs(fine, parent, kernel, 8))
            up.append(_group_pairs(parent, fine, kernel, 8))
            level = coarse
    return PairMaps(sizes, subm, down, up)
