"""``cpu-gemm``: the MinkUNet on CPU as fused gather-GEMM-scatter sparse convolutions (numba + the BLAS SGEMM).

One sparse conv through a rulebook (pairs input row -> output row, grouped by kernel index)::

    out = x @ W[centre] (+ nothing for strided / transposed convs)    # one dense SGEMM over all sites
    for every kernel index k, in blocks of at most ``block`` pairs:  # block: the gathered rows stay in L1/L2
        buf  = x[in_rows]                                            # gather (numba)
        msg  = buf @ W[k]                                            # SGEMM (BLAS, called from numba)
        out[out_rows] += msg                                         # scatter-add (numba)
    out = relu(out + bias [+ residual])                              # fused epilogue, one pass

BatchNorm is folded into the conv weights (as in the ONNX graphs, ssov_export/onnx_graph.py ``_fold``); the
whole network runs inside compiled code apart from one Python call per conv.  The rulebooks are the pair lists
of ssov_export/kernel_maps.py (:func:`~ssov_export.kernel_maps.build_pair_maps`), shared by every conv of a
level, so the only per-scan preprocessing is the kernel maps.  Only occupied neighbours cost FLOPs (no padding,
no im2col zeros): the rate a bench prints over the useful MACs is the rate this backend achieves.

SGEMM is called through its function pointer (the Fortran ``sgemm`` interface) from inside numba: scipy's
OpenBLAS (``scipy.linalg.cython_blas``) where scipy is installed, otherwise the OpenBLAS bundled in numpy's
wheel (64-bit integers), so the slim runtime needs nothing new.  The BLAS runs on one thread (the node decides
its cores; small GEMMs gain nothing from BLAS threads on a busy machine); with ``threads=2`` the large convs
are split by kernel index over two threads of our own (numba releases the GIL).

Model files: an ``ssov-checkpoint`` (``*.pt``; torch folds the weights once at load) or an exported model package
that carries ``weights_cpu.npz`` (``ssov-export onnx`` writes it; no torch needed then).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ssov_train.errors import ConfigError, DataError
from ssov_train.inference.backends import Backend
from ssov_train.jit import jit

from .kernel_maps import NUM_LEVELS, SUBM_CENTER, PairMaps, build_pair_maps

WEIGHTS_FILE = "weights_cpu.npz"
SPLIT_MIN_MACS = 4_000_000  # a conv split over two threads does at least this much (the hand-over costs ~50 us)
BLOCK_FLOATS = 1 << 19  # gathered floats per block (2 MB): GEMMs long enough to amortise packing the weights


# ---- SGEMM by function pointer ---------------------------------------------------------------------------------

@intrinsic
def _call_fortran13(typingctx, fn, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13):
    """Call the C function at address ``fn`` with 13 pointer arguments (the Fortran BLAS convention: every
    argument by reference).  The address is an argument, not a constant, so the caller stays cacheable."""
    sig = types.void(types.intp, *([types.intp] * 13))

    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr] * 13)
        f = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(f, [builder.inttoptr(a, ptr) for a in args[1:]])
        return context.get_dummy_value()

    return sig, codegen


@jit
def _sgemm(blas, ints, a, lda, b, c, beta):
    """Row-major ``c[:m] = a[:m] @ b + beta * c[:m]`` for ``m = len(c)`` rows; ``a`` rows ``lda`` floats apart,
    ``b`` (k, n) and ``c`` (m, n) C-contiguous float32.  ``ints`` is a scratch array of the BLAS's integer type
    (int32 or int64): its first six entries hold the by-reference sizes.  In column-major terms the call is
    C^T (n, m) = B^T (n, k) @ A^T (k, m)."""
    m, n = c.shape
    k = b.shape[0]
    if m == 0:
        return
    ints[0] = n
    ints[1] = m
    ints[2] = k
    ints[3] = n  # ldb
    ints[4] = lda
    ints[5] = n  # ldc
    scal = np.empty(2, np.float32)
    scal[0] = 1.0
    scal[1] = beta
    trans = np.empty(1, np.uint8)
    trans[0] = 78  # "N": no transpose
    ip = ints.ctypes.data
    w = ints.itemsize
    fp = scal.ctypes.data
    tp = trans.ctypes.data
    _call_fortran13(blas, tp, tp, ip, ip + w, ip + 2 * w, fp, b.ctypes.data, ip + 3 * w, a.ctypes.data,
                    ip + 4 * w, fp + 4, c.ctypes.data, ip + 5 * w)


def _capsule_address(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return int(get_ptr(capsule, get_name(capsule)))


class Blas:
    """The SGEMM this process uses: its address, integer width and where it came from."""

    def __init__(self) -> None:
        self.address, self.int_dtype, self.source = self._find()

    @staticmethod
    def _one_thread(lib: ctypes.CDLL, names: Sequence[str]) -> None:
        for name in names:
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = [ctypes.c_int], None
                fn(1)
                return

    def _find(self) -> tuple[int, type, str]:
        try:
            from scipy.linalg import cython_blas

            for path in glob.glob(os.path.join(os.path.dirname(__import__("scipy").__file__) + ".libs",
                                               "libscipy_openblas*.so*")):
                self._one_thread(ctypes.CDLL(path), ("scipy_openblas_set_num_threads", "openblas_set_num_threads"))
            return _capsule_address(cython_blas.__pyx_capi__["sgemm"]), np.int32, "scipy OpenBLAS"
        except ImportError:
            pass
        # numpy's wheel bundles an ILP64 OpenBLAS (symbols suffixed 64_), already loaded with numpy
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libopenblas*.so*"))
        for path in libs:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "sgemm_64_"):
                self._one_thread(lib, ("openblas_set_num_threads64_",))
                return ctypes.cast(lib.sgemm_64_, ctypes.c_void_p).value, np.int64, "numpy's OpenBLAS (ILP64)"
        raise ConfigError("cpu-gemm backend: no SGEMM found (neither scipy nor numpy's bundled OpenBLAS)")


# ---- the fused sparse conv -------------------------------------------------------------------------------------

@jit
def _accumulate(blas, ints, x, w, centre, ins, outs, starts, first, last, out, buf_in, buf_msg):
    """``out`` (V_out, Cout) = centre term + sum over the pairs of kernel indices ``first`` .. ``last - 1`` of
    x[in] @ w[k].

    ``w`` (K, Cin, Cout); ``centre`` >= 0: the kernel index applied to every row (submanifold convs: V_out = V_in),
    else the sum starts at zero; pairs ``ins[p] -> outs[p]`` grouped by kernel index, group k =
    ``starts[k]:starts[k + 1]``.  ``buf_in`` / ``buf_msg`` (block, Cin / Cout) are the gather and message
    buffers: a group is done in blocks of ``block`` pairs, so the gathered rows and messages stay in cache."""
    cin = x.shape[1]
    cout = w.shape[2]
    if centre >= 0:
        _sgemm(blas, ints, x, cin, w[centre], out, 0.0)
    else:
        out[:] = 0.0
    block = buf_in.shape[0]
    for k in range(first, last):
        p = starts[k]
        end = starts[k + 1]
        wk = w[k]
        while p < end:
            n = min(block, end - p)
            for t in range(n):
                src = ins[p + t]
                for c in range(cin):
                    buf_in[t, c] = x[src, c]
            msg = buf_msg[:n]
            _sgemm(blas, ints, buf_in, cin, wk, msg, 0.0)
            for t in range(n):
                dst = outs[p + t]
                for j in range(cout):
                    out[dst, j] += msg[t, j]
            p += n


@jit
def _epilogue(out, other, bias, residual, relu):
    """``out = relu?(out [+ other] + bias [+ residual])`` in one pass; ``other`` / ``residual`` are added when they
    have rows (the second thread's partial sum; a residual block's shortcut)."""
    add_other = other.shape[0] > 0
    add_residual = residual.shape[0] > 0
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            v = out[r, j] + bias[j]
            if add_other:
                v += other[r, j]
            if add_residual:
                v += residual[r, j]
            if relu and v < 0.0:
                v = 0.0
            out[r, j] = v


def _sparse_conv(blas, ints, x, w, centre, ins, outs, starts, bias, residual, relu, out, buf_in, buf_msg):
    """One whole conv on the calling thread: :func:`_accumulate` over every kernel index, then the epilogue."""
    _accumulate(blas, ints, x, w, centre, ins, outs, starts, 0, len(starts) - 1, out, buf_in, buf_msg)
    _epilogue(out, out[:0], bias, residual, relu)


@jit
def _dense(blas, ints, x, w, bias, out):
    """``out = x @ w + bias`` (1x1 convs and the head)."""
    _sgemm(blas, ints, x, x.shape[1], w, out, 0.0)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] += bias[j]


# ---- weights ---------------------------------------------------------------------------------------------------

def fold_weights(model) -> dict[str, np.ndarray]:
    """Every conv of an eval-mode :class:`~ssov_train.models.minkunet.MinkUNet` with its BatchNorm folded in:
    ``<layer>_w`` (K, Cin, Cout) float32 and ``<layer>_b`` (Cout,), layers named ``stem``, ``down<i>``,
    ``enc<i>b<j>c1|c2|proj``, ``up<i>``, ``dec<i>b<j>...`` and ``head`` (plus ``normalize``: 1 for L2-normalised
    feature heads)."""
    from .onnx_graph import _fold

    model = model.eval()
    weights: dict[str, np.ndarray] = {}

    def put(name: str, stack: np.ndarray, bias: np.ndarray) -> None:
        weights[f"{name}_w"] = np.ascontiguousarray(stack, np.float32)
        weights[f"{name}_b"] = np.ascontiguousarray(bias, np.float32)

    def stage(prefix: str, blocks) -> None:
        for j, blk in enumerate(blocks):
            put(f"{prefix}b{j}c1", *_fold(blk.conv1.weight, blk.bn1))
            put(f"{prefix}b{j}c2", *_fold(blk.conv2.weight, blk.bn2))
            if blk.downsample is not None:
                put(f"{prefix}b{j}proj", *_fold(blk.downsample[0].weight, blk.downsample[1]))

    put("stem", *_fold(model.stem_conv.weight, model.stem_bn))
    for i in range(NUM_LEVELS - 1):
        put(f"down{i}", *_fold(model.down[i].conv.weight, model.down[i].bn))
        stage(f"enc{i}", model.encoder[i])
    for i in range(NUM_LEVELS - 1):
        put(f"up{i}", *_fold(model.up[i].conv.weight, model.up[i].bn))
        stage(f"dec{i}", model.decoder[i])
    put("head", model.final.weight.detach().float().numpy().T[None], model.final.bias.detach().float().numpy())
    weights["normalize"] = np.array([int(bool(model.cfg.normalize_features))], np.int32)
    return weights


def write_gemm_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    """The folded weights as an uncompressed npz, written atomically."""
    import io

    from ssov_train.io import write_bytes_atomic

    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    write_bytes_atomic(path, buffer.getvalue())


def load_weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---- the network -----------------------------------------------------------------------------------------------

class _Scratch:
    """What one thread's convs write besides their outputs: gather / message buffers, the BLAS size scratch."""

    def __init__(self, floats: int, int_dtype) -> None:
        self.buf_in = np.empty(floats, np.float32)
        self.buf_msg = np.empty(floats, np.float32)
        self.ints = np.zeros(8, int_dtype)

    def buffers(self, block: int, cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
        return self.buf_in[:block * cin].reshape(block, cin), self.buf_msg[:block * cout].reshape(block, cout)


class GemmNetwork:
    """The folded MinkUNet run conv by conv with :func:`_accumulate` on a scan's :class:`PairMaps`.

    With ``threads=2`` a conv worth it (at least :data:`SPLIT_MIN_MACS`) is split by kernel index: the calling
    thread does the centre term and the first kernel indices, a worker thread the rest into a second buffer,
    balanced by pair count; the epilogue adds both (sums in another order: equal to the one-thread result up
    to float rounding)."""

    def __init__(self, weights: dict[str, np.ndarray], blas: Optional[Blas] = None, threads: int = 1) -> None:
        self.w = weights
        self.blas = blas or Blas()
        widest = max(max(v.shape[1], v.shape[2]) for k, v in weights.items() if k.endswith("_w"))
        self.block = max(64, BLOCK_FLOATS // widest)
        self.threads = 2 if threads and int(threads) >= 2 else 1
        self._scratch = [_Scratch(self.block * widest, self.blas.int_dtype) for _ in range(self.threads)]
        self._pool = None
        if self.threads == 2:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cpu-gemm")
        self._none = np.empty((0, 1), np.float32)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def conv(self, x: np.ndarray, name: str, rulebook, rows: int, centre: int, relu: bool,
             residual: Optional[np.ndarray] = None) -> np.ndarray:
        w, b = self.w[f"{name}_w"], self.w[f"{name}_b"]
        cin, cout = w.shape[1], w.shape[2]
        out = np.empty((rows, cout), np.float32)
        ins, outs, starts = rulebook
        residual = self._none if residual is None else residual
        groups = len(starts) - 1
        pairs = int(starts[-1]) + (rows if centre >= 0 else 0)
        if self._pool is None or pairs * cin * cout < SPLIT_MIN_MACS:
            buf_in, buf_msg = self._scratch[0].buffers(self.block, cin, cout)
            _accumulate(self.blas.address, self._scratch[0].ints, x, w, centre, ins, outs, starts, 0, groups, out,
                        buf_in, buf_msg)
            _epilogue(out, out[:0], b, residual, relu)
            return out
        # the kernel index where the calling thread's share (centre rows + pairs) reaches half the work
        done = (rows if centre >= 0 else 0) + starts
        split = int(np.clip(np.searchsorted(done, pairs / 2), 1, groups - 1))
        other = np.empty_like(out)
        scratch = self._scratch[1]
        buf_in2, buf_msg2 = scratch.buffers(self.block, cin, cout)
        job = self._pool.submit(_accumulate, self.blas.address, scratch.ints, x, w, -1, ins, outs, starts, split,
                                groups, other, buf_in2, buf_msg2)
        buf_in, buf_msg = self._scratch[0].buffers(self.block, cin, cout)
        _accumulate(self.blas.address, self._scratch[0].ints, x, w, centre, ins, outs, starts, 0, split, out,
                    buf_in, buf_msg)
        job.result()
        _epilogue(out, other, b, residual, relu)
        return out

    def dense(self, x: np.ndarray, name: str) -> np.ndarray:
        w, b = self.w[f"{name}_w"][0], self.w[f"{name}_b"]
        out = np.empty((len(x), w.shape[1]), np.float32)
        _dense(self.blas.address, self._scratch[0].ints, x, w, b, out)
        return out

    def residual_block(self, x: np.ndarray, prefix: str, maps: PairMaps, level: int) -> np.ndarray:
        rb, rows = maps.subm[level], maps.level_sizes[level]
        h = self.conv(x, f"{prefix}c1", rb, rows, SUBM_CENTER, True)
        shortcut = self.dense(x, f"{prefix}proj") if f"{prefix}proj_w" in self.w else x
        return self.conv(h, f"{prefix}c2", rb, rows, SUBM_CENTER, True, shortcut)

    def stage(self, x: np.ndarray, prefix: str, maps: PairMaps, level: int) -> np.ndarray:
        j = 0
        while f"{prefix}b{j}c1_w" in self.w:
            x = self.residual_block(x, f"{prefix}b{j}", maps, level)
            j += 1
        return x

    def __call__(self, features: np.ndarray, maps: PairMaps) -> np.ndarray:
        x = np.ascontiguousarray(features, np.float32)
        sizes = maps.level_sizes
        x = self.conv(x, "stem", maps.subm[0], sizes[0], SUBM_CENTER, True)
        skips = []
        for i in range(NUM_LEVELS - 1):
            skips.append(x)
            x = self.conv(x, f"down{i}", maps.down[i], sizes[i + 1], -1, True)
            x = self.stage(x, f"enc{i}", maps, i + 1)
        for i in range(NUM_LEVELS - 1):
            level = NUM_LEVELS - 2 - i
            x = self.conv(x, f"up{i}", maps.up[level], sizes[level], -1, True)
            x = np.concatenate([x, skips[level]], axis=1)
            x = self.stage(x, f"dec{i}", maps, level)
        out = self.dense(x, "head")
        if int(self.w["normalize"][0]):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class GemmBackend(Backend):
    """``open_backend(model, "cpu-gemm")`` for an ``ssov-checkpoint`` or a package with ``weights_cpu.npz``.
    ``threads``: 1 (or unset: the node's default; it overlaps the network with AFI on the other core) runs the
    network on the calling thread, 2 or more splits the large convs over two threads (:class:`GemmNetwork`).
    ``last_timings_ms`` holds the kernel-map and network times of the last
    :meth:`run`."""

    name = "cpu-gemm"

    def __init__(self, path: str | Path, threads: Optional[int] = None, device: str = "cpu"):
        if device != "cpu":
            raise ConfigError(f"cpu-gemm backend runs on CPU only, got device {device!r}")
        path = Path(path)
        self.path = path
        if path.suffix == ".pt":
            from ssov_train.inference.spec import ModelSpec
            from ssov_train.openvocab.query import checkpoint_teacher
            from ssov_train.training.checkpoint import load_model

            model, ckpt = load_model(path)
            self.spec = ModelSpec.from_checkpoint(ckpt, str(path))
            self.text_embeddings = checkpoint_teacher(ckpt)
            weights = fold_weights(model)
        else:
            from .package import load_package

            pkg = load_package(path)
            if pkg.gemm_weights_path is None:
                raise ConfigError(f"{pkg.root}: this package has no {WEIGHTS_FILE} (exported before the cpu-gemm "
                                  "backend existed); re-export it with `ssov-export onnx`")
            self.spec = pkg.spec
            self.text_embeddings = pkg.text_embeddings_path
            weights = load_weights(pkg.gemm_weights_path)
        self.network = GemmNetwork(weights, threads=threads or 1)
        self.last_timings_ms: dict[str, float] = {}
        self._lock = threading.Lock()  # the network's scratch buffers serve one scan at a time

    def run(self, features: np.ndarray, coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape != (len(coords), self.spec.in_channels):
            raise DataError(f"cpu-gemm backend: features must be ({len(coords)}, {self.spec.in_channels}), "
                            f"got {features.shape}")
        t = time.perf_counter()
        maps = build_pair_maps(coords)
        t_maps = time.perf_counter()
        with self._lock:
            out = self.network(features, maps)
        self.last_timings_ms = {"kernel_maps": (t_maps - t) * 1e3, "network": (time.perf_counter() - t_maps) * 1e3}
        return out

    def close(self) -> None:
        self.network.close()

    def describe(self) -> str:
        return f"cpu-gemm ({self.network.blas.source}, {self.network.threads} thread(s), {self.path.name})"
