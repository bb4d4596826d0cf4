"""``pimsim validate FILE.onnx``: the reference is the ONNX file itself in onnxruntime (greedy,
its own past key/values fed back), for the pimsim decode-step layout (our GPT export, the
torch.onnx door of a Hugging Face model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from pimsim.errors import UserError  # noqa: E402
from workloads.cli import main  # noqa: E402
from workloads.reference.onnxruntime import run_onnx_reference  # noqa: E402
from workloads.session import validate  # noqa: E402


@pytest.fixture(scope="module")
def gpt_onnx(tmp_path_factory):
    from workloads.models.export import export_decode_onnx
    from workloads.models.gpt import GPT, get_config, round_weights_to_bf16

    model = round_weights_to_bf16(GPT.from_seed(get_config("tiny"), seed=3)).eval()
    path = tmp_path_factory.mktemp("gpt") / "tiny.onnx"
    export_decode_onnx(model, path, past_len=3)
    return model, str(path)


def test_onnxruntime_reference_is_the_models_own_greedy_decode(gpt_onnx):
    """The file in onnxruntime gives the PyTorch module's own tokens and logits."""
    from workloads.reference.pytorch import run_reference

    model, path = gpt_onnx
    prompt = [5, 17, 2]
    ort_run = run_onnx_reference(path, prompt, 8)
    torch_run = run_reference("tiny", prompt, 8, device="cpu", source=model)
    assert ort_run.info["layout"] == "pimsim" and ort_run.device == "cpu"
    assert ort_run.tokens == torch_run.tokens
    assert ort_run.logits.shape == (len(prompt) + 7, model.cfg.vocab)
    np.testing.assert_allclose(ort_run.logits, torch_run.logits, atol=1e-4, rtol=1e-4)


def test_validate_onnx_file_uses_onnxruntime_and_catches_a_wrong_placement(gpt_onnx):
    _, path = gpt_onnx
    m = validate(path, "pim-gpt", 6, prompt=2).to_dict()
    assert m["reference_runtime"] == "onnxruntime" and m["reference_info"]["layout"] == "pimsim"
    assert m["passed"] and m["greedy_tokens_match"], m["per_step_cosine"]
    bad = validate(path, "pim-gpt", 6, prompt=2, corrupt="shift_qkv_rows").to_dict()
    assert not bad["passed"] and bad["min_cosine"] < 0.99


def test_validate_torch_onnx_export_of_an_hf_model(tmp_path, capsys):
    """The torch.onnx (dynamo) door: onnxruntime's greedy tokens are the HF model's own, and the
    simulation matches them with exact ASIC math."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("transformers")
    from hf_tiny import hf_greedy, tiny_model

    from workloads.models.hf_decode import export_onnx

    model = tiny_model("llama-gqa")
    path = export_onnx(model, str(tmp_path / "step.onnx"))
    ref_toks, ref_logits = hf_greedy(model, [1], 8)
    run = run_onnx_reference(path, [1], 8)
    assert run.tokens == ref_toks
    np.testing.assert_allclose(run.logits, ref_logits, atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    assert main(["validate", path, "--hw", "pim-gpt", "--tokens", "8", "--exact",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference_runtime"] == "onnxruntime"
    assert rep["passed"] and rep["greedy_tokens_match"] and rep["min_cosine"] >= 0.999


def test_onnx_file_of_another_layout_is_refused_naming_its_inputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError, match=r"inputs \['x'\] are neither.*--reference FILE.npz"):
        run_onnx_reference(str(path), [1], 2)


def test_without_onnxruntime_validate_says_how_to_get_it(gpt_onnx, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(UserError, match="needs onnxruntime.*pip install onnxruntime"):
        validate(gpt_onnx[1], "pim-gpt", 2)


def test_onnxruntime_reference_of_the_hf_past_key_values_layout(tmp_path):
    """input_ids + attention_mask + position_ids + past_key_values.N.key/value: onnxruntime's
    greedy decode (all-ones mask of past + 1, its presents fed back) is the HF model's own."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("transformers")
    from hf_tiny import export_optimum_layout, hf_greedy, tiny_model

    model = tiny_model("llama-gqa")
    path = export_optimum_layout(model, str(tmp_path))
    ref_toks, ref_logits = hf_greedy(model, [1], 8)
    run = run_onnx_reference(path, [1], 8)
    assert run.info["layout"] == "hf"
    assert run.tokens == ref_toks
    np.testing.assert_allclose(run.logits, ref_logits, atol=1e-4, rtol=1e-4)
