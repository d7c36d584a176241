"""The MinkUNet as an ONNX graph whose kernel maps are inputs (see ssov_export/kernel_maps.py).

Built node by node with ``onnx.helper`` from a trained :class:`~ssov_train.models.minkunet.MinkUNet` (spconv
modules are not exportable: deps.md §3).  BatchNorm is folded into the preceding conv (weights scaled per output
channel, bias added), so one conv through rulebook ``rb`` (ssov_export/kernel_maps.py) is::

    xp = Concat(x, 0-row)                                   # row num_in: the padding target of rb_in
    m  = MatMul(Gather(xp, rb_in), Gather(W[K, Cin, Cout], rb_kernel))       # (chunks, B, Cout) messages
    m  = Reshape(m, [-1, Cout])
    o  = Concat over bands g of  ones(1, D_g) @ Reshape(Gather(m, rb_out<g>), [D_g, -1])   # sum per output row
    o  = Reshape(o, [-1, Cout]) + Gemm(x, W_centre, bias)   # submanifold convs; others just + bias

The graph starts by putting the voxels in level-0 row order (``Gather(features, order)``) and ends with
``Gather(logits, restore)``.

That is the **portable** flavour (model.onnx: TensorRT, CUDA EP).  The **cpu** flavour (model_cpu.onnx, what
onnxruntime runs on CPU) sums a submanifold conv's messages into its centre term in one op,
``ScatterND(Gemm(x, W_centre, bias), <rb>_to, m, reduction="add")`` (TensorRT's parser cannot reduce in
ScatterND), and needs no reorder: its rows are in the voxelizer's order (ssov_export/kernel_maps.py).

Ops: Concat, Gather, MatMul, Gemm, Reshape, Add, Relu, Shape, Slice, ConstantOfShape (and ReduceL2 / Max /
Div for L2-normalised feature heads), all native TensorRT layers, no plugin; opset 17; index inputs int32.
The cpu flavour adds ScatterND (reduction add), Cast (int32 -> int64 ScatterND indices) and Identity.
Dynamic axes: the number of voxels / sites per level, chunks and out-table width; chunk length B is static
per rulebook (frozen into the sidecar at export), so TensorRT profiles stay bounded.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .kernel_maps import FLAVOURS, NUM_LEVELS, SUBM_CENTER, bands, input_names

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10 and TensorRT 8.6+


def _fold(conv_weight: torch.Tensor, bn: torch.nn.BatchNorm1d | None) -> tuple[np.ndarray, np.ndarray]:
    """spconv weight (Cout, *kernel, Cin) [+ eval BN] -> (K, Cin, Cout) float32 stack and (Cout,) bias.

    A 1x1x1 conv is the exception: spconv multiplies ``features @ weight.view(Cin, Cout)`` (its conv1x1 fast
    path), so its memory holds (Cin, Cout) whatever the tensor's shape says (checked in tests/export)."""
    w = conv_weight.detach().double()
    cout, cin = w.shape[0], w.shape[-1]
    if w[0, ..., 0].numel() == 1:
        stack = w.reshape(1, cin, cout)
    else:
        stack = w.reshape(cout, -1, cin).permute(1, 2, 0)  # (K, Cin, Cout)
    bias = torch.zeros(cout, dtype=torch.float64)
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        stack = stack * scale
        bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    return stack.float().numpy(), bias.float().numpy()


class _Graph:
    def __init__(self, flavour: str = "portable") -> None:
        self.flavour = flavour
        self._slot_rows: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._zero_rows: dict[int, str] = {}
        self._ones: dict[str, str] = {}
        self._int_consts: dict[str, str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        if value.dtype == np.int64 and value.size <= 4:  # shapes / axes: one initializer per distinct value
            key = f"i64_{'_'.join(str(v).replace('-', 'm') for v in value.reshape(-1))}"
            if key not in self._int_consts:
                self.inits.append(numpy_helper.from_array(value, key))
                self._int_consts[key] = key
            return key
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def zero_row(self, channels: int) -> str:
        if channels not in self._zero_rows:
            self._zero_rows[channels] = self.const(f"zero_row{channels}", np.zeros((1, channels), np.float32))
        return self._zero_rows[channels]

    def sparse_conv(self, x: str, rulebook: str, stack: np.ndarray, bias: np.ndarray, centre: bool,
                    hint: str) -> str:
        """One conv through the rulebook named ``rulebook`` (graph inputs ``<rulebook>_in/_kernel/_out``)."""
        _, cin, cout = stack.shape
        xp = self.op("Concat", [x, self.zero_row(cin)], f"{hint}_pad", axis=0)
        g = self.op("Gather", [xp, f"{rulebook}_in"], f"{hint}_gather", axis=0)
        w = self.op("Gather", [self.const(f"{hint}_w", stack), f"{rulebook}_kernel"], f"{hint}_wsel", axis=0)
        m = self.op("MatMul", [g, w], f"{hint}_msg")
        m = self.op("Reshape", [m, self.const("shape", np.array([-1, cout], np.int64))], f"{hint}_flat")
        cpu_subm = rulebook.startswith("subm") and self.flavour == "cpu"
        if centre or cpu_subm:  # the centre tap (+ bias) as one Gemm over all sites
            c = self.op("Gemm", [x, self.const(f"{hint}_wc", stack[SUBM_CENTER]), self.const(f"{hint}_b", bias)])
        if cpu_subm:
            return self.op("ScatterND", [c, self.slot_rows(rulebook), m], f"{hint}_out", reduction="add")
        if rulebook.startswith("up"):  # one parent per fine site: a plain gather, nothing to sum
            collected = self.op("Gather", [m, f"{rulebook}_out0"], f"{hint}_collect", axis=0)
        else:
            sums = [self.band_sum(m, f"{rulebook}_out{band}", hint)
                    for band in range(bands(rulebook.rstrip("0123456789")))]
            collected = sums[0] if len(sums) == 1 else self.op("Concat", sums, f"{hint}_bands", axis=1)
        o = self.op("Reshape", [collected, self.const("shape", np.array([-1, cout], np.int64))], f"{hint}_rows")
        if centre:
            return self.op("Add", [o, c], f"{hint}_out")
        return self.op("Add", [o, self.const(f"{hint}_b", bias)], f"{hint}_out")

    def slot_rows(self, rulebook: str) -> str:
        """(slots, 1) int64 output row of every message slot (ScatterND's index layout), once per rulebook."""
        if rulebook not in self._slot_rows:
            wide = self.op("Cast", [f"{rulebook}_to"], f"{rulebook}_to64", to=TensorProto.INT64)
            self._slot_rows[rulebook] = self.op("Reshape", [wide, self.const("shape", np.array([-1, 1], np.int64))],
                                                f"{rulebook}_to_col")
        return self._slot_rows[rulebook]

    def band_sum(self, messages: str, table: str, hint: str) -> str:
        """(1, rows * C): the messages listed in ``table`` (D, rows) summed over D, as ones(1, D) @ (D, rows * C)
        (a MatMul: several times faster than ReduceSum in onnxruntime, native in TensorRT)."""
        if table not in self._ones:
            d = self.op("Slice", [self.op("Shape", [table]), self.const("zero", np.array([0], np.int64)),
                                  self.const("one", np.array([1], np.int64))], f"{table}_width")
            shape = self.op("Concat", [self.const("one", np.array([1], np.int64)), d], f"{table}_ones_shape", axis=0)
            self._ones[table] = self.op("ConstantOfShape", [shape], f"{table}_ones",
                                        value=numpy_helper.from_array(np.array([1.0], np.float32)))
        g = self.op("Gather", [messages, table], f"{hint}_collect", axis=0)
        g = self.op("Reshape", [g, self.const("shape", np.array([0, -1], np.int64))], f"{hint}_slab")
        return self.op("MatMul", [self._ones[table], g], f"{hint}_sum")

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        """x @ weight (Cin, Cout) + bias."""
        o = self.op("MatMul", [x, self.const(f"{hint}_w", weight.astype(np.float32))])
        return self.op("Add", [o, self.const(f"{hint}_b", bias.astype(np.float32))], f"{hint}_out")

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])


def build_graph(model, chunks: dict[str, int], producer: str = "ssov-export",
                flavour: str = "portable") -> onnx.ModelProto:
    """The ONNX model of ``model`` (an eval-mode MinkUNet with its weights) for rulebooks cut into
    ``chunks[rulebook name]``-long chunks, in the given flavour (``portable`` or ``cpu``)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"graph flavour must be one of {FLAVOURS}, got {flavour!r}")
    model = model.eval()
    g = _Graph(flavour)

    def block(x: str, blk, level: int, hint: str) -> str:
        w1, b1 = _fold(blk.conv1.weight, blk.bn1)
        w2, b2 = _fold(blk.conv2.weight, blk.bn2)
        out = g.relu(g.sparse_conv(x, f"subm{level}", w1, b1, True, f"{hint}_c1"))
        out = g.sparse_conv(out, f"subm{level}", w2, b2, True, f"{hint}_c2")
        if blk.downsample is not None:
            wp, bp = _fold(blk.downsample[0].weight, blk.downsample[1])
            shortcut = g.linear(x, wp[0], bp, f"{hint}_proj")
        else:
            shortcut = x
        return g.relu(g.op("Add", [out, shortcut], f"{hint}_res"))

    def stage(x: str, blocks, level: int, hint: str) -> str:
        for j, blk in enumerate(blocks):
            x = block(x, blk, level, f"{hint}b{j}")
        return x

    w, b = _fold(model.stem_conv.weight, model.stem_bn)
    cpu = flavour == "cpu"
    x = "features" if cpu else g.op("Gather", ["features", "order"], "reorder", axis=0)
    x = g.relu(g.sparse_conv(x, "subm0", w, b, True, "stem"))
    skips = []
    for i in range(NUM_LEVELS - 1):
        skips.append(x)
        w, b = _fold(model.down[i].conv.weight, model.down[i].bn)
        x = g.relu(g.sparse_conv(x, f"down{i}", w, b, False, f"down{i}"))
        x = stage(x, model.encoder[i], i + 1, f"enc{i}")
    for i in range(NUM_LEVELS - 1):
        level = NUM_LEVELS - 2 - i
        w, b = _fold(model.up[i].conv.weight, model.up[i].bn)
        x = g.relu(g.sparse_conv(x, f"up{level}", w, b, False, f"up{level}"))
        x = g.op("Concat", [x, skips[level]], f"skip{level}", axis=1)
        x = stage(x, model.decoder[i], level, f"dec{level}")
    out = g.linear(x, model.final.weight.detach().float().numpy().T, model.final.bias.detach().float().numpy(),
                   "head")
    if model.cfg.normalize_features:  # F.normalize: x / max(||x||_2, 1e-12)
        norm = g.op("ReduceL2", [out], axes=[1], keepdims=1)  # opset 17: axes is an attribute
        norm = g.op("Max", [norm, g.const("eps", np.array([1e-12], np.float32))])
        out = g.op("Div", [out, norm])
    if cpu:
        g.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
    else:
        g.nodes.append(helper.make_node("Gather", [out, "restore"], ["logits"], name="logits", axis=0))

    i32 = TensorProto.INT32
    inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["num_voxels", model.cfg.in_channels])]
    for name in input_names(flavour):
        if name in ("order", "restore"):
            inputs.append(helper.make_tensor_value_info(name, i32, ["num_voxels"]))
            continue
        rb, part = name.split("_", 1)
        if part == "in":
            shape = [f"{rb}_chunks", int(chunks[rb])]
        elif part == "kernel":
            shape = [f"{rb}_chunks"]
        elif part == "to":
            shape = [f"{rb}_slots"]
        else:
            shape = [f"{rb}_{part}_width", f"{rb}_{part}_rows"]
        inputs.append(helper.make_tensor_value_info(name, i32, shape))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["num_voxels", model.cfg.out_channels])]
    graph = helper.make_graph(g.nodes, "ssov_minkunet", inputs, outputs, g.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    onnx_model.ir_version = IR_VERSION
    onnx.checker.check_model(onnx_model)
    return onnx_model
