"""AiM trace emission (``pimsim.aim_emit``, ``pimsim compile --aim-trace``).

* round trip: the emitted trace, parsed back, carries exactly the program's per-channel command
  streams (column by column, and unit by unit);
* property: replaying the emitted decode step (``pimsim trace``) takes the PIM time the decode
  simulation (``pimsim run``) gives that token, never less and at most 1 % more plus 3 cycles
  per step (the host DMA adds its line cycles and barriers, SYNC 2 cycles a step);
* reference: the AiM simulator's cycles for the gpt2-small decode step at position 511
  (``tests/aim_reference/expected.json``, ``decode_steps``), pimsim within 1 %.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from compiler.pipeline import compile_model
from pimsim.aim_emit import (
    EmitError,
    aim_trace_text,
    check_aim_config,
    decode_pim_cycles,
    to_units,
    unit_streams,
)
from pimsim.config import load_config
from pimsim.dma import replay_trace
from pimsim.spec.commands import cmd_id
from pimsim.timing import SYNC
from pimsim.trace import parse_trace
from workloads.cli import main
from workloads.models.resolve import resolve_model

HERE = Path(__file__).parent / "aim_reference"
EXPECTED = json.loads((HERE / "expected.json").read_text())
CFG = load_config("aim-gddr6", refresh=False)


@lru_cache(maxsize=None)
def compiled(name: str, hw: str = "aim-gddr6"):
    src, nm = resolve_model(name, weights=False)
    return compile_model(src, load_config(hw, refresh=False), name=nm)


def _columns(stream: np.ndarray) -> np.ndarray:
    """A stream as one row per column command (cmd, bank, row), SYNC rows kept."""
    return np.repeat(stream[:, :3], np.where(stream[:, 0] == SYNC, 1, stream[:, 3]), axis=0)


def _program_columns(prog, pos: int) -> dict[int, np.ndarray]:
    """The program's own streams (``Program.streams``), column by column."""
    return {c: _columns(s) for c, s in prog.streams(pos).items()}


@pytest.mark.parametrize("name,pos", [("tiny", 0), ("tiny", 37), ("tiny-wide", 63)])
def test_parsed_trace_streams_equal_the_program_streams(name, pos):
    prog = compiled(name).program
    trace = parse_trace(aim_trace_text(prog, CFG, pos), CFG)
    want = _program_columns(prog, pos)
    units = unit_streams(prog, CFG, pos)
    assert sorted(trace.streams) == sorted(want)
    for ch, s in trace.streams.items():
        assert np.array_equal(_columns(s), want[ch]), f"channel {ch}"
        assert np.array_equal(s, units[ch]), f"channel {ch}"
    assert trace.n_syncs == sum(st.kind == "pim" for st in prog.steps)


def test_gpt2_small_streams_round_trip_and_channels_share_lines():
    prog = compiled("gpt2-small").program
    text = aim_trace_text(prog, CFG, 511)
    trace = parse_trace(text, CFG)
    want = _program_columns(prog, 511)
    for ch, s in trace.streams.items():
        assert np.array_equal(_columns(s), want[ch]), f"channel {ch}"
    # a balanced matrix step is one line per instruction for all 32 channels
    n_isr = sum(ln.startswith("AiM ") for ln in text.splitlines())
    n_items = sum(a.shape[0] for st in prog.steps if st.kind == "pim"
                  for a in prog.pim_items(st, 511))
    assert n_isr < n_items / 5  # 32 channels, about 10 items per line


@pytest.mark.parametrize("name,pos", [("tiny", 0), ("tiny", 50), ("gpt2-small", 0),
                                      ("gpt2-small", 511), ("gpt2-small", 1023)])
def test_trace_replay_takes_the_decode_simulations_pim_time(name, pos):
    prog = compiled(name).program
    res, _ = replay_trace(CFG, parse_trace(aim_trace_text(prog, CFG, pos), CFG))
    want = decode_pim_cycles(prog, CFG, pos)
    assert want <= res.cycles <= _bound(prog, want), (
        f"trace {res.cycles:,} vs decode {want:,} cycles ({100 * (res.cycles / want - 1):+.2f} %)")


def _bound(prog, decode_cyc: int) -> float:
    """1 %, plus the SYNC barrier's cycles per step (the DMA's callback and its next line: 2,
    and 1 of slack), which the decode simulation does not pay between its steps."""
    return 1.01 * decode_cyc + 3 * sum(st.kind == "pim" for st in prog.steps)


def _pim_only(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines()
                     if not ln.startswith(("AiM RD_SBK", "AiM WR_SBK"))) + "\n"


STEP = EXPECTED["decode_steps"]["gpt2-small"]


def _reference_trace(name: str) -> str:
    """The emitted step the stored AiM cycles belong to (the digest says it is the same)."""
    ref = EXPECTED["decode_steps"][name]
    text = aim_trace_text(compiled(name).program, CFG, ref["pos"])
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == ref["trace_sha256"], (
        f"the emitted {name} trace changed (mapping or emitter): replay it with the AiM "
        f"simulator (tests/aim_reference/README.md) and update expected.json decode_steps")
    return text


def test_decode_step_reference_records_its_source():
    assert EXPECTED["reference"] == "arkhadem/aim_simulator" and STEP["commit"] == "0f28a07"
    assert STEP["hw"] == "aim-gddr6" and STEP["pos"] == 511


def test_decode_step_pim_work_within_one_percent_of_aim():
    """The step without its conventional reads and writes (parameter fetches, KV writes)."""
    tr = parse_trace(_pim_only(_reference_trace("gpt2-small")), CFG)
    cyc = replay_trace(CFG, tr)[0].cycles
    aim = STEP["pim_only_cycles"]
    assert abs(cyc - aim) <= 0.01 * aim, f"pimsim {cyc:,} vs AiM {aim:,}"


def test_decode_step_within_one_percent_of_aim():
    """The whole step: PIM work, parameter fetches and KV writes (FR-FCFS controller)."""
    tr = parse_trace(_reference_trace("gpt2-small"), CFG)
    cyc = replay_trace(CFG, tr)[0].cycles
    aim = STEP["cycles"]
    assert abs(cyc - aim) <= 0.01 * aim, f"pimsim {cyc:,} vs AiM {aim:,}"


@pytest.mark.slow
def test_gpt2_xl_decode_step_trace_and_reference():
    prog = compiled("gpt2-xl").program
    ref = EXPECTED["decode_steps"]["gpt2-xl"]
    text = _reference_trace("gpt2-xl")
    res, _ = replay_trace(CFG, parse_trace(text, CFG))
    want = decode_pim_cycles(prog, CFG, ref["pos"])
    assert want <= res.cycles <= _bound(prog, want)
    cyc = replay_trace(CFG, parse_trace(_pim_only(text), CFG))[0].cycles
    assert abs(cyc - ref["pim_only_cycles"]) <= 0.01 * ref["pim_only_cycles"]
    assert abs(res.cycles - ref["cycles"]) <= 0.01 * ref["cycles"], (
        f"pimsim {res.cycles:,} vs AiM {ref['cycles']:,}")


# ------------------------------------------------------------------ units, configs, CLI
def test_units_split_at_the_opsize_limit_and_repeat_isrs_without_one():
    items = np.array([[cmd_id("WR_GB"), -1, -1, 100, 0],
                      [cmd_id("MAC_AB"), -1, 7, 48, 16],
                      [cmd_id("RD"), 3, 9, 3, 5]], np.int64)
    u = to_units(items, 64)
    assert u.tolist() == [[cmd_id("WR_GB"), -1, -1, 64], [cmd_id("WR_GB"), -1, -1, 36],
                          [cmd_id("MAC_AB"), -1, 7, 48]] + [[cmd_id("RD"), 3, 9, 1]] * 3
    assert to_units(items, 64, piece=16)[:, 3].tolist() == [16] * 6 + [4] + [16] * 3 + [1] * 3


def test_a_command_without_an_isr_is_refused():
    with pytest.raises(EmitError, match="ACT have no AiM ISR form"):
        to_units(np.array([[cmd_id("ACT"), 0, 1, 1, 0]]), 64)


@pytest.mark.parametrize("hw", ["gddr6", "hbm-pim"])
def test_configs_that_are_not_aim_style_are_refused(hw):
    with pytest.raises(EmitError, match="not an AiM-style PIM device"):
        check_aim_config(load_config(hw))


def test_the_trace_of_a_pim_gpt_program_replays_on_pim_gpt():
    cfg = load_config("pim-gpt", refresh=False)
    prog = compiled("tiny", "pim-gpt").program
    text = aim_trace_text(prog, cfg, 3)
    assert "0xff000000" in text  # channels 0..7: mask bits 31..24
    res, _ = replay_trace(cfg, parse_trace(text, cfg))
    want = decode_pim_cycles(prog, cfg, 3)
    assert want <= res.cycles <= _bound(prog, want)


def test_compile_writes_a_trace_that_pimsim_trace_replays(tmp_path, capsys):
    f = tmp_path / "sub" / "tiny.trace"
    f.parent.mkdir()  # an output's folder must exist (the command line creates none)
    assert main(["compile", "tiny", "--hw", "aim-gddr6", "--aim-trace", str(f), "--pos", "9",
                 "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "position 9" in out and str(f) in out
    assert f.read_text() == aim_trace_text(compiled("tiny").program, CFG, 9)
    assert main(["trace", str(f), "--hw", "aim-gddr6", "--no-refresh", "--json"]) == 0
    cyc = json.loads(capsys.readouterr().out)["cycles"]
    assert cyc == replay_trace(CFG, parse_trace(f.read_text(), CFG))[0].cycles


def test_compile_trace_default_position_is_mid_context(tmp_path, capsys):
    f = tmp_path / "t.trace"
    assert main(["compile", "tiny", "--hw", "aim-gddr6", "--aim-trace", str(f)]) == 0
    n_ctx = compiled("tiny").spec.n_ctx
    assert f"position {min(n_ctx - 1, 511)}" in capsys.readouterr().out


@pytest.mark.parametrize("argv,expect", [
    (["--hw", "gddr6"], "not an AiM-style PIM device"),
    (["--hw", "hbm-pim"], "not an AiM-style PIM device"),
    (["--pos", "64"], r"--pos 64 is outside tiny's context 0\.\.63"),
    (["--aim-trace", "/proc/no/such/dir/t.trace"], r"--aim-trace.*cannot be"),
])
def test_compile_trace_bad_values_exit_2(argv, expect, tmp_path, capsys):
    args = ["compile", "tiny", "--aim-trace", str(tmp_path / "t.trace"), "--hw", "aim-gddr6"]
    args += argv
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(expect, err), err


@pytest.mark.parametrize("name,pos", [("tiny", 20), ("gpt2-small", 511)])
def test_replay_regrouping_channels_at_barriers_is_exact(name, pos):
    """Channels whose states are equivalent again after a SYNC are simulated as one (the replay
    of an emitted step does so at every step): the same result as every channel on its own."""
    tr = parse_trace(aim_trace_text(compiled(name).program, CFG, pos), CFG)
    grouped, _ = replay_trace(CFG, tr)
    alone, _ = replay_trace(CFG, tr, group=False)
    assert grouped.cycles == alone.cycles
    for a, b in zip(grouped.channels, alone.channels):
        assert a.timer.command_counts() == b.timer.command_counts()
        assert (a.timer.done_cyc, a.timer.row_hits, a.timer.row_misses) == \
            (b.timer.done_cyc, b.timer.row_hits, b.timer.row_misses)
        assert a.timer.open_cyc(grouped.cycles) == b.timer.open_cyc(alone.cycles)


def test_af_wr_abk_and_unequal_channels_round_trip():
    """Commands the decode program does not use yet: AF selects its function with W CFR 2,
    WR_ABK gets one line per channel (AiM: a single-channel mask)."""
    from pimsim.aim_emit import _Estimator, step_lines
    from pimsim.spec.commands import AF_PSEUDO_ROW

    mac, af, rdaf, wrab = (cmd_id(n) for n in ("MAC_AB", "AF", "RD_AF", "WR_AB"))
    per = [np.zeros((0, 5), np.int64) for _ in range(32)]
    per[0] = np.array([[mac, -1, 1, 8, 0], [af, -1, AF_PSEUDO_ROW + 2, 1, 0],
                       [rdaf, -1, -1, 1, 0]], np.int64)
    per[1] = per[0].copy()
    per[5] = np.array([[wrab, -1, 5, 2, 0], [mac, -1, 3, 70, 0]], np.int64)
    chans = list(range(32))
    lines = step_lines(per, chans, CFG, _Estimator(CFG, 32))
    assert "W CFR 2 2" in lines and lines.count("AiM WR_ABK 0 0x04000000 5") == 2
    tr = parse_trace("\n".join(lines) + "\nAiM SYNC\nAiM EOC\n", CFG)
    for c in chans:
        want = np.repeat(per[c][:, :3], per[c][:, 3], axis=0)
        got = _columns(tr.streams[c])[:-1]
        assert np.array_equal(got, want), c


def test_round_order_fallback_keeps_every_channels_order():
    from pimsim.aim_emit import _keeps_order, _round_order

    mac, rd = cmd_id("MAC_AB"), cmd_id("RD_MAC")
    a = to_units(np.array([[mac, -1, r, 16, 0] if k == 0 else [rd, -1, -1, 1, 0]
                           for r in range(5) for k in range(2)]), 64)
    b = to_units(np.array([[cmd_id("WR_GB"), -1, -1, 64, 0], [mac, -1, 9, 64, 0],
                           [rd, -1, -1, 1, 0]]), 64)
    cu = {0: a, 1: b}
    order = _round_order(cu)
    assert _keeps_order(order, cu)
    assert not _keeps_order(order[::-1], cu)
    assert order[3] == (tuple(a[1].tolist()), [0, 1])  # the first round's reads share a line
