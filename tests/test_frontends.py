"""Front ends: ONNX and torch.export of the GPT decode step lower to the same program and the
same placed weights, equal to the module's own parameters; unsupported ops are named; a
meta-device gpt2-xl imports and compiles for timing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from compiler.frontends import (
    UnsupportedOpError,
    decode_step_program,
    import_exported,
    import_graph,
    import_onnx,
    import_torch_module,
)
from compiler.ir import ConstMeta
from compiler.passes.lower import LoweringError, lower_graph
from compiler.pipeline import Compiled, compile_model
from pimsim.config import load_config
from workloads.models.export import export_decode_onnx, export_decode_torch
from workloads.models.gpt import GPT, get_config

DIMS = ("n_layer", "d_model", "n_head", "n_kv_head", "d_head", "d_ff", "vocab", "n_ctx",
        "n_weight_elems", "has_weights")


def lowered(source) -> Compiled:
    return compile_model(source, load_config("pim-gpt"), name="decoder")


def assert_same_lowering(a: Compiled, b: Compiled, *, program: bool = True) -> None:
    """The same model dimensions, placement and placed weights and vectors, and (``program``)
    the same program at two positions."""
    assert [getattr(a.spec, k) for k in DIMS] == [getattr(b.spec, k) for k in DIMS]
    if program:
        for pos in (0, 5):
            assert a.program.to_text(pos) == b.program.to_text(pos)
    assert a.mapping.pretty() == b.mapping.pretty()
    for field in ("weights", "vector_values"):
        x, y = getattr(a.mapping, field), getattr(b.mapping, field)
        assert list(x) == list(y), field
        for name in x:
            if x[name] is None or y[name] is None:
                assert x[name] is None and y[name] is None, name
            else:
                assert np.array_equal(x[name], y[name]), name


def expected_weights(model: GPT, layer: int) -> dict[str, torch.Tensor]:
    """The placed [out, in] matrices of a layer, from the module's parameters."""
    blk = model.h[layer]
    a, m = blk.attn, blk.mlp
    return {
        "qkv": torch.cat([a.q.weight, a.k.weight, a.v.weight]), "out_proj": a.out.weight,
        "ffn_up": m.up.weight, "ffn_down": m.down.weight,
    }


def expected_vectors(model: GPT, layer: int) -> list[torch.Tensor]:
    blk = model.h[layer]
    a, m = blk.attn, blk.mlp
    return [blk.ln_1.weight, blk.ln_1.bias, a.q.bias, a.k.bias, a.v.bias, a.out.bias,
            blk.ln_2.weight, blk.ln_2.bias, m.up.bias, m.down.bias]


@pytest.fixture(scope="module", params=["tiny", "tiny-wide"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = GPT.from_seed(get_config(request.param), seed=3)
    path = tmp_path_factory.mktemp(request.param) / "decode.onnx"
    export_decode_onnx(model, path, past_len=3)
    ep = export_decode_torch(model, past_len=3)
    return model, path, ep


def test_onnx_and_torch_export_lower_alike(case) -> None:
    model, path, ep = case
    from_onnx, from_torch = lowered(path), lowered(ep)
    assert_same_lowering(from_onnx, from_torch)
    cfg, s = model.cfg, from_onnx.spec
    assert (s.n_layer, s.d_model, s.n_head, s.d_head, s.d_ff, s.vocab, s.n_ctx) == (
        cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_head, cfg.d_ff, cfg.vocab, cfg.n_ctx)
    assert s.d_attn == cfg.d_attn  # tiny-wide: 96 != d_model 64
    assert s.n_weight_elems == cfg.n_params


def test_placed_weights_are_the_module_parameters(case) -> None:
    model, path, ep = case
    for c in (lowered(path), lowered(ep)):
        mp = c.mapping
        head = mp.tables["table.0"]
        assert np.array_equal(mp.weights[head], model.wte.weight.detach().numpy())
        assert np.array_equal(mp.weights["table.1"], model.wpe.weight.detach().numpy())
        assert np.array_equal(mp.vector_values["final.v0"], model.ln_f.weight.detach().numpy())
        assert np.array_equal(mp.vector_values["final.v1"], model.ln_f.bias.detach().numpy())
        for i in range(model.cfg.n_layer):
            for role, param in expected_weights(model, i).items():
                assert np.array_equal(mp.weights[f"L{i}.{role}"], param.detach().numpy()), \
                    (i, role)
            got = np.sort(mp.vector_values[f"L{i}.params"])
            want = np.sort(torch.cat(expected_vectors(model, i)).detach().numpy())
            assert np.array_equal(got, want), i


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch-internal, from run_decompositions
def test_core_aten_program_and_module_lower_alike(case) -> None:
    """addmm/permute/native_layer_norm/bmm (run_decompositions; the attention scale then is an
    ASIC op of its own) and the module itself."""
    model, path, ep = case
    want = lowered(ep)
    assert_same_lowering(lowered(ep.run_decompositions()), want, program=False)
    assert_same_lowering(lowered(model), want)


def _gemms_to_matmul_add(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every ``Gemm(x, W[out,in], b, transB=1)`` as ``MatMul(x, Wt[in,out]) + b``: the form of an
    ONNX export of HF ``Conv1D``, and (for the LM head) an untied transposed copy of ``wte``."""
    from onnx import numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for n in g.node:
        if n.op_type != "Gemm":
            nodes.append(n)
            continue
        wt = n.input[1] + ".T"
        if wt not in inits:
            inits[wt] = numpy_helper.from_array(numpy_helper.to_array(inits[n.input[1]]).T.copy(), wt)
            g.initializer.append(inits[wt])
        if len(n.input) > 2:
            nodes.append(helper.make_node("MatMul", [n.input[0], wt], [n.output[0] + ".mm"],
                                          name=n.name + ".mm"))
            nodes.append(helper.make_node("Add", [n.output[0] + ".mm", n.input[2]], [n.output[0]],
                                          name=n.name + ".add"))
        else:
            nodes.append(helper.make_node("MatMul", [n.input[0], wt], [n.output[0]], name=n.name))
    del g.node[:]
    g.node.extend(nodes)
    return proto


def test_onnx_in_out_weights_are_transposed_back(case) -> None:
    """[in, out] initializers (MatMul + Add) lower to the same [out, in] weights; the head copy
    is tied."""
    model, path, ep = case
    proto = _gemms_to_matmul_add(onnx.load(str(path)))
    assert not any(n.op_type == "Gemm" for n in proto.graph.node)
    from compiler.pipeline import run_passes

    graph = run_passes(import_onnx(proto))
    linears = [n for n in graph.nodes if n.op == "linear"]
    assert len(linears) == 6 * model.cfg.n_layer + 1
    assert all(n.attrs["w_layout"] == "in_out" for n in linears)
    assert linears[-1].role == "lm_head" and linears[-1].inputs[1] == "model.wte.weight.T"
    assert_same_lowering(lowered(graph), lowered(path))


def test_onnx_external_data_and_shape_only_import(case, tmp_path) -> None:
    model, path, ep = case
    proto = onnx.load(str(path))
    ext = tmp_path / "ext.onnx"
    onnx.save(proto, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    want = lowered(path)
    assert_same_lowering(lowered(ext), want)
    unloaded = onnx.load(str(ext), load_external_data=False)
    with pytest.raises(ValueError, match="external file"):
        import_onnx(unloaded)
    assert_same_lowering(lowered(import_onnx(unloaded, base_dir=str(tmp_path))), want)

    shapes_only = lowered(import_onnx(ext, weights=False))
    assert not shapes_only.spec.has_weights
    dims = [k for k in DIMS if k != "has_weights"]
    assert [getattr(shapes_only.spec, k) for k in dims] == [getattr(want.spec, k) for k in dims]
    assert all(w is None for w in shapes_only.mapping.weights.values())
    assert shapes_only.program.to_text(5) == want.program.to_text(5)


def test_onnx_unsupported_op_names_op_and_node() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Tanh", ["x"], ["t"], name="ok_tanh"),
             helper.make_node("Hardmax", ["t"], ["y"], name="my_hardmax", axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(model)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.op_type, err.node_name) == ("Hardmax", "my_hardmax")
    msg = str(err)
    assert "'Hardmax'" in msg and "'my_hardmax'" in msg
    assert "supported ops:" in msg and "LayerNormalization" in msg and "MatMul" in msg


def test_torch_unsupported_op_names_op_and_node() -> None:
    class Cumsum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(torch.tanh(x), dim=-1)

    with pytest.raises(UnsupportedOpError) as info:
        import_torch_module(Cumsum(), (torch.ones(1, 4),))
    msg = str(info.value)
    assert "aten.cumsum" in msg and "'cumsum'" in msg
    assert "supported ops:" in msg and "linear" in msg and "layer_norm" in msg


def test_import_graph_rejects_what_it_cannot_read() -> None:
    with pytest.raises(TypeError, match="cannot import a int"):
        import_graph(3)

    class NoConfig(torch.nn.Module):
        def decode_step(self, *args: object) -> None:
            return None

    with pytest.raises(ValueError, match="cannot find the KV-cache shape"):
        import_graph(NoConfig())


def test_lowering_rejects_a_graph_that_is_no_decoder() -> None:
    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.Linear(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(self.up(x))

    from compiler.pipeline import run_passes

    g = import_torch_module(MLP(), (torch.ones(1, 4),))
    with pytest.raises(LoweringError, match="expected two KV-cache inputs"):
        run_passes(g)  # the classify pass refuses it
    with pytest.raises(LoweringError, match="mlp: expected two KV-cache inputs"):
        lower_graph(g, load_config("pim-gpt"), name="mlp")


@pytest.mark.slow  # 13 s; the smaller presets import by default
def test_meta_gpt2_xl_imports_for_timing() -> None:
    """torch.export works on the meta device: gpt2-xl's shapes without materialising weights,
    lowered shapes only."""
    model = GPT(get_config("gpt2-xl"), device="meta")
    ep = decode_step_program(model)
    graph = import_exported(ep)
    weights = [c for k, c in graph.consts.items() if k.startswith("model.")]
    assert len(weights) == 4 + 48 * 16 and all(isinstance(c, ConstMeta) for c in weights)
    c = compile_model(graph, load_config("aim-gddr6"), name="gpt2-xl")
    spec, cfg = c.spec, model.cfg
    assert (spec.n_layer, spec.d_model, spec.n_head, spec.d_head, spec.d_ff, spec.vocab,
            spec.n_ctx) == (48, 1600, 25, 64, 6400, 50257, 1024)
    assert not spec.has_weights and c.mapping.weights["L0.qkv"] is None
    assert spec.n_weight_elems == cfg.n_params


def test_hf_gpt2_goes_through() -> None:
    """A tiny Hugging Face GPT2LMHeadModel, converted by workloads.models.hf, lowered from its graph."""
    transformers = pytest.importorskip("transformers")
    from workloads.models.hf import from_hf_gpt2, hf_gpt2_state_dict

    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                     n_positions=32, activation_function="gelu_new")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    model = from_hf_gpt2(hf)
    c = lowered(model)
    spec, mp = c.spec, c.mapping
    assert (spec.n_layer, spec.d_model, spec.n_head, spec.d_head, spec.vocab, spec.n_ctx) == (
        2, 64, 4, 16, 128, 32)
    sd = hf_gpt2_state_dict(hf)
    assert np.array_equal(mp.weights[mp.tables["table.0"]], sd["wte.weight"].numpy())
    for i in range(spec.n_layer):
        # HF Conv1D stores [in, out]; the mapping holds [out, in]
        assert np.array_equal(mp.weights[f"L{i}.qkv"][:64], sd[f"h.{i}.attn.q.weight"].numpy())
        assert np.array_equal(mp.weights[f"L{i}.ffn_up"],
                              hf.transformer.h[i].mlp.c_fc.weight.detach().numpy().T)
        assert np.isin(sd[f"h.{i}.mlp.down.bias"].numpy(), mp.vector_values[f"L{i}.params"]).all()


@pytest.mark.parametrize("case", ["runtime-rows", "const-row", "const-rows", "const-row-3d",
                                  "const-scalar-row"])
def test_onnx_gather_nd_imports_like_onnxruntime(case) -> None:
    """GatherND (batch_dims 0, indices[..., 1]) as torch.onnx writes it: runtime indices into a
    constant table (GPT-J's positions) and constant rows of an activation (Falcon's ``x[[-2]]``),
    evaluated by the IR interpreter and by onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from compiler.passes.interpret import evaluate

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    table = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "table")
    ind = {"const-row": [[-2]], "const-rows": [[1], [2], [3]], "const-row-3d": [[[4]]],
           "const-scalar-row": [5]}
    inits, feeds = [table], {"x": x}
    if case == "runtime-rows":
        ins = [helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2, 1])]
        node = helper.make_node("GatherND", ["table", "i"], ["y"], name="g")
        feeds = {"i": np.array([[[7], [-1]]], np.int64)}
    else:
        ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, 3])]
        inits.append(numpy_helper.from_array(np.array(ind[case], np.int64), "i"))
        node = helper.make_node("GatherND", ["x", "i"], ["y"], name="g")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    proto = helper.make_model(helper.make_graph([node], "g", ins, [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    want = ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    from compiler.passes.shape_inference import ShapeInference
    from compiler.pipeline import run_passes

    graph = run_passes(import_onnx(proto), [ShapeInference()])
    got = evaluate(graph, feeds)["y"]
    assert got.shape == want.shape and tuple(graph.shape_of("y")) == want.shape
    np.testing.assert_array_equal(got, want)


def test_onnx_gather_nd_it_cannot_lower_is_named() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    for ind, why in (([[0, 1]], "last axis must be 1"), ([[2], [0]], "only consecutive rows")):
        i = onnx.numpy_helper.from_array(np.array(ind, np.int64), "i")
        g = helper.make_graph([helper.make_node("GatherND", ["x", "i"], ["y"], name="gnd")],
                              "g", [x], [y], [i])
        with pytest.raises(UnsupportedOpError, match=f"'GatherND'.*'gnd'.*{why}"):
            import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _shape_reshape_model(annotate: bool) -> onnx.ModelProto:
    """x [2, n, 4] -> t = x * 2 -> reshape(t, [-1, shape(t)[1] + 0, shape(t)[-1] / 2]) + 1,
    the target computed from the annotated (symbolic) shape of t as torch.onnx writes it."""
    from onnx import numpy_helper

    def const(name, v):
        return numpy_helper.from_array(np.array(v, np.int64), name)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Mul", ["x", "two"], ["t"]),
             helper.make_node("Shape", ["t"], ["s"], start=0),
             helper.make_node("Slice", ["s", "m1", "big"], ["last"]),
             helper.make_node("Gather", ["s", "one"], ["mid"], axis=0),
             helper.make_node("Unsqueeze", ["mid", "zero"], ["mid1"]),
             helper.make_node("Add", ["mid1", "zero"], ["mid2"]),
             helper.make_node("Sub", ["last", "two_i"], ["half"]),
             helper.make_node("Concat", ["m1", "mid2", "half"], ["target"], axis=0),
             helper.make_node("Reshape", ["t", "target"], ["r"]),
             helper.make_node("Add", ["r", "onef"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1.0, np.float32), "onef"),
             const("m1", [-1]), const("big", [1 << 62]), const("one", 1), const("zero", [0]),
             const("two_i", [2])]
    vis = [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, "n", 4])] if annotate else []
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits, value_info=vis),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_shape_subgraph_folds_to_a_symbolic_reshape() -> None:
    """Shape -> Slice / Gather / Unsqueeze / Mul -> Concat -> Reshape: folded at import into a
    reshape whose target holds the symbolic dimension, equal to onnxruntime at two lengths."""
    ort = pytest.importorskip("onnxruntime")
    from compiler.passes.interpret import evaluate
    from compiler.passes.shape_inference import ShapeInference
    from compiler.pipeline import run_passes

    proto = _shape_reshape_model(annotate=True)
    graph = run_passes(import_onnx(proto), [ShapeInference()])
    assert not any(n.op == "shape" for n in graph.nodes)
    (r,) = [n for n in graph.nodes if n.op == "reshape"]
    assert r.attrs["shape"] == [-1, "n", 2], r.attrs
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 5):
        x = np.random.default_rng(n).standard_normal((2, n, 4)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = evaluate(graph, {"x": x})["y"]
        assert got.shape == want.shape == (4, n, 2)
        np.testing.assert_array_equal(got, want)


def test_onnx_shape_of_an_unannotated_value_is_inferred() -> None:
    """Without the value_info the shape of t is inferred at import: the same reshape."""
    from compiler.passes.shape_inference import ShapeInference
    from compiler.pipeline import run_passes

    graphs = [run_passes(import_onnx(_shape_reshape_model(annotate=a)), [ShapeInference()])
              for a in (True, False)]
    reshapes = [[n.attrs["shape"] for n in g.nodes if n.op == "reshape"] for g in graphs]
    assert reshapes[0] == reshapes[1] == [[-1, "n", 2]]


def test_onnx_shape_of_a_value_of_unknown_shape_says_how_to_fix_it() -> None:
    proto = _shape_reshape_model(annotate=False)
    proto.graph.input[0].type.tensor_type.ClearField("shape")  # x of unknown shape
    with pytest.raises(UnsupportedOpError, match="'Shape'.*not annotated.*give every graph "
                                                 "input a shape"):
        import_onnx(proto)
