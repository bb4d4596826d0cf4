"""Batched decode (pimsim.batch): B sequences, each at its own position, share every weight row
read.

* batch 1 is today's run: the same program text (items, element counts) on every shipped PIM
  config and both loop orders, the same cycles and energy as an unbatched ``simulate``;
* batched matrix items: every weight column MAC'd once per sequence, fills within the global
  buffer, at most ``accumulators_per_bank`` partial sums live; one activation serves several
  sequences where the buffer holds their pieces;
* step time grows with B but less than B x batch 1, never below the MAC-rate bound; the fast
  executor equals the command-by-command one on a batched step;
* every sequence has its own KV region; a batch too large names the largest that fits;
* functional: B sequences with different prompts give the tokens of B single runs;
* ``pimsim run --batch`` / ``--max-num-seqs``: the JSON keys, bad batches exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from config_edit import with_

from pimsim.batch import BatchCapacityError, BatchedProgram, max_batch, run_batched
from pimsim.config import load_config
from pimsim.errors import UserError
from pimsim.generate import prompt_ids, run_generation
from pimsim.isa import _build_matvec_items, _groups
from pimsim.spec.commands import cmd_id
from workloads.session import compile_model, simulate, system_programs

WR_GB, MAC_AB, RD_MAC = cmd_id("WR_GB"), cmd_id("MAC_AB"), cmd_id("RD_MAC")
PIM_CONFIGS = ["pim-gpt", "aim-gddr6", "hbm-pim", "aim-cxl-8"]


def _program(model: str, cfg):
    c = compile_model(model, cfg)
    return system_programs(c, cfg)[0]


# ------------------------------------------------------------------ batch 1 is today's run

@pytest.mark.parametrize("order", ["pim-gpt", "reuse"])
@pytest.mark.parametrize("hw", PIM_CONFIGS)
def test_batch1_program_text_is_todays(hw, order):
    cfg = with_(load_config(hw), pim__mapping=order)
    prog = _program("tiny", cfg)
    one = BatchedProgram(prog, 1)
    for pos in (0, 17, prog.dims["n_ctx"] - 1):
        assert one.to_text(pos).replace(f"position ({pos},)", f"position {pos}") == \
            prog.to_text(pos)
    for st in prog.steps:
        if st.matrix is not None:
            for ch in range(prog.geo.channels):
                assert st.matrix.strategy.items(st.matrix, ch, 1) == \
                    st.matrix.strategy.items(st.matrix, ch)


@pytest.mark.parametrize("model,hw", [("tiny", "pim-gpt"), ("tiny", "aim-gddr6"),
                                      ("gpt2-small", "pim-gpt"), ("gpt2-small", "aim-gddr6")])
def test_batch1_equals_todays_run_to_the_cycle(model, hw):
    base = simulate(model, hw, tokens=3, prompt=2).report
    one = simulate(model, hw, tokens=3, prompt=2, batch=1).report
    assert one.cycles == base.cycles
    assert one.per_token_ms == base.per_token_ms
    assert one.commands == base.commands
    assert one.energy["j_per_token"] == base.energy["j_per_token"]
    assert one.extra["batch"]["batch"] == 1


# ------------------------------------------------------------------ batched matrix items

def _replay(m, batch: int, gb_cols: int, acc: int) -> None:
    """Every weight column of every slot MAC'd ``batch`` times, fills within the buffer, at
    most ``acc`` partial sums live (each MAC pass of a slot holds one until RD_MAC)."""
    for ch, arr in enumerate(_build_matvec_items(m, batch)):
        n_slots = m.slots(ch)
        seen = np.zeros((max(n_slots, 1), m.n_chunks, m.chunk_cols), np.int64)
        live = 0
        for cmd, _b, row, count, col0 in arr.tolist():
            if cmd == WR_GB:
                assert count <= gb_cols
            elif cmd == MAC_AB:
                k, s = divmod(row - m.base_row[ch], n_slots)
                seen[s, k, col0:col0 + count] += 1
                live += 1
                assert live <= acc
            elif cmd == RD_MAC:
                assert 0 < count <= acc
                live = 0
        full = np.zeros_like(seen)
        for k in range(m.n_chunks):
            full[:, k, :m.cols_of_chunk(k)] = batch
        assert np.array_equal(seen[:n_slots], full[:n_slots])


@pytest.mark.parametrize("order", ["pim-gpt", "reuse"])
@pytest.mark.parametrize("gb_rows,acc", [(1, 1), (4, 4), (2, 1), (4, 8)])
def test_batched_items_mac_every_column_once_per_sequence(order, gb_rows, acc):
    cfg = with_(load_config("pim-gpt"), pim__mapping=order, pim__accumulators_per_bank=acc,
                pim__global_buffer_bytes=2048 * gb_rows)
    prog = _program("tiny", cfg)
    mats = [s.matrix for s in prog.steps if s.matrix is not None]
    for m in mats[:3] + mats[-1:]:
        for batch in (2, 3, 5):
            _replay(m, batch, m.gb_cols, acc)


def test_one_activation_serves_the_sequences_the_buffer_holds():
    """A buffer of 4 rows and 4 accumulators: a pass holds 4 sequences, each slot's row is
    MACed 4 times in a row (one activation); batch 6 is passes of 4 and 2."""
    cfg = with_(load_config("pim-gpt"), pim__accumulators_per_bank=4,
                pim__global_buffer_bytes=4 * 2048)
    prog = _program("tiny", cfg)
    m = next(s.matrix for s in prog.steps if s.matrix is not None)
    assert [len(p) for p in m.strategy.batch_passes(m, 6)] == [4, 2]
    arr = _build_matvec_items(m, 4)[0]
    macs = arr[arr[:, 0] == MAC_AB]
    runs = np.flatnonzero(np.diff(macs[:, 2]) != 0) + 1  # where the row changes
    lengths = np.diff(np.concatenate([[0], runs, [len(macs)]]))
    assert set(lengths.tolist()) == {4}
    # a row-sized buffer (the shipped configs): one sequence a pass, the passes refill
    cfg1 = load_config("pim-gpt")
    m1 = next(s.matrix for s in _program("tiny", cfg1).steps if s.matrix is not None)
    assert m1.strategy.batch_passes(m1, 3) == _groups(3, 1)


# ------------------------------------------------------------------ timing

@pytest.mark.parametrize("hw", ["pim-gpt", "aim-gddr6"])
def test_step_time_grows_less_than_batch_times_and_respects_the_mac_bound(hw):
    cfg = load_config(hw)
    prog = _program("tiny", cfg)
    vocab = prog.dims.get("vocab", 64)
    steps = {}
    for B in (1, 2, 4, 8):
        prompts = [prompt_ids(2, vocab, b) for b in range(B)]
        rep = run_batched(prog, cfg, prompts=prompts, n_tokens=3)
        b = rep.extra["batch"]
        assert b["ms_per_step"] >= b["mac_bound_ms_per_step"] > 0
        assert rep.tokens_per_s == pytest.approx(B * 1000 / b["ms_per_step"])
        steps[B] = b["ms_per_step"]
    for lo, hi in ((1, 2), (2, 4), (4, 8)):
        assert steps[lo] < steps[hi] < hi * steps[1]


def test_fast_and_command_by_command_executors_agree_on_a_batched_step():
    cfg = load_config("pim-gpt")
    prog = _program("tiny", cfg)
    prompts = [prompt_ids(2, 64, 0), prompt_ids(4, 64, 1)]  # sequences at their own positions
    fast = run_batched(prog, cfg, prompts=prompts, n_tokens=2, skip_prompt=True, fast=True)
    slow = run_batched(prog, cfg, prompts=prompts, n_tokens=2, skip_prompt=True, fast=False)
    assert fast.cycles == slow.cycles
    assert fast.per_token_ms == slow.per_token_ms
    assert fast.commands == slow.commands
    assert fast.extra["batch"]["positions_last_step"] == [2, 4]


# ------------------------------------------------------------------ KV regions and capacity

def test_each_sequence_attends_over_its_own_kv_region():
    cfg = load_config("pim-gpt")
    prog = _program("tiny", cfg)
    bp = BatchedProgram(prog, 3)
    rows = []
    for kv in bp.seq_kv:
        spans = [(kl.base_row, kl.base_row + kl.rows_reserved) for kl, _ in kv.values()] + \
            [(vl.base_row, vl.base_row + vl.rows_reserved) for _, vl in kv.values()]
        rows.append(spans)
    assert rows[0] == [(kl.base_row, kl.base_row + kl.rows_reserved) for kl, _ in
                       prog.kv_layouts] + [(vl.base_row, vl.base_row + vl.rows_reserved)
                                           for _, vl in prog.kv_layouts]
    flat = sorted(s for spans in rows for s in spans)
    assert all(a[1] <= b[0] for a, b in zip(flat, flat[1:]))  # no two regions overlap
    assert flat[-1][1] <= prog.geo.rows
    step = next(s for s in bp.steps if s.op == "attn_score")
    per = bp.pim_items(step, (0, 5, 40))
    singles = [prog.pim_items(step, p) for p in (0,)]
    assert sum(len(a) for a in per) > sum(len(a) for a in singles[0])


def test_kv_capacity_error_names_the_largest_batch():
    cfg = load_config("pim-gpt")
    prog = _program("gpt2-small", cfg)
    fits = max_batch(prog)
    assert fits >= 1
    BatchedProgram(prog, fits)
    with pytest.raises(BatchCapacityError, match=f"largest batch that fits is {fits}"):
        BatchedProgram(prog, fits + 1)
    with pytest.raises(UserError):
        BatchedProgram(prog, 0)
    with pytest.raises(UserError, match=f"largest batch that fits is {fits}"):
        simulate("gpt2-small", "pim-gpt", tokens=1, batch=fits + 1)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--max-num-seqs", "-2"],
                                  ["--batch", "100000"], ["--batch", "2", "--timeline", "t.json"]])
def test_bad_batch_exits_2(argv):
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                          *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert "batch" in out.stderr


def test_run_batch_json_has_the_batch_fields():
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "3",
                          "--max-num-seqs", "4", "--json"], capture_output=True, text=True,
                         check=True)
    rep = json.loads(out.stdout)
    assert rep["batch"] == 4
    assert rep["tokens_per_s"] == pytest.approx(4 * 1000 / rep["ms_per_step"])
    assert rep["ms_per_step"] >= rep["mac_bound_ms_per_step"] > 0
    assert "B x weight MACs" in rep["mac_bound"]
    text = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "3",
                           "--batch", "4"], capture_output=True, text=True, check=True).stdout
    assert "batch 4:" in text and "MAC-rate bound" in text


# ------------------------------------------------------------------ functional

@pytest.mark.parametrize("big_buffer", [False, True])
def test_batched_sequences_give_the_tokens_of_single_runs(big_buffer):
    """On pim-gpt every pass holds one sequence; with a buffer of 4 rows and 4 accumulators
    the three sequences share each activation and read their accumulators after every row
    chunk (the batched order's numerics): the greedy tokens stay those of single runs."""
    from workloads.validation import functional_executor

    cfg = load_config("pim-gpt")
    if big_buffer:
        cfg = with_(cfg, pim__global_buffer_bytes=4 * 2048, pim__accumulators_per_bank=4)
    c = compile_model("tiny-counter", cfg, weights=True)
    prog = system_programs(c, cfg)[0]
    prompts = [[3, 4, 5], [10, 11, 12], [20, 21, 22]]
    singles = [run_generation(prog, cfg, prompt=p, n_tokens=5,
                              functional=functional_executor(c, cfg, False)).tokens
               for p in prompts]
    fxs = [functional_executor(c, cfg, False) for _ in prompts]
    rep = run_batched(prog, cfg, prompts=prompts, n_tokens=5, functional=fxs)
    assert rep.tokens == singles
    batched_reads = [n for n, m in prog.matrices.items()
                     if m.strategy.batch_read_layout(m, 3, 0) is not m]
    assert bool(batched_reads) == big_buffer
    assert set(fxs[0].read_layouts) == set(batched_reads)
    assert len({tuple(t) for t in singles}) == 3  # the prompts lead to different tokens


def test_run_batch_list_prints_step_time_against_b():
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                          "--batch", "1,2,4", "--json"], capture_output=True, text=True,
                         check=True)
    scan = json.loads(out.stdout)
    assert [r["batch"] for r in scan["rows"]] == [1, 2, 4]
    for r in scan["rows"]:
        assert r["ms_per_step"] >= r["mac_bound_ms_per_step"] > 0
    assert scan["saturation_batch"] in (1, 2, 4)
    assert scan["peak_tokens_per_s"] <= scan["mac_bound_tokens_per_s"]
    text = subprocess.run([sys.executable, "-m", "workloads.cli", "run", "tiny", "--tokens", "2",
                           "--batch", "1,2"], capture_output=True, text=True, check=True).stdout
    assert "saturates at B =" in text and "MAC bound ms/step" in text
