"""The optimum door, with files optimum itself wrote: ``tests/data/optimum/<family>/`` holds the
``model.onnx`` that ``optimum.exporters.onnx.main_export(task="text-generation-with-past")``
exported from the tiny random Hugging Face model saved beside it (``model.safetensors``; see
``tests/data/optimum/make.py`` and each ``provenance.json``). optimum's TorchScript export
annotates no shapes, decomposes attention with shape arithmetic (``Shape``, ``Div``,
``ConstantOfShape``, ``Equal``, ``Where``) and writes GPT-J's rotary lookup as ``Tile`` +
``GatherElements``. Each file is compiled and run functionally with exact ASIC math, and must
give the source model's own greedy tokens (its own forward and KV cache, loaded with
``from_pretrained`` from the folder) over 16 tokens, cosine >= 0.999 on every step."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

from hf_tiny import assert_same_generation, functional_greedy, hf_greedy  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "optimum")
FAMILIES = sorted(d for d in os.listdir(DATA) if os.path.isdir(os.path.join(DATA, d)))
N_TOKENS = 16
PROMPT = [3]


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


def _hf(family: str):
    import transformers as T

    return T.AutoModelForCausalLM.from_pretrained(os.path.join(DATA, family)).eval()


def test_every_family_of_the_project_has_an_optimum_file():
    from hf_tiny import FAMILIES as ALL

    assert sorted(ALL) == FAMILIES
    for fam in FAMILIES:
        prov = json.load(open(os.path.join(DATA, fam, "provenance.json")))
        assert prov["optimum-onnx-naf"] and "text-generation-with-past" in prov["command"]


@pytest.mark.parametrize("family", FAMILIES)
def test_optimum_file_gives_the_source_models_greedy_tokens(cfg, family):
    import onnx

    path = os.path.join(DATA, family, "model.onnx")
    assert not onnx.load(path, load_external_data=False).graph.value_info  # as optimum wrote it
    c = compile_model(path, cfg)
    assert_same_generation(family, functional_greedy(c, cfg, N_TOKENS, PROMPT),
                           hf_greedy(_hf(family), PROMPT, N_TOKENS))


def test_validate_an_optimum_file_against_onnxruntime(capsys):
    pytest.importorskip("onnxruntime")
    from workloads.cli import main

    capsys.readouterr()
    path = os.path.join(DATA, "llama-gqa", "model.onnx")
    assert main(["validate", path, "--hw", "pim-gpt", "--tokens", "16", "--exact",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference_runtime"] == "onnxruntime" and rep["reference_info"]["layout"] == "hf"
    assert rep["passed"] and rep["min_cosine"] >= 0.999, rep["per_step_cosine"]
