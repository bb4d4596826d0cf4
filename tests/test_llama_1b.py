"""The ~1 B-parameter random Llama of ``examples/llama_1b.py`` (TinyLlama-1.1B's shape): its
parameter count on meta tensors (nothing allocated), its small variant through ``validate`` as
``module:attribute``, and the per-step fields of the validation metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def llama_1b(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import examples.llama_1b as L

    return L


def test_the_factory_has_tinyllamas_parameter_count(llama_1b):
    L = llama_1b
    cfg = L.config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == \
        (2048, 22, 32, 4, 5632, 32000)
    assert L.n_params(cfg) == L.N_PARAMS == 1_100_048_384
    assert L.n_params(L.config(num_hidden_layers=2)) == 219_162_624


def test_the_small_variant_validates_as_module_attribute(llama_1b):
    from workloads.session import validate

    m = validate("examples.llama_1b:build_tiny", "pim-gpt", 4, reference="cpu").to_dict()
    assert m["passed"] and m["greedy_tokens_match"], m
    assert len(m["per_step_cosine"]) == 4 and min(m["per_step_cosine"]) >= 0.999
    assert m["top1_mismatches"] == []


def test_validation_metrics_name_the_mismatched_steps():
    from workloads.validation import validation_metrics

    ref = np.array([[0.0, 4.0, 1.0], [2.0, 2.001, 0.0]], np.float32)
    sim = np.array([[0.0, 4.0, 1.0], [2.001, 2.0, 0.0]], np.float32)
    m = validation_metrics(sim, ref)
    assert [x["step"] for x in m["top1_mismatches"]] == [1]
    assert m["top1_mismatches"][0]["decisive"] is False
    assert m["top1_mismatches"][0]["ref_top2_gap"] == pytest.approx(0.001, abs=1e-4)
    assert len(m["per_step_cosine"]) == 2


def test_a_counting_llama_counts_and_validates_token_for_token(llama_1b):
    """counting_llama (what build_counting runs at 1 B): a small Llama of the same head layout
    taught to count gives decisive predictions, its own greedy generation counts, and the
    functional simulation gives the same tokens with every step decisive."""
    import torch

    from workloads.session import validate

    L = llama_1b
    cfg = L.config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=256,
                   max_position_embeddings=64, num_attention_heads=8, num_key_value_heads=2)
    model = L.counting_llama(cfg, seed=1, steps=120, seq=32, batch=8, lr=3e-3, device="cpu")
    assert model.counting_loss < 0.5
    with torch.no_grad():
        out = model.generate(torch.tensor([[7]]), max_new_tokens=16, do_sample=False,
                             pad_token_id=0)[0, 1:].tolist()
    assert out == [(7 + k) % 256 for k in range(1, 17)]
    L._BUILT = model
    try:
        m = validate("examples.llama_1b:_built", "pim-gpt", 16, reference="cpu",
                     exact=True).to_dict()
    finally:
        L._BUILT = None
    assert m["greedy_tokens_match"] and m["decisive_steps"] == 16 and m["passed"], m
