"""gpt-oss: a tiny random model lowered op by op (attention sinks in the softmax's denominator,
a windowed layer alternating with a full one, q/k/v/o biases, YaRN rotary, the top-k-then-softmax
router with its bias, experts with biases and the clamped SwiGLU) gives the Hugging Face model's
own greedy tokens, and would not without any one of sinks, window, clamp; a sink costs the softmax
one more element per head."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import assert_same_generation, greedy_steps, hf_greedy, tiny_moe_model  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402
from workloads.validation import functional_executor  # noqa: E402

N_TOKENS = 16
PROMPT = [3]
WINDOW = 4  # hf_tiny's gpt-oss: layer 0 windowed, layer 1 full


@pytest.fixture(scope="module")
def cfg():
    return load_config("pim-gpt")


@pytest.fixture(scope="module")
def gpt_oss(cfg):
    m = tiny_moe_model("gpt-oss")
    return m, compile_model(decode_step_module(m), cfg, name="gpt-oss")


def test_gpt_oss_greedy_tokens_match_the_hf_model(gpt_oss, cfg):
    model, c = gpt_oss
    prog = c.program
    assert [m["k"] for m in prog.moe] == [2, 2] and [m["experts"] for m in prog.moe] == [8, 8]
    assert [(k.n_ctx, k.window) for k, _ in prog.kv_layouts] == [(WINDOW, WINDOW), (64, 0)]
    want = hf_greedy(model, PROMPT, N_TOKENS)
    got = greedy_steps(functional_executor(c, cfg, exact=True), N_TOKENS, PROMPT)
    assert_same_generation("gpt-oss", got, want)


def test_sinks_window_and_clamp_each_matter():
    """Without any one of them the model's generation fails the acceptance above (other tokens,
    or a step's logits at cosine < 0.999): the match is not blind to it."""
    import torch

    want = hf_greedy(tiny_moe_model("gpt-oss"), PROMPT, N_TOKENS)

    def no_sinks(m):
        with torch.no_grad():
            for lay in m.model.layers:
                lay.self_attn.sinks.fill_(-1e4)

    def no_window(m):
        m.config.sliding_window = 64
        for lay in m.model.layers:
            lay.self_attn.sliding_window = None

    def no_clamp(m):
        for lay in m.model.layers:
            lay.mlp.experts.limit = 7.0

    for change in (no_sinks, no_window, no_clamp):
        m = tiny_moe_model("gpt-oss")
        change(m)
        with pytest.raises(AssertionError):
            assert_same_generation(change.__name__, hf_greedy(m, PROMPT, N_TOKENS), want)


def test_a_sink_costs_the_softmax_one_element_per_head(gpt_oss, cfg):
    _, c = gpt_oss
    prog = c.program
    soft = [s for s in prog.steps if s.op == "softmax" and s.name.endswith(".softmax")]
    assert [s.window for s in soft] == [WINDOW, 0]
    n_head = 4
    for s in soft:  # scores of min(pos + 1, window) tokens and the sink, per query head
        for pos in (0, 2, 3, 9, 20):
            tokens = min(pos + 1, s.window) if s.window else pos + 1
            assert prog.asic_elems(s, pos) == n_head * (tokens + 1)
    two = compile_model(decode_step_module(gpt_oss[0]), cfg, name="gpt-oss", tp=2).program
    soft2 = [s for s in two.steps if s.op == "softmax" and s.name.endswith(".softmax")]
    assert [two.asic_elems(s, 9) for s in soft2] == [2 * (WINDOW + 1), 2 * 11]  # 2 heads each
    routers = [s for s in prog.steps if s.name.endswith("moe_route")]
    assert [s.op for s in routers] == ["softmax", "softmax"]
    experts = {s.expert for s in prog.steps if s.expert is not None}
    assert experts == {(m, e) for m in range(2) for e in range(8)}
    for e in range(8):  # gate and up one product (biases fetched), the clamps on the ASIC
        tagged = [s.op for s in prog.steps if s.expert == (0, e)]
        assert [o for o in tagged if o in ("ffn_up", "ffn_down")] == ["ffn_up", "ffn_down"]
        assert tagged.count("elementwise") >= 5 and "activation" in tagged


@pytest.mark.parametrize("exact", [True, False])
def test_asic_softmax_with_a_sink_equals_the_reference(exact):
    import torch

    from compiler.ir import Node
    from compiler.passes.interpret import _OPS
    from pimsim.asic_ops import OPS
    from pimsim.functional import AsicMath
    from workloads.models.moe_ops import softmax_sink_reference

    rng = np.random.default_rng(0)
    scores = rng.normal(scale=3.0, size=(1, 2, 3, 7)).astype(np.float32)
    sinks = rng.normal(scale=2.0, size=(1, 2, 3, 1)).astype(np.float32)
    want = softmax_sink_reference(torch.from_numpy(scores), torch.from_numpy(sinks)).numpy()
    assert np.all(want.sum(-1) < 1.0)  # the sink takes its share
    M = AsicMath.from_config(load_config("pim-gpt"), exact=exact)
    got = OPS["softmax"].fn(M, [scores, sinks], {"axis": -1})
    assert np.allclose(got, want, rtol=1e-6 if exact else 1e-3, atol=1e-7 if exact else 1e-5)
    node = Node("softmax", ["s", "k"], ["p"], {"axis": -1}, "p")
    assert np.allclose(_OPS["softmax"](node, [scores, sinks], {}), want, rtol=1e-5, atol=1e-7)
    x = rng.normal(scale=5.0, size=(3, 8)).astype(np.float32)
    at = {"min": -2.0, "max": 1.5}
    assert np.array_equal(OPS["clamp"].fn(M, [x], at), np.clip(x, -2.0, 1.5))
    assert np.array_equal(OPS["clamp"].fn(M, [x], {"min": None, "max": 1.5}), np.minimum(x, 1.5))
