"""The ONNX graph builder (ssov_export/onnx_graph.py) on its own, fast: tiny random-weight MinkUNets (BN folded,
non-trivial statistics) run by onnxruntime in both graph flavours against spconv's own forward pass (the
reference), on a small hand-made scan; and the graph's interface (inputs, shapes, ops, opset) as documented."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import torch

from ssov_export.kernel_maps import build_kernel_maps, input_names
from ssov_export.onnx_graph import IR_VERSION, OPSET, _fold, build_graph
from ssov_train.models import MinkUNet, MinkUNetConfig

SHAPE = (48, 32, 16)  # multiples of 16, as the voxelizer pads


def tiny_model(seed: int, normalize: bool = False, out_channels: int = 5) -> MinkUNet:
    torch.manual_seed(seed)
    model = MinkUNet(MinkUNetConfig(arch="MinkUNet18", width=0.0625, in_channels=2, out_channels=out_channels,
                                    normalize_features=normalize))
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # BN statistics far from (0, 1), so folding is exercised
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.25)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray]:
    """A solid 6x6x4 block (every site has many neighbours at every level) and 150 scattered voxels."""
    rng = np.random.default_rng(0)
    block = np.stack(np.meshgrid(np.arange(20, 26), np.arange(4, 10), np.arange(2, 6), indexing="ij"), -1)
    coords = np.unique(np.concatenate([block.reshape(-1, 3), rng.integers(0, SHAPE, (150, 3))]), axis=0)
    rng.shuffle(coords)  # the voxelizer's order is no sorted order: the portable graph reorders
    features = rng.normal(size=(len(coords), 2)).astype(np.float32)
    return coords.astype(np.int32), features


def spconv_forward(model: MinkUNet, coords: np.ndarray, features: np.ndarray) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU build is many times slower with threads on a busy machine
    try:
        with torch.inference_mode():
            return model(torch.from_numpy(features), torch.from_numpy(coords),
                         torch.zeros(len(coords), dtype=torch.int32), list(SHAPE), 1).numpy()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[False, True], ids=["classes", "normalised"])
def reference(request, scan):
    """(model, spconv's output on the scan): a class head, or a TMP feature head (L2-normalised)."""
    model = tiny_model(seed=3 + request.param, normalize=request.param)
    return model, spconv_forward(model, *scan)


def onnx_forward(graph: onnx.ModelProto, coords: np.ndarray, features: np.ndarray, chunks, flavour: str) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    maps = build_kernel_maps(coords, chunks, flavour)
    return session.run(["logits"], {"features": features, **maps.inputs()})[0]


@pytest.mark.parametrize("flavour", ["portable", "cpu"])
def test_graph_computes_what_spconv_computes(scan, reference, flavour):
    coords, features = scan
    model, expected = reference
    chunks = build_kernel_maps(coords).chunks()
    graph = build_graph(model, chunks, flavour=flavour)
    ours = onnx_forward(graph, coords, features, chunks, flavour)
    assert ours.shape == expected.shape == (len(coords), 5)
    np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=0)
    if model.cfg.normalize_features:  # unit rows: the normalisation is in the graph
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_zero_features_normalise_to_zero_not_nan(scan):
    """F.normalize divides by max(||x||, 1e-12): a zero head output stays 0 (the graph's Max with 1e-12)."""
    coords, features = scan
    model = tiny_model(seed=5, normalize=True)
    with torch.no_grad():
        model.final.weight.zero_()
        model.final.bias.zero_()
    chunks = build_kernel_maps(coords).chunks()
    out = onnx_forward(build_graph(model, chunks, flavour="cpu"), coords, features, chunks, "cpu")
    assert np.array_equal(out, np.zeros_like(out))


def test_graph_interface(scan):
    coords, _ = scan
    model = tiny_model(seed=1, out_channels=7)
    chunks = build_kernel_maps(coords).chunks()
    for flavour in ("portable", "cpu"):
        graph = build_graph(model, chunks, producer="tester", flavour=flavour)
        assert graph.ir_version == IR_VERSION == 8 and graph.producer_name == "tester"
        assert [(o.domain, o.version) for o in graph.opset_import] == [("", OPSET)] and OPSET == 17
        inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
        assert list(inputs) == ["features", *input_names(flavour)]
        dims = {name: [d.dim_param or d.dim_value for d in t.shape.dim] for name, t in inputs.items()}
        assert inputs["features"].elem_type == onnx.TensorProto.FLOAT and dims["features"] == ["num_voxels", 2]
        assert all(t.elem_type == onnx.TensorProto.INT32 for name, t in inputs.items() if name != "features")
        assert dims["subm1_in"] == ["subm1_chunks", chunks["subm1"]] and dims["subm1_kernel"] == ["subm1_chunks"]
        assert dims["down2_in"] == ["down2_chunks", chunks["down2"]]
        assert dims["up0_out0"] == ["up0_out0_width", "up0_out0_rows"]
        (out,) = graph.graph.output
        assert out.name == "logits" and [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [
            "num_voxels", 7]
        ops = {n.op_type for n in graph.graph.node}
        last = graph.graph.node[-1]
        if flavour == "portable":
            assert dims["order"] == dims["restore"] == ["num_voxels"]
            assert dims["subm0_out2"] == ["subm0_out2_width", "subm0_out2_rows"]
            assert "ScatterND" not in ops and "Cast" not in ops  # TensorRT's parser: no reducing ScatterND
            first = graph.graph.node[0]
            assert (first.op_type, list(first.input)) == ("Gather", ["features", "order"])
            assert (last.op_type, list(last.input)[1:], list(last.output)) == ("Gather", ["restore"], ["logits"])
        else:
            assert dims["subm3_to"] == ["subm3_slots"]
            assert {"ScatterND", "Cast"} <= ops and "order" not in inputs
            scatters = [n for n in graph.graph.node if n.op_type == "ScatterND"]
            assert all(a.name == "reduction" and a.s == b"add" for n in scatters for a in n.attribute)
            assert (last.op_type, list(last.output)) == ("Identity", ["logits"])


def test_fold_applies_eval_batchnorm_by_hand():
    """(W * gamma / sqrt(var + eps)) and beta - mean * gamma / sqrt(var + eps), per output channel."""
    w = torch.arange(2 * 3, dtype=torch.float32).reshape(3, 1, 1, 1, 2)  # spconv (Cout, 1, 1, 1, Cin): a 1x1 conv
    bn = torch.nn.BatchNorm1d(3, eps=0.0)
    bn.running_mean.copy_(torch.tensor([1.0, 2.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    bn.weight.data.copy_(torch.tensor([2.0, 1.0, 3.0]))
    bn.bias.data.copy_(torch.tensor([0.5, 0.0, -1.0]))
    stack, bias = _fold(w, bn)
    scale = np.array([1.0, 1.0, 6.0])  # gamma / sqrt(var)
    # a 1x1 conv keeps spconv's memory layout: the 6 numbers read as (Cin=2, Cout=3)
    np.testing.assert_allclose(stack, (np.arange(6.0).reshape(2, 3) * scale)[None], rtol=1e-6)
    np.testing.assert_allclose(bias, [0.5 - 1.0, 0.0 - 2.0, -1.0 + 6.0], rtol=1e-6)
    stack, bias = _fold(torch.ones(3, 2, 2, 2, 2), None)  # a 2^3 conv without BN: (K=8, Cin, Cout), zero bias
    assert stack.shape == (8, 2, 3) and stack.dtype == np.float32 and not bias.any() and bias.shape == (3,)


def test_unknown_flavour_is_refused():
    with pytest.raises(ValueError, match="graph flavour must be one of"):
        build_graph(tiny_model(0), {}, flavour="fast")


LAYER = r"(stem|down\d|up\d|(enc|dec)\db\d_(c1|c2|proj)|head)"
RULEBOOK = r"(subm|down|up)\d"
# what each op's node is called: <layer>_<role>_<n> (or <rulebook>_<role>_<n>); ops without a role keep their type
NODE_NAMES = {
    "Concat": rf"{LAYER}_(pad|bands)|{RULEBOOK}_out\d_ones_shape|skip\d|(enc|dec)\db\d_res",
    "Gather": rf"reorder|{LAYER}_(gather|wsel|collect)|logits",
    "MatMul": rf"{LAYER}_(msg|sum)|matmul",
    "Reshape": rf"{LAYER}_(flat|slab|rows)|{RULEBOOK}_to_col",
    "Add": rf"{LAYER}_(out|res)|(enc|dec)\db\d_res",
    "Gemm": "gemm", "Relu": "relu", "Shape": "shape", "ReduceL2": "reducel2", "Max": "max", "Div": "div",
    "Slice": rf"{RULEBOOK}_out\d_width", "ConstantOfShape": rf"{RULEBOOK}_out\d_ones",
    "ScatterND": rf"{LAYER}_out", "Cast": rf"{RULEBOOK}_to64", "Identity": "logits",
}
INITIALIZER_NAMES = rf"{LAYER}_(w|wc|b)_\d+|zero_row\d+_\d+|i64_(m?\d+_?)+|eps|one|zero"


@pytest.mark.parametrize("flavour", ["portable", "cpu"])
def test_node_and_initializer_names_say_their_layer_and_role(scan, flavour):
    """What an onnxruntime profile, Netron or a TensorRT layer report shows: every node is named after its layer
    (stem, down0, enc0b0_c1, ..., head) or rulebook and its role, numbered once; small int64 constants (shapes,
    axes) are stored once each, named by value."""
    import re

    model = tiny_model(seed=1, normalize=True)
    graph = build_graph(model, build_kernel_maps(scan[0]).chunks(), flavour=flavour).graph
    names = [n.name for n in graph.node]
    assert len(set(names)) == len(names)
    for node in graph.node:
        root = node.name if node.name == "logits" else re.sub(r"_\d+$", "", node.name)
        assert re.fullmatch(NODE_NAMES[node.op_type], root), (node.op_type, node.name)
        assert list(node.output) == [node.name]
    inits = [i.name for i in graph.initializer]
    for name in inits:
        assert re.fullmatch(INITIALIZER_NAMES, name) or re.fullmatch(r"(eps|one|zero)_\d+", name), name
    small = [tuple(numpy_helper.to_array(i).reshape(-1)) for i in graph.initializer
             if i.data_type == onnx.TensorProto.INT64]
    assert len(small) == len(set(small))  # each shape / axes value once
    assert {"i64_m1_4", "i64_0_m1"} <= set(inits)  # Reshape targets [-1, C] (C = 4 here) and [0, -1]
