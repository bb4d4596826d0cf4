"""Attention variants: sliding-window attention (Mistral v0.1's window on every layer; Qwen2's
windowed layers alternating with full ones) as a KV ring of the window's slots gives the Hugging
Face model's own greedy tokens (which differ from full attention's), on one and two devices;
its attention steps stop growing at the window."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import COMMON, assert_same_generation, hf_greedy, tiny_model_from  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402
from workloads.validation import functional_executor  # noqa: E402

WINDOW = 6
PROMPT = [3, 17, 42, 5, 9]
N_TOKENS = 16


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


def _mistral(window: int | None):
    import transformers as T

    return tiny_model_from(T.MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=window, **COMMON))


@pytest.fixture(scope="module")
def mistral(cfg):
    m = _mistral(WINDOW)
    return m, compile_model(decode_step_module(m), cfg, name="mistral-window")


def _greedy(c, cfg):
    """The prompt through the program, then N_TOKENS greedy tokens (tokens, logits)."""
    ex = functional_executor(c, cfg, exact=True)
    toks, logits = [], []
    for pos in range(len(PROMPT) + N_TOKENS - 1):
        lg = ex.step(PROMPT[pos] if pos < len(PROMPT) else toks[-1], pos)
        if pos >= len(PROMPT) - 1:
            logits.append(lg)
            toks.append(int(np.argmax(lg)))
    return toks, logits


def test_sliding_window_gives_the_models_tokens_with_a_ring_of_the_window(mistral, cfg):
    model, c = mistral
    assert [(k.n_ctx, k.window, v.n_ctx, v.window) for k, v in c.program.kv_layouts] == \
        [(WINDOW, WINDOW, WINDOW, WINDOW)] * 2
    want = hf_greedy(model, PROMPT, N_TOKENS)
    assert_same_generation("mistral window", _greedy(c, cfg), want)
    # the window matters: the same weights with full attention generate otherwise
    full = hf_greedy(_mistral(None), PROMPT, N_TOKENS)
    assert full[0] != want[0]


def test_windowed_attention_time_stops_growing_at_the_window(mistral, cfg):
    from pimsim.decode import DecodeSimulator

    _, c = mistral
    prog = c.program
    score = [s for s in prog.steps if s.op == "attn_score"][0]
    soft = [s for s in prog.steps if s.op == "softmax"][0]
    assert score.window == soft.window == WINDOW
    assert [prog.asic_elems(soft, p) for p in (0, 4, 5, 6, 30)] == \
        [prog.asic_elems(soft, 0) + soft.per_pos_elems * k for k in (0, 4, 5, 5, 5)]
    for pos in (WINDOW - 1, WINDOW, 3 * WINDOW + 2):  # the ring's slots, the same work
        items = [a.tolist() for a in prog.pim_items(score, pos)]
        assert items == [a.tolist() for a in prog.pim_items(score, WINDOW - 1)]
    kv = [s for s in prog.steps if s.op == "kv_write"][0]
    assert [a.tolist() for a in prog.pim_items(kv, WINDOW + 2)] == \
        [a.tolist() for a in prog.pim_items(kv, 2)]
    fast, slow = DecodeSimulator(prog, cfg), DecodeSimulator(prog, cfg, fast=False)
    for pos in range(3 * WINDOW):
        a, b = fast.run_token(pos), slow.run_token(pos)
        assert (a.end_cyc, a.step_counts.tolist()) == (b.end_cyc, b.step_counts.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("split", [{"tp": 2}, {"pp": 2}])
def test_sliding_window_split_over_two_devices(mistral, cfg, split):
    model, _ = mistral
    c = compile_model(decode_step_module(model), cfg, name="mistral-window", **split)
    assert_same_generation(f"mistral window {split}", _greedy(c, cfg),
                           hf_greedy(model, PROMPT, N_TOKENS))


@pytest.mark.slow
def test_windowed_layers_alternating_with_full_ones(cfg):
    import transformers as T

    m = tiny_model_from(T.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW,
        layer_types=["full_attention", "sliding_attention"], **COMMON))
    c = compile_model(decode_step_module(m), cfg, name="qwen2-window")
    assert [(k.n_ctx, k.window) for k, _ in c.program.kv_layouts] == [(64, 0), (WINDOW, WINDOW)]
    assert_same_generation("qwen2 alternating", _greedy(c, cfg), hf_greedy(m, PROMPT, N_TOKENS))


def test_batched_steps_of_a_window_equal_their_single_runs(mistral, cfg):
    # each sequence writes its ring slot (t mod W) of its own KV region and attends over
    # min(pos + 1, W) tokens, as a single run does: the gathered items equal the ones built
    # vector by vector from each region's layouts, batch 1 is the unbatched run to the cycle,
    # B functional sequences give their single runs' tokens, prefill batched too
    from pimsim.batch import BatchedProgram, run_batched
    from pimsim.generate import run_generation

    prog = mistral[1].program
    bp = BatchedProgram(prog, 3)
    for pos in [(0, 5, 9), (6, 7, 13), (20, 3, 40)]:
        for st in bp.steps:
            if st.kind == "pim" and st.op in ("kv_write", "attn_score", "attn_value"):
                got, want = bp.pim_items(st, pos), bp.pim_items_reference(st, pos)
                assert all(np.array_equal(a, b) for a, b in zip(got, want)), (st.name, pos)
    one = run_batched(prog, cfg, prompts=[[3] * 9], n_tokens=4)
    single = run_generation(prog, cfg, prompt=[3] * 9, n_tokens=4)
    assert (one.cycles, one.commands) == (single.cycles, single.commands)
    c = mistral[1]
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11, 12]]
    singles = [run_generation(prog, cfg, prompt=p, n_tokens=6,
                              functional=functional_executor(c, cfg, False)).tokens
               for p in prompts]
    for prefill in ("token-by-token", "batched"):
        rep = run_batched(prog, cfg, prompts=prompts, n_tokens=6, prefill=prefill,
                          functional=[functional_executor(c, cfg, False) for _ in prompts])
        assert rep.tokens == singles, prefill
    fast = run_batched(prog, cfg, prompts=[[1] * 3, [2] * 9, [4] * 14], n_tokens=4,
                       skip_prompt=True)
    slow = run_batched(prog, cfg, prompts=[[1] * 3, [2] * 9, [4] * 14], n_tokens=4,
                       skip_prompt=True, fast=False)
    assert (fast.cycles, fast.commands) == (slow.cycles, slow.commands)
