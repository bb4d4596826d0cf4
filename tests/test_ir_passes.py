"""The IR and its passes: golden printed IR after each pass on ``tiny``, and text-level fuse tests.

Golden files live in tests/golden/; regenerate them with ``pytest --update-golden`` (then read
the diff before committing it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from compiler.frontends import import_exported, import_onnx
from compiler.ir import Builder, ConstMeta, Graph, IRError, Node, Value
from compiler.passes.classify import mark_kinds_and_roles
from compiler.passes.fuse import Fuse, FuseGelu, FuseLayerNorm, FuseLinear
from compiler.passes.interpret import evaluate
from compiler.passes.shape_inference import ShapeError, ShapeInference, dim_add
from compiler.pipeline import GRAPH_PASSES
from workloads.models.export import example_decode_inputs, export_decode_onnx, export_decode_torch
from workloads.models.gpt import GPT, get_config

INPUTS = ("token", "position", "past_k", "past_v")
f32 = np.float32


# ---- the tiny decoder, through both front ends -------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> GPT:
    return GPT.from_seed(get_config("tiny"))


@pytest.fixture(scope="module")
def imported(tiny: GPT, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_decode_onnx(tiny, path, past_len=3)
    return {"torch": import_exported(export_decode_torch(tiny, past_len=3)),
            "onnx": import_onnx(path)}


def _stages(g: Graph) -> list[tuple[str, Graph]]:
    out = [("0_import", g)]
    for i, p in enumerate(GRAPH_PASSES, start=1):
        g = p.run(g)
        out.append((f"{i}_{p.name}", g))
    return out


@pytest.mark.parametrize("path", ["torch", "onnx"])
def test_golden_ir_after_each_pass(imported: dict[str, Graph], path: str, golden) -> None:
    stages = _stages(imported[path])
    assert [s for s, _ in stages] == ["0_import", "1_shape_inference", "2_fuse", "3_fold",
                                      "4_classify"]
    for stage, g in stages:
        g.verify()
        text = g.pretty()
        assert text == g.copy().pretty()  # printing is a function of the graph alone
        golden(f"tiny_{path}.{stage}.txt", text)


@pytest.mark.parametrize("path", ["torch", "onnx"])
def test_every_pass_preserves_the_decode_step(tiny: GPT, imported: dict[str, Graph], path: str) -> None:
    """The IR interpreter on each stage's graph gives the model's outputs (at another past_len)."""
    args = example_decode_inputs(tiny, past_len=5)
    want = [t.numpy() for t in tiny.decode_step(*args)]
    feeds = {k: a.numpy() for k, a in zip(INPUTS, args)}
    for stage, g in _stages(imported[path]):
        env = evaluate(g, feeds)
        for out, ref in zip(g.outputs, want):
            np.testing.assert_allclose(env[out], ref, rtol=0, atol=2e-6, err_msg=f"{path} {stage}")


@pytest.mark.parametrize("path", ["torch", "onnx"])
def test_classified_tiny_has_the_decoder_roles(imported: dict[str, Graph], path: str) -> None:
    stages = dict(_stages(imported[path]))
    g = stages["4_classify"]
    pim = [n.role for n in g.nodes if n.kind == "pim"]
    layer = ["qkv_q", "qkv_k", "qkv_v", "attn_score", "attn_value", "out_proj", "ffn_up", "ffn_down"]
    assert pim == layer * 2 + ["lm_head"]
    roles = [n.role for n in g.nodes if n.kind == "asic"]
    assert roles.count("layernorm") == 5 and roles.count("residual") == 4
    assert roles.count("embedding") == 2 and roles.count("gelu") == 2
    assert roles.count("softmax") == 2 and roles.count("attn_scale") == 2
    assert sum(n.role == "kv_concat" for n in g.nodes) == 4
    classes = [(n.cls.what, n.cls.role, n.cls.layer) for n in g.nodes if n.kind == "pim"]
    assert classes == [(w, r, layer) for layer in (0, 1) for w, r in [
        ("matvec", "qkv")] * 3 + [("attention", "score"), ("attention", "value"),
                                  ("matvec", "out_proj"), ("matvec", "ffn_up"),
                                  ("matvec", "ffn_down")]] + [("matvec", "lm_head", 2)]
    assert [n.cls.which + str(n.cls.attn) for n in g.nodes
            if n.cls.what == "cache_append"] == ["k0", "v0", "k1", "v1"]
    fused = stages["2_fuse"]  # the returned cache, before folding keeps only the logits
    present = fused.values[fused.outputs[1]]
    assert present.shape == (2, 4, "past_len+1", 16) and present.dtype == "f32"


def test_torch_and_onnx_paths_agree_after_fusion(imported: dict[str, Graph]) -> None:
    """Same op sequence, kinds and roles once fused (the names differ)."""
    sig = {p: [(n.op, n.kind, n.role, n.cls, tuple(sorted(n.attrs.items())))
               for n in dict(_stages(g))["4_classify"].nodes] for p, g in imported.items()}
    assert sig["torch"] == sig["onnx"]


# ---- IR basics ---------------------------------------------------------------------------------


def test_verify_rejects_use_before_definition() -> None:
    g = Graph(nodes=[Node("tanh", ["y"], ["z"]), Node("tanh", ["x"], ["y"])],
              inputs=[Value("x", (2,), "f32")], outputs=["z"],
              values={"x": Value("x", (2,), "f32"), "y": Value("y"), "z": Value("z")})
    g.inputs = [g.values["x"]]
    with pytest.raises(IRError, match="'y' used before it is defined"):
        g.verify()


def test_verify_rejects_unknown_op_and_missing_attr() -> None:
    b = Builder()
    x = b.input("x", (2,))
    b.op("frobnicate", [x], out="y")
    with pytest.raises(IRError, match="unknown op 'frobnicate'"):
        b.build(["y"]).verify()
    b = Builder()
    x = b.input("x", (2, 3))
    b.op("transpose", [x], out="y")
    with pytest.raises(IRError, match=r"missing attrs \['perm'\]"):
        b.build(["y"]).verify()


def test_pretty_prints_consts_sorted_and_small_values() -> None:
    b = Builder()
    x = b.input("x", (1, 4))
    b.const("w", ConstMeta((4, 4)))
    b.const("s", np.array(0.125, f32))
    y = b.op("linear", [x, "w"], out="y", w_layout="out_in")
    b.op("mul", [y, "s"], out="z")
    g = ShapeInference().run(b.build(["z"]))
    assert g.pretty() == (
        "input %x : [1,4] f32\n"
        "const @s : [] f32 = 0.125\n"
        "const @w : [4,4] f32\n"
        "%y = linear(%x, @w) {w_layout=out_in} : [1,4] f32\n"
        "%z = mul(%y, @s) : [1,4] f32\n"
        "output %z\n"
    )


def test_symbolic_dims() -> None:
    assert dim_add("past_len", 1) == "past_len+1"
    assert dim_add("past_len+1", "past_len") == "2*past_len+1"
    assert dim_add(3, 4) == 7
    assert dim_add("n-1", 1) == "n"


def test_shape_inference_reports_the_node() -> None:
    b = Builder()
    x = b.input("x", (1, 8))
    b.const("w", ConstMeta((4, 6)))
    b.op("linear", [x, "w"], out="y", w_layout="out_in")
    with pytest.raises(ShapeError, match=r"%y = linear.*8 features, weight expects 6"):
        ShapeInference().run(b.build(["y"]))


# ---- fuse: text in, text out -------------------------------------------------------------------


def _run(g: Graph, *passes: object) -> str:
    g = ShapeInference().run(g)
    for p in passes:
        g = p.run(g)  # type: ignore[attr-defined]
    return g.verify().pretty()


def _layernorm_graph(square: str = "pow", affine: str = "wb", leak: bool = False) -> Graph:
    b = Builder()
    x = b.input("x", (1, 4))
    mean = b.op("reduce_mean", [x], out="mean", axes=[-1], keepdim=True)
    d = b.op("sub", [x, mean], out="d")
    if square == "pow":
        sq = b.op("pow", [d, b.const("two", np.array(2.0, f32))], out="sq")
    else:
        sq = b.op("mul", [d, d], out="sq")
    var = b.op("reduce_mean", [sq], out="var", axes=[1], keepdim=True)
    ve = b.op("add", [b.const("eps", np.array(1e-5, f32)), var], out="ve")
    y = b.op("div", [d, b.op("sqrt", [ve], out="std")], out="norm")
    if affine in ("w", "wb"):
        y = b.op("mul", [b.const("w", np.full(4, 1.5, f32)), y], out="scaled")
    if affine == "wb":
        y = b.op("add", [y, b.const("b", np.arange(4, dtype=f32))], out="y")
    return b.build([y, mean] if leak else [y])


def test_fuse_layernorm_written_out() -> None:
    before = _layernorm_graph()
    assert _run(before, FuseLayerNorm()) == (
        "input %x : [1,4] f32\n"
        "const @b : [4] f32 = [0, 1, 2, 3]\n"
        "const @w : [4] f32 = [1.5, 1.5, 1.5, 1.5]\n"
        "%y = layernorm(%x, @w, @b) {axis=-1, eps=1e-05} : [1,4] f32\n"
        "output %y\n"
    )


def test_fuse_layernorm_square_as_mul_and_no_bias() -> None:
    assert _run(_layernorm_graph(square="mul", affine="w"), FuseLayerNorm()) == (
        "input %x : [1,4] f32\n"
        "const @w : [4] f32 = [1.5, 1.5, 1.5, 1.5]\n"
        "%scaled = layernorm(%x, @w) {axis=-1, eps=1e-05} : [1,4] f32\n"
        "output %scaled\n"
    )


def test_fuse_layernorm_keeps_intermediates_used_elsewhere() -> None:
    g = _layernorm_graph(leak=True)  # the mean is also a graph output: nothing may be fused
    text = _run(g, FuseLayerNorm())
    assert "layernorm" not in text and text == _run(g)


def test_fused_layernorm_computes_the_same() -> None:
    g = ShapeInference().run(_layernorm_graph())
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(f32)
    want = evaluate(g, {"x": x})["y"]
    got = evaluate(FuseLayerNorm().run(g), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _gelu_graph(cube: str, half: str) -> Graph:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), as exporters write it."""
    b = Builder()
    x = b.input("x", (1, 8))
    if cube == "pow":
        x3 = b.op("pow", [x, b.const("three", np.array(3.0, f32))], out="x3")
    else:  # the ONNX exporter: x * (x * x)
        x3 = b.op("mul", [x, b.op("mul", [x, x], out="x2")], out="x3")
    c = b.op("mul", [b.const("c", np.array([0.044715], f32)), x3], out="cx3")
    inner = b.op("add", [x, c], out="inner")
    k = b.op("mul", [b.const("k", np.array(math.sqrt(2 / math.pi), f32)), inner], out="kin")
    t = b.op("add", [b.const("one", np.array(1.0, f32)), b.op("tanh", [k], out="t")], out="onept")
    h = b.const("half", np.array(0.5, f32))
    if half == "outer":
        y = b.op("mul", [h, b.op("mul", [x, t], out="xt")], out="y")
    else:  # (0.5 * x) * (1 + tanh(..))
        y = b.op("mul", [t, b.op("mul", [x, h], out="hx")], out="y")
    return b.build([y])


@pytest.mark.parametrize("cube, half", [("mul", "outer"), ("pow", "inner")])
def test_fuse_gelu_tanh(cube: str, half: str) -> None:
    g = _gelu_graph(cube, half)
    assert _run(g, FuseGelu()) == (
        "input %x : [1,8] f32\n"
        "%y = gelu(%x) {approximate=tanh} : [1,8] f32\n"
        "output %y\n"
    )
    x = np.linspace(-3, 3, 8, dtype=f32).reshape(1, 8)
    g = ShapeInference().run(g)
    np.testing.assert_allclose(evaluate(FuseGelu().run(g), {"x": x})["y"],
                               evaluate(g, {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_fuse_gelu_erf() -> None:
    b = Builder()
    x = b.input("x", (2,))
    e = b.op("erf", [b.op("div", [x, b.const("r2", np.array(math.sqrt(2), f32))], out="xs")], out="e")
    t = b.op("add", [e, b.const("one", np.array(1.0, f32))], out="t")
    b.op("mul", [b.op("mul", [x, b.const("h", np.array(0.5, f32))], out="hx"), t], out="y")
    assert _run(b.build(["y"]), FuseGelu()) == (
        "input %x : [2] f32\n%y = gelu(%x) {approximate=none} : [2] f32\noutput %y\n")


def test_fuse_gelu_rejects_wrong_constant() -> None:
    b = Builder()
    x = b.input("x", (2,))
    t = b.op("add", [b.const("one", np.array(1.0, f32)), b.op("tanh", [x], out="t")], out="t1")
    b.op("mul", [b.const("h", np.array(0.5, f32)), b.op("mul", [x, t], out="xt")], out="y")
    assert "gelu" not in _run(b.build(["y"]), FuseGelu())


def _linear_graph(kind: str) -> Graph:
    b = Builder()
    x = b.input("x", (1, 4))
    bias = b.const("b", np.arange(3, dtype=f32))
    if kind == "matmul_add":  # ONNX MatMul with an [in, out] initializer, then Add
        y = b.op("matmul", [x, b.const("W", np.ones((4, 3), f32))], out="xw")
        b.op("add", [bias, y], out="y")
    elif kind == "gemm_transb":  # ONNX Gemm from nn.Linear
        b.op("gemm", [x, b.const("W", np.ones((3, 4), f32)), bias], out="y", alpha=1.0, beta=1.0,
             trans_a=0, trans_b=1)
    elif kind == "addmm_permute":  # core-aten addmm(b, x, permute(W))
        wt = b.op("transpose", [b.const("W", np.ones((3, 4), f32))], out="wt", perm=[1, 0])
        b.op("gemm", [x, wt, bias], out="y", alpha=1.0, beta=1.0, trans_a=0, trans_b=0)
    elif kind == "mm_transposed":  # tied head: x @ wte.T, no bias
        wt = b.op("transpose", [b.const("W", np.ones((3, 4), f32))], out="wt", perm=[1, 0])
        b.op("matmul", [x, wt], out="y")
    return b.build(["y"])


@pytest.mark.parametrize("kind, expect", [
    ("matmul_add", "%y = linear(%x, @W, @b) {w_layout=in_out} : [1,3] f32"),
    ("gemm_transb", "%y = linear(%x, @W, @b) {w_layout=out_in} : [1,3] f32"),
    ("addmm_permute", "%y = linear(%x, @W, @b) {w_layout=out_in} : [1,3] f32"),
    ("mm_transposed", "%y = linear(%x, @W) {w_layout=out_in} : [1,3] f32"),
])
def test_fuse_linear(kind: str, expect: str) -> None:
    g = ShapeInference().run(_linear_graph(kind))
    fused = FuseLinear().run(g)
    nodes = [fused.pretty_node(n) for n in fused.nodes]
    assert nodes == [expect]
    x = np.arange(4, dtype=f32).reshape(1, 4)
    np.testing.assert_array_equal(evaluate(fused, {"x": x})["y"], evaluate(g, {"x": x})["y"])


def test_fuse_linear_keeps_non_vector_bias_add() -> None:
    b = Builder()
    x = b.input("x", (2, 4))
    y = b.op("matmul", [x, b.const("W", np.ones((4, 3), f32))], out="xw")
    b.op("add", [y, b.const("B", np.ones((2, 3), f32))], out="y")  # a [2,3] addend is no bias
    assert _run(b.build(["y"]), FuseLinear()) == (
        "input %x : [2,4] f32\n"
        "const @B : [2,3] f32 = [1, 1, 1, 1, 1, 1]\n"
        "const @W : [4,3] f32\n"
        "%xw = linear(%x, @W) {w_layout=in_out} : [2,3] f32\n"
        "%y = add(%xw, @B) : [2,3] f32\n"
        "output %y\n"
    )


def test_fuse_is_all_three_and_idempotent() -> None:
    g = ShapeInference().run(_layernorm_graph())
    once = Fuse().run(g)
    assert once.pretty() == Fuse().run(once).pretty()
    assert [p.name for p in GRAPH_PASSES] == ["shape_inference", "fuse", "fold", "classify"]


class _KindsAndRoles:
    """The descriptive half of classify alone (the graph below is no decode step)."""

    def run(self, g: Graph) -> Graph:
        return mark_kinds_and_roles(g.copy())


def test_classify_marks_kinds_on_a_small_graph() -> None:
    b = Builder()
    x = b.input("x", (1, 4))
    h = b.op("linear", [x, b.const("W", np.ones((8, 4), f32))], out="h", w_layout="out_in")
    g1 = b.op("gelu", [h], out="g", approximate="tanh")
    y = b.op("linear", [g1, b.const("W2", np.ones((4, 8), f32))], out="y", w_layout="out_in")
    b.op("reshape", [b.op("add", [x, y], out="r")], out="o", shape=[4])
    text = _run(b.build(["o"]), _KindsAndRoles())
    assert [line.split("#")[-1].strip() for line in text.splitlines() if "#" in line] == [
        "pim ffn_up", "asic gelu", "pim ffn_down", "asic residual", "data"]


def test_print_ir_shows_every_stage(tiny: GPT, monkeypatch, capsys) -> None:
    """PIMSIM_PRINT_IR=1: the IR after the import and each graph pass, then the placement and
    the program, in pipeline order on stderr."""
    from compiler.pipeline import compile_model
    from pimsim.config import load_config

    monkeypatch.setenv("PIMSIM_PRINT_IR", "1")
    c = compile_model(tiny, load_config("pim-gpt"), name="tiny")
    err = capsys.readouterr().err
    heads = [ln for ln in err.splitlines() if ln.startswith("==== after ")]
    assert heads == ["==== after import ====", *(f"==== after {p.name} ====" for p in GRAPH_PASSES),
                     "==== after place (pim-gpt) ====", "==== after emit (pim-gpt) ===="]
    assert c.mapping.pretty() in err and c.program.to_text(0).rstrip() in err
    monkeypatch.setenv("PIMSIM_PRINT_IR", "0")
    compile_model(tiny, load_config("pim-gpt"), name="tiny")
    assert "==== after" not in capsys.readouterr().err
