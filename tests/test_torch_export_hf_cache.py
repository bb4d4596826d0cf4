"""The torch.export door with the model's own KV cache (compiler.frontends.torch_kv_cache):

* static: transformers' own export (``convert_and_export_with_cache``: ``input_ids [1, 1]``,
  ``cache_position [1]``, the cache as ``[1, n_kv, max_cache_len, d_head]`` buffers written with
  ``index_copy_``);
* dynamic: ``torch.export.export`` of the model's forward with a ``DynamicCache`` (per-layer past
  inputs of a dynamic length) after ``register_dynamic_cache_export_support``.

Each is read as a decode step and gives the Hugging Face model's own greedy tokens."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from hf_tiny import FAMILIES as ALL_FAMILIES  # noqa: E402
from hf_tiny import (  # noqa: E402
    _configs,
    assert_same_generation,
    functional_greedy,
    hf_greedy,
    tiny_model,
    tiny_model_from,
)

from compiler.frontends.torch_kv_cache import CacheLayoutError, analyse  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from examples.static_cache import export_with_static_cache  # noqa: E402
from pimsim.config import load_config  # noqa: E402

N_TOKENS = 16
PROMPT = [3]
# transformers' own export fails for OPT and Falcon (inside torch.export, transformers 5.24)
FAMILIES = ("llama-gqa", "gpt2", "gpt-neox", "qwen2", "mistral", "phi", "gpt-j", "gpt-bigcode",
            "llama")


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


@pytest.mark.parametrize("family", FAMILIES)
def test_static_cache_program_gives_the_hf_models_greedy_tokens(cfg, family):
    ep = export_with_static_cache(tiny_model(family), max_cache_len=40)
    c = compile_model(ep, cfg, name=family)
    assert c.mapping.spec.n_ctx == 40  # the cache length is the context
    assert_same_generation(family, functional_greedy(c, cfg, N_TOKENS, PROMPT),
                           hf_greedy(tiny_model(family), PROMPT, N_TOKENS))


def test_the_analysis_finds_every_layers_key_and_value_and_the_masks():
    ep = export_with_static_cache(tiny_model("llama-gqa"), max_cache_len=40)
    sc = analyse(ep)
    assert (sc.n_layer, sc.n_kv, sc.d_head, sc.max_len) == (2, 2, 16, 40)
    assert sc.layout == "static"
    assert sorted(sc.tensors.values()) == [(0, "k"), (0, "v"), (1, "k"), (1, "v")]
    assert len(sc.writes) == 4 and len(sc.masks) >= 1
    assert sc.resized  # the grouped-query repeat of the cache reads max_len rows


def test_a_sliding_window_mask_is_refused_naming_the_mask():
    cfg = _configs()["mistral"]()
    cfg.sliding_window = 4
    ep = export_with_static_cache(tiny_model_from(cfg), max_cache_len=40)
    with pytest.raises(CacheLayoutError, match=r"attention mask '\w+' at position \d+ keeps rows"):
        analyse(ep)


def test_a_cache_length_equal_to_another_axis_is_refused_saying_what_to_change(cfg):
    ep = export_with_static_cache(tiny_model("llama-gqa"), max_cache_len=16)  # = d_head
    with pytest.raises(CacheLayoutError, match="max_cache_len other than"):
        compile_model(ep, cfg)


def test_validate_a_static_cache_program_against_itself(capsys):
    from workloads.cli import main

    capsys.readouterr()
    assert main(["validate", "examples.static_cache:llama", "--tokens", "8", "--exact",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference_info"]["program"] == "torch.export (static cache)"
    assert rep["passed"] and rep["greedy_tokens_match"] and rep["min_cosine"] >= 0.999


def test_transformers_dynamic_cache_export_is_a_prefill_refused_with_how_to_export(cfg):
    """export_with_dynamic_cache traces a prompt of several tokens with an empty cache (and a
    specialised use_cache flag input): refused, saying how to export a decode step."""
    import torch
    from transformers.integrations.executorch import export_with_dynamic_cache

    from pimsim.errors import UserError

    ep = export_with_dynamic_cache(tiny_model("llama-gqa"), torch.zeros((1, 4), dtype=torch.long),
                                   torch.ones((1, 4), dtype=torch.long))
    with pytest.raises(UserError, match="a prefill graph, which is not lowered; export one "
                                        "decode step instead"):
        compile_model(ep, cfg, n_ctx=64)


def export_with_dynamic_cache_inputs(model, past_len: int = 3, dim=None):
    """``torch.export.export`` of ``model``'s forward with ``input_ids [1, 1]``, ``position_ids
    [1, 1]`` and a DynamicCache of ``past_len`` rows (axis 2 of every cache tensor ``dim``,
    Dim.AUTO by default), as a user writes it."""
    import torch
    from transformers import DynamicCache
    from transformers.integrations.executorch import register_dynamic_cache_export_support

    from workloads.models.hf_decode import cache_dims, cache_kwarg

    register_dynamic_cache_export_support()
    n_layer, n_kv, d_head, _ = cache_dims(model.config)
    cache = DynamicCache(config=model.config)
    for i in range(n_layer):
        cache.update(torch.zeros(1, n_kv, past_len, d_head), torch.zeros(1, n_kv, past_len, d_head),
                     i)
    (name,) = cache_kwarg(model, cache)
    d = torch.export.Dim.AUTO if dim is None else dim
    dyn = {"input_ids": None, name: [[{2: d}] * n_layer, [{2: d}] * n_layer],
           "position_ids": None}
    kwargs = {"input_ids": torch.zeros((1, 1), dtype=torch.long), name: cache,
              "position_ids": torch.tensor([[past_len]])}
    return torch.export.export(model, (), kwargs, dynamic_shapes=dyn, strict=False)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_dynamic_cache_program_gives_the_hf_models_greedy_tokens(cfg, family):
    ep = export_with_dynamic_cache_inputs(tiny_model(family))
    kv = analyse(ep)
    assert kv.layout == "dynamic" and len(kv.tensors) == 2 * kv.n_layer
    c = compile_model(ep, cfg, name=family, n_ctx=64)
    assert_same_generation(family, functional_greedy(c, cfg, N_TOKENS, PROMPT),
                           hf_greedy(tiny_model(family), PROMPT, N_TOKENS))


def test_a_dynamic_cache_program_of_a_static_past_length_is_refused(cfg):
    """Without a dynamic past length the program serves one position: refused, saying how."""
    import torch

    ep = export_with_dynamic_cache_inputs(tiny_model("llama-gqa"), dim=torch.export.Dim.STATIC)
    with pytest.raises(CacheLayoutError, match="not a dynamic dimension.*torch.export.Dim"):
        compile_model(ep, cfg, n_ctx=64)
