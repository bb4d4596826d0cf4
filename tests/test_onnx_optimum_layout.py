"""The optimum door: a decode step in the layout of optimum's text-generation-with-past
(input_ids [1, 1], attention_mask [1, past + 1], position_ids [1, 1], per-layer
past_key_values.N.key / .value [1, n_kv, past, d_head] -> logits, present.N.key / .value) compiles,
runs functionally and validates. These files are made the same way with torch.onnx (dynamo;
tests/test_optimum_files.py has files optimum itself wrote); the front end rewrites the layout to
pimsim's at import (compiler.frontends.onnx_optimum): stacked past, the all-ones mask folded."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from hf_tiny import assert_same_generation, export_optimum_layout, functional_greedy, hf_greedy, tiny_model  # noqa: E402

from compiler.passes.images import build_graph_image  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.errors import UserError  # noqa: E402
from pimsim.functional import AsicMath, FlowExecutor  # noqa: E402

N_TOKENS = 16
PROMPT = [3]


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """family -> model.onnx in optimum's layout (exported once per module: ~10 s each)."""
    out = {}
    for key, fam, pos in (("llama-gqa", "llama-gqa", True), ("qwen2", "qwen2", True),
                          ("llama-gqa-no-position", "llama-gqa", False)):
        d = str(tmp_path_factory.mktemp(key))
        out[key] = (fam, export_optimum_layout(tiny_model(fam), d, position_ids=pos))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", ["llama-gqa", "qwen2", "llama-gqa-no-position"])
def test_optimum_layout_greedy_tokens_match_the_hf_model(files, cfg, key):
    """compile_model of the file + the functional executor (exact ASIC math): the HF model's own
    greedy tokens over 16 steps, cosine >= 0.999 on every step."""
    fam, path = files[key]
    c = compile_model(path, cfg, name=key)  # n_ctx from config.json
    assert c.mapping.spec.n_ctx == 64
    assert_same_generation(key, functional_greedy(c, cfg, N_TOKENS, PROMPT),
                           hf_greedy(tiny_model(fam), PROMPT, N_TOKENS))


@pytest.mark.slow
def test_optimum_layout_leaves_no_mask_and_stacks_the_past(files):
    """After the import: token, stacked past_k / past_v, position; none of the mask subgraph."""
    import onnx

    from compiler.frontends import import_onnx
    from compiler.frontends.onnx_optimum import rewrite_hf_decode

    for key in ("llama-gqa", "llama-gqa-no-position"):
        proto = onnx.load(files[key][1])
        before = {n.op_type for n in proto.graph.node}
        assert {"Range", "Where", "LessOrEqual", "IsNaN", "GatherND", "And"} <= before
        g = rewrite_hf_decode(proto).graph
        assert {"Range", "Where", "LessOrEqual", "IsNaN", "GatherND", "And", "Equal"} \
            .isdisjoint(n.op_type for n in g.node)
        assert [i.name for i in g.input] == ["input_ids", "past_k", "past_v", "position"]
        assert [o.name for o in g.output] == ["logits"]
        ir = import_onnx(files[key][1])
        assert [v.name for v in ir.inputs] == ["input_ids", "past_k", "past_v", "position"]
        assert ir.inputs[1].shape == (2, 2, "past", 16)


@pytest.mark.slow
def test_a_file_without_shape_annotations_lowers_to_the_same_program(files, cfg):
    """Without value_info the import infers the shapes (onnx's inference, then the IR's rules):
    the same logits as from the annotated file."""
    import onnx

    proto = onnx.load(files["llama-gqa"][1])
    del proto.graph.value_info[:]
    runs = []
    for model in (files["llama-gqa"][1], proto):
        c = compile_model(model, cfg, name="gqa", n_ctx=64)
        img = build_graph_image(c.mapping, data_type=cfg.pim.data_type)
        ex = FlowExecutor(c.program, img, cfg, math=AsicMath.from_config(cfg, exact=True))
        runs.append(np.stack([ex.step(t, p) for p, t in enumerate((3, 9, 27, 5))]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.slow
@pytest.mark.parametrize("key", ["llama-gqa", "qwen2"])
def test_validate_optimum_layout_against_onnxruntime(files, key, capsys):
    pytest.importorskip("onnxruntime")
    from workloads.cli import main

    path = files[key][1]
    capsys.readouterr()
    assert main(["validate", path, "--hw", "pim-gpt", "--tokens", "16", "--exact",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference_runtime"] == "onnxruntime" and rep["reference_info"]["layout"] == "hf"
    assert rep["passed"] and rep["min_cosine"] >= 0.999, rep["per_step_cosine"]


# ---- files that are not one batch-1 decode step: a one-line UserError naming the input -------

def _hf_file(tmp_path, input_ids=(1, 1), mask=(1, "past + 1"), position=(1, 1), kv_rank=4):
    import onnx
    from onnx import TensorProto, helper

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    kv = [1, 2, "past", 16][:kv_rank]
    ins = [helper.make_tensor_value_info("input_ids", i64, list(input_ids)),
           helper.make_tensor_value_info("attention_mask", i64, list(mask)),
           helper.make_tensor_value_info("position_ids", i64, list(position))]
    ins += [helper.make_tensor_value_info(f"past_key_values.0.{s}", f, kv)
            for s in ("key", "value")]
    emb = helper.make_tensor("emb", f, [8, 4], np.zeros(32, np.float32))
    g = helper.make_graph([helper.make_node("Gather", ["emb", "input_ids"], ["logits"])], "g",
                          ins, [helper.make_tensor_value_info("logits", f, [1, 1, 4])],
                          initializer=[emb])
    path = str(tmp_path / "bad.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize("kw, match", [
    (dict(input_ids=(1, 8), mask=(1, "past + 8"), position=(1, 8)),
     r"input_ids has shape \[1, 8\]: a prefill graph"),
    (dict(input_ids=(2, 1), mask=(2, "past + 1"), position=(2, 1)),
     r"input_ids has shape \[2, 1\]: a batch of more than one sequence"),
    (dict(mask=(1, 1, 1, "past + 1")), r"attention_mask has shape \[1, 1, 1, 'past\+1'\]: "
     r"expected \[1, past\+1\]"),
    (dict(mask=(1, "past")), r"attention_mask has shape \[1, 'past'\]: expected \[1, past\+1\]"),
    (dict(position=(1,)), r"position_ids has shape \[1\]: expected \[1, 1\]"),
    (dict(kv_rank=3), r"past_key_values.0.key has shape \[1, 2, 'past'\]: expected \[1, "
     r"n_kv_head, past, d_head\]"),
])
def test_a_file_that_is_not_one_decode_step_is_refused_naming_the_input(tmp_path, kw, match):
    path = _hf_file(tmp_path, **kw)
    with pytest.raises(UserError, match=match) as e:
        compile_model(path, load_config("pim-gpt"))
    msg = str(e.value)
    assert "\n" not in msg and "; export" in msg  # one line, with how to export a decode step


def test_symbolic_batch_and_sequence_sizes_are_bound_to_one_token(tmp_path):
    """optimum's dims (batch_size, sequence_length) are one sequence, one new token."""
    import onnx

    from compiler.frontends.onnx_optimum import rewrite_hf_decode

    path = _hf_file(tmp_path, input_ids=("batch_size", "sequence_length"),
                    mask=("batch_size", "past + sequence_length"),
                    position=("batch_size", "sequence_length"))
    g = rewrite_hf_decode(onnx.load(path)).graph
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in g.input}
    assert dims["input_ids"] == [1, 1] and dims["past_k"] == [1, 2, "past", 16]


def test_cli_compile_of_a_prefill_graph_prints_one_line(tmp_path, capsys):
    from workloads.cli import main

    path = _hf_file(tmp_path, input_ids=(1, 8), mask=(1, "past + 8"), position=(1, 8))
    assert main(["compile", path, "--hw", "pim-gpt"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input_ids has shape [1, 8]" in err[0], err
