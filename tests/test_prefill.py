"""Prefill (pimsim.prefill): a prompt of P tokens as one batched step, or token by token.

* a prompt of one token: the batched prefill is today's run to the cycle;
* the prefill step's KV writes are the token-by-token steps' writes (the same rows and columns,
  positions 0..P-1 in one region), token p's attention reads positions 0..p (causal);
* timing: the batched step of P tokens takes at most the P token-by-token steps' time and at
  least the MAC-rate bound of P vectors; the fast executor equals the command-by-command one;
* functional: after a batched prefill the KV caches hold what token-by-token leaves, and the
  generated tokens (and every step's logits) are the same (one sequence, a batch of sequences,
  tensor parallel devices);
* the report: TTFT and TPOT, labelled with the mode; ``pimsim run --prefill``; bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pimsim.batch import mac_bound_cyc, prefill_program, run_batched
from pimsim.config import load_config
from pimsim.errors import UserError
from pimsim.generate import prompt_ids, run_generation
from pimsim.pipeline import run_system
from pimsim.prefill import PREFILL_MODES, prefill_positions
from workloads.session import compile_model, simulate, system_programs


def _program(model: str, cfg):
    return system_programs(compile_model(model, cfg), cfg)[0]


# ------------------------------------------------------------------ P = 1 is today's run

@pytest.mark.parametrize("hw", ["pim-gpt", "aim-gddr6"])
def test_one_token_prompt_is_todays_run(hw):
    base = simulate("tiny", hw, tokens=3, prompt=1).report
    one = simulate("tiny", hw, tokens=3, prompt=1, prefill="batched").report
    assert one.cycles == base.cycles
    assert one.per_token_ms == base.per_token_ms
    assert one.commands == base.commands
    assert one.energy == base.energy
    assert one.ttft_ms == base.ttft_ms == base.per_token_ms[0]
    assert one.prefill == "batched" and base.prefill == "token-by-token"


# ------------------------------------------------------------------ the prefill step's items

def test_prefill_writes_and_reads_the_token_by_token_kv_positions():
    cfg = load_config("pim-gpt")
    prog = _program("tiny", cfg)
    P = 6
    pp = prefill_program(prog, P)
    ps = prefill_positions(P)
    assert pp.batch == P and ps == tuple(range(P))
    assert all(kv == pp.seq_kv[0] for kv in pp.seq_kv)  # one shared KV region
    for step in prog.steps:
        if step.op not in ("kv_write", "attn_score", "attn_value"):
            continue
        got = pp.pim_items(step, ps)
        want = [np.concatenate([prog.pim_items(step, p)[c] for p in range(P)])
                for c in range(prog.geo.channels)]
        for g, w in zip(got, want):
            assert np.array_equal(g, w), step.name
    softmax = next(s for s in prog.steps if s.per_pos_elems)
    assert pp.asic_elems(softmax, ps) == \
        sum(prog.asic_elems(softmax, p) for p in range(P))  # p + 1 scores for token p


# ------------------------------------------------------------------ timing

@pytest.mark.parametrize("hw", ["pim-gpt", "aim-gddr6"])
@pytest.mark.parametrize("P", [2, 8, 24])
def test_prefill_step_between_mac_bound_and_token_by_token(hw, P):
    cfg = load_config(hw)
    prog = _program("tiny", cfg)
    prompt = prompt_ids(P, prog.dims.get("vocab", 64), 0)
    tbt = run_system([prog], cfg, prompt=prompt, n_tokens=3)
    bat = run_system([prog], cfg, prompt=prompt, n_tokens=3, prefill="batched")
    pre = bat.extra["prefill"]
    assert pre["vectors"] == P
    assert bat.ttft_ms == pytest.approx(pre["prefill_step_ms"]) == bat.per_token_ms[0]
    assert pre["mac_bound_ms"] == pytest.approx(
        cfg.timing.ns(mac_bound_cyc(prefill_program(prog, P), cfg)) / 1e6)
    assert pre["mac_bound_ms"] <= bat.ttft_ms <= tbt.ttft_ms  # tbt: P decode steps
    assert bat.ttft_ms < tbt.ttft_ms
    assert bat.generated_tokens == tbt.generated_tokens == 3
    assert bat.tpot_ms == pytest.approx(np.mean(bat.per_token_ms[1:]))
    assert tbt.tpot_ms == pytest.approx(np.mean(tbt.per_token_ms[1:]))


def test_fast_and_command_by_command_executors_agree_on_a_prefill():
    cfg = load_config("pim-gpt")
    prog = _program("tiny", cfg)
    prompt = prompt_ids(5, 64, 0)
    fast = run_system([prog], cfg, prompt=prompt, n_tokens=2, prefill="batched", fast=True)
    slow = run_system([prog], cfg, prompt=prompt, n_tokens=2, prefill="batched", fast=False)
    assert fast.cycles == slow.cycles
    assert fast.per_token_ms == slow.per_token_ms
    assert fast.commands == slow.commands


def test_batched_decode_with_batched_prefill_shares_one_step():
    cfg = load_config("pim-gpt")
    prog = _program("tiny", cfg)
    prompts = [prompt_ids(4, 64, b) for b in range(3)]
    tbt = run_batched(prog, cfg, prompts=prompts, n_tokens=2)
    bat = run_batched(prog, cfg, prompts=prompts, n_tokens=2, prefill="batched")
    pre = bat.extra["prefill"]
    assert pre["vectors"] == 12
    assert pre["mac_bound_ms"] <= bat.ttft_ms < tbt.ttft_ms
    assert bat.extra["batch"]["positions_last_step"] == [4, 4, 4]
    decode = bat.per_token_ms[1:]  # the batch's step time: the decode steps after the prefill
    assert bat.extra["batch"]["ms_per_step"] == pytest.approx(np.mean(decode))
    assert bat.extra["batch"]["ms_per_step"] >= bat.extra["batch"]["mac_bound_ms_per_step"]


# ------------------------------------------------------------------ functional

@pytest.mark.parametrize("hw", ["pim-gpt", "aim-gddr6"])
def test_batched_prefill_leaves_the_kv_and_tokens_of_token_by_token(hw):
    from workloads.validation import functional_executor

    cfg = load_config(hw)
    c = compile_model("tiny-counter", cfg, weights=True)
    prog = system_programs(c, cfg)[0]
    prompt = [3, 4, 5, 6, 7]
    fx_t, fx_b = functional_executor(c, cfg, False), functional_executor(c, cfg, False)
    first_t = run_system([prog], cfg, prompt=prompt, n_tokens=1, functional=fx_t)
    first_b = run_system([prog], cfg, prompt=prompt, n_tokens=1, functional=fx_b,
                         prefill="batched")
    assert first_b.tokens == first_t.tokens
    assert np.array_equal(fx_b.img.bits, fx_t.img.bits)  # the KV caches, every position
    want = run_system([prog], cfg, prompt=prompt, n_tokens=6,
                      functional=functional_executor(c, cfg, False)).tokens
    got = run_system([prog], cfg, prompt=prompt, n_tokens=6,
                     functional=functional_executor(c, cfg, False), prefill="batched").tokens
    assert got == want
    assert len(set(want)) > 1


def test_batched_prefill_of_a_batch_gives_the_tokens_of_single_runs():
    from workloads.validation import functional_executor

    cfg = load_config("pim-gpt")
    c = compile_model("tiny-counter", cfg, weights=True)
    prog = system_programs(c, cfg)[0]
    prompts = [[3, 4, 5], [10, 11, 12]]
    singles = [run_generation(prog, cfg, prompt=p, n_tokens=4,
                              functional=functional_executor(c, cfg, False)).tokens
               for p in prompts]
    rep = run_batched(prog, cfg, prompts=prompts, n_tokens=4, prefill="batched",
                      functional=[functional_executor(c, cfg, False) for _ in prompts])
    assert rep.tokens == singles


def test_batched_prefill_keeps_every_steps_logits_and_runs_tensor_parallel():
    tbt = simulate("tiny-counter", "pim-gpt", tokens=3, prompt=4, functional=True,
                   keep_logits=True)
    bat = simulate("tiny-counter", "pim-gpt", tokens=3, prompt=4, functional=True,
                   keep_logits=True, prefill="batched")
    assert bat.logits.shape == tbt.logits.shape == (6, tbt.logits.shape[1])
    assert np.array_equal(bat.logits, tbt.logits)
    kw = dict(tokens=4, prompt=6, functional=True, devices=2, tp=2)
    tp_t = simulate("tiny-counter", "pim-gpt", **kw).report
    tp_b = simulate("tiny-counter", "pim-gpt", prefill="batched", **kw).report
    assert tp_b.tokens == tp_t.tokens
    assert tp_b.extra["prefill"]["mac_bound_ms"] <= tp_b.ttft_ms < tp_t.ttft_ms
    assert tp_b.system["devices"] == 2


# ------------------------------------------------------------------ report, CLI, bad input

def test_report_labels_ttft_with_the_prefill_mode():
    for mode in PREFILL_MODES:
        rep = simulate("tiny", "pim-gpt", tokens=3, prompt=4, prefill=mode).report
        text = rep.summary()
        assert f"TTFT {rep.ttft_ms:.4f} ms (prefill {mode}: 4 prompt tokens" in text
        assert f"TPOT {rep.tpot_ms:.4f} ms" in text
    skipped = simulate("tiny", "pim-gpt", tokens=2, prompt=9, skip_prompt=True).report
    assert skipped.ttft_ms is None and skipped.prompt_skipped
    assert "prompt skipped (decode at context 9): no TTFT" in skipped.summary()


def test_run_prefill_json():
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "3",
                          "--prompt", "6", "--prefill", "batched", "--json"],
                         capture_output=True, text=True, check=True)
    rep = json.loads(out.stdout)
    assert rep["prefill"] == "batched" and rep["prompt_tokens"] == 6
    assert rep["ttft_ms"] == pytest.approx(rep["extra"]["prefill"]["prefill_step_ms"])
    assert rep["extra"]["prefill"]["vectors"] == 6
    assert rep["tpot_ms"] > 0


def test_bad_prefill_input():
    with pytest.raises(UserError, match="prefill 'chunked'"):
        simulate("tiny", "pim-gpt", tokens=2, prefill="chunked")
    with pytest.raises(UserError, match="pipeline stages"):
        simulate("tiny", "pim-gpt", tokens=2, prompt=3, devices=2, pp=2, prefill="batched")
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                          "--prefill", "chunked"], capture_output=True, text=True)
    assert out.returncode == 2 and "--prefill" in out.stderr
