"""Kernel maps (rulebooks) of the MinkUNet, computed outside the network graph: the one home of this
preprocessing, used by every backend that runs the exported graph (onnxruntime, TensorRT) and by the export
itself.

Sites of one level are packed into int64 keys (sorted once); neighbours are found with ``np.searchsorted``
(4 searches per level, see :func:`_subm_pairs`).
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

Two **flavours** of the same rulebooks feed the two graphs of a package (ssov_export/onnx_graph.py):

* ``portable`` (above, scatter-free): TensorRT and the CUDA execution provider;
* ``cpu`` (onnxruntime on CPU): submanifold messages are summed with ``ScatterND(reduction="add")``, which
  onnxruntime's CPU kernel does in one pass over the real slots (no padded tables, no band sums), so the
  submanifold rulebooks carry ``<name>_to``, the output row of every message slot, instead of tables; rows
  keep the voxelizer's / the downsampling's key order (spatially coherent gathers and scatters, no reorder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssov_train.errors import DataError

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


def _pack(coords: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """int64 keys of non-negative (V, 3) coords within ``dims`` (each axis has room for a -1 / +1 margin)."""
    c = coords.astype(np.int64) + 1
    return (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]


def _chunk_size(num_pairs: int, kernel_volume: int) -> int:
    """Chunk length: large enough for efficient MatMuls, small enough that per-kernel padding stays minor."""
    target = max(1, num_pairs // (4 * kernel_volume))  # mean padding ~ B/2 per kernel index: ~1/8 of the pairs
    return int(np.clip(1 << int(np.round(np.log2(target))), MIN_CHUNK, MAX_CHUNK))


def _band_cuts(degree: np.ndarray, num_bands: int) -> list[int]:
    """Row cuts of non-increasing ``degree`` into ``num_bands`` (2 or 3) contiguous bands minimising the padded
    table size sum(rows_g * max_degree_g); cuts are searched exhaustively at degree changes (at most 27)."""
    n = len(degree)
    starts = np.concatenate([[0], np.flatnonzero(degree[1:] != degree[:-1]) + 1])
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


def _rulebook(in_rows: np.ndarray, out_rows: np.ndarray, kernel: np.ndarray, num_in: int, num_out: int,
              kernel_volume: int, chunk: int | None, num_bands: int = 1, with_tables: bool = True) -> Rulebook:
    """Pack pairs (input row -> output row via kernel index; an output has at most one pair per kernel index)
    into the chunked form, with the scatter-free output tables (portable flavour) or without (cpu flavour:
    ``slot_out`` only).  With ``num_bands`` > 1 the output rows must come sorted by decreasing pair count (see
    :func:`_band_cuts`)."""
    n = len(in_rows)
    kernel = kernel.astype(np.uint8)
    if n and np.any(kernel[1:] < kernel[:-1]):  # group by kernel (radix sort of a uint8 key)
        order = np.argsort(kernel, kind="stable")
        in_rows, out_rows, kernel = in_rows[order], out_rows[order], kernel[order]
    b = chunk or _chunk_size(n, kernel_volume)
    counts = np.bincount(kernel, minlength=kernel_volume)
    chunks_per_kernel = -(-counts // b)
    n_chunks = int(chunks_per_kernel.sum())
    if n_chunks * b == n:  # no padded slot left: add a chunk, its (zero-input) messages are the padding target
        chunks_per_kernel[-1] += 1
        n_chunks += 1
    # slot of every pair: its kernel's first chunk * b + rank within the kernel
    first_pair = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_slot = np.concatenate([[0], np.cumsum(chunks_per_kernel)[:-1]]) * b
    slot = (first_slot - first_pair)[kernel] + np.arange(n)
    in_chunks = np.full(n_chunks * b, num_in, INDEX_DTYPE)
    in_chunks[slot] = in_rows
    zero_slot = int(np.flatnonzero(in_chunks == num_in)[0])  # a padded slot: its message is exactly zero
    chunk_kernel = np.repeat(np.arange(kernel_volume, dtype=INDEX_DTYPE), chunks_per_kernel)
    slot_out = np.zeros(n_chunks * b, INDEX_DTYPE)
    slot_out[slot] = out_rows
    if not with_tables:
        return Rulebook(in_chunks.reshape(n_chunks, b), chunk_kernel, [], n, slot_out)
    # rank of every pair among its output's pairs: one pass per kernel index (at most one pair per output each)
    rank = np.empty(n, np.int64)
    per_out = np.zeros(num_out, np.int64)
    for k in np.flatnonzero(counts):
        lo, hi = first_pair[k], first_pair[k] + counts[k]
        outs = out_rows[lo:hi]
        rank[lo:hi] = per_out[outs]
        per_out[outs] += 1
    width = max(1, int(per_out.max()) if n else 1)
    full = np.full((width, num_out), zero_slot, INDEX_DTYPE)
    full[rank, out_rows] = slot
    bounds = [0, *_band_cuts(per_out, num_bands), num_out] if num_bands > 1 else [0, num_out]
    tables = [np.ascontiguousarray(full[:max(1, int(per_out[lo:hi].max()) if hi > lo else 1), lo:hi])
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    return Rulebook(in_chunks.reshape(n_chunks, b), chunk_kernel, tables, n, slot_out)


def _subm_pairs(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input row, output row, kernel index) of every non-centre neighbour pair of a 3^3 submanifold conv,
    grouped by kernel index.

    Only the 13 offsets before the centre are searched: a pair found at offset k is also the pair of the
    mirrored offset 26 - k with input and output swapped.  Keys of (c0 + d0, c1 + d1, c2 - 1 .. c2 + 1) are
    three consecutive integers, so one ``searchsorted`` per (d0, d1) column finds all three (a window of three
    sorted keys); the (0, 0, -1) neighbour is simply the previous sorted key."""
    dims = coords.max(0).astype(np.int64) + 3
    keys = _pack(coords, dims)
    if np.all(keys[1:] > keys[:-1]):  # the voxelizer and _downsample give key-sorted rows
        order, sorted_keys = None, keys
    else:
        order = np.argsort(keys)
        sorted_keys = keys[order]
        if np.any(sorted_keys[1:] == sorted_keys[:-1]):
            raise DataError("kernel maps: coords contain duplicate voxels (use the voxelizer's output)")
    n = len(sorted_keys)
    padded = np.concatenate([sorted_keys, np.full(3, -1, np.int64)])  # a window may run past the end
    positions = np.arange(n)
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k -> (output sorted positions, input sorted positions)
    for d0, d1 in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        base = sorted_keys + (d0 * dims[1] + d1) * dims[2]
        start = np.searchsorted(sorted_keys, base - 1)
        window = [padded[start], padded[start + 1], padded[start + 2]]
        for d2 in (-1, 0, 1):
            target = base + d2
            at = [w == target for w in window]
            hit = at[0] | at[1] | at[2]
            offset = at[1].astype(np.int64) + 2 * at[2]
            found[9 * (d0 + 1) + 3 * (d1 + 1) + (d2 + 1)] = (positions[hit], (start + offset)[hit])
    prev = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1] + 1)  # (0, 0, -1): the previous key
    found[12] = (prev + 1, prev)
    ins, outs, kernels = [], [], []
    for k in range(27):
        if k == SUBM_CENTER:
            continue
        out_pos, in_pos = found[k] if k < SUBM_CENTER else found[26 - k][::-1]
        ins.append(in_pos)
        outs.append(out_pos)
        kernels.append(np.full(len(in_pos), k, np.uint8))
    ins, outs = np.concatenate(ins), np.concatenate(outs)
    if order is not None:
        ins, outs = order[ins], order[outs]
    return ins, outs, np.concatenate(kernels)


def _downsample(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse sites (sorted by key), parent row of every fine site, and its kernel index in the 2^3 cell."""
    parent = coords // 2
    dims = parent.max(0).astype(np.int64) + 3
    coarse_keys, inverse = np.unique(_pack(parent, dims), return_inverse=True)
    coarse = np.empty((len(coarse_keys), 3), np.int64)
    coarse[inverse.reshape(-1)] = parent
    cell = coords - 2 * parent
    kernel = (cell[:, 0] * 4 + cell[:, 1] * 2 + cell[:, 2]).astype(np.int64)
    return coarse, inverse.reshape(-1).astype(np.int64), kernel


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
            degree = np.bincount(outs, minlength=len(level)).astype(np.uint8)
            order = np.argsort(np.uint8(255) - degree, kind="stable")
            rank = np.empty(len(level), np.int64)
            rank[order] = np.arange(len(level))
            level, ins, outs = level[order], rank[ins], rank[outs]
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
