"""The data-path parameters act: link.bytes_per_cyc, pim.global_buffer_bytes,
pim.accumulators_per_bank and pim.mapping.

* the link model by hand: busy cycles of a byte count, bytes of an item list, one-step programs
  bound by the link and delayed by their first fill's data, in both executors;
* the loop orders: command counts of a matrix's items counted by hand, the mapping check
  catching items that break the buffer or accumulator limits;
* numbers: the functional model with several chunks per fill, pieces of a row per fill, k
  accumulators and the reuse order still matches PyTorch on tiny-counter;
* direction: narrower link slower, bigger buffer fewer fills and accumulator reads and not
  slower, more accumulators fewer mode switches and faster (direct simulations and a sweep).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from config_edit import with_

from compiler.passes.mapping import MappingError, check_matvec_items
from compiler.pipeline import compile_model
from pimsim.config import load_config
from pimsim.decode import DecodeSimulator
from pimsim.generate import run_generation
from pimsim.isa import Geometry, MatrixLayout, Program, Step
from pimsim.link import link_busy_cyc, link_latency_cyc, transfer_bytes
from pimsim.spec.commands import cmd_id
from workloads.models.resolve import resolve_model
from workloads.session import validate

ROOT = Path(__file__).resolve().parent.parent
WR_GB, MAC_AB, RD_MAC, RD, WR, ACT = (cmd_id(n) for n in
                                      ("WR_GB", "MAC_AB", "RD_MAC", "RD", "WR", "ACT"))


# ---------------------------------------------------------------- the link by hand

def test_link_busy_cycles_are_whole_link_cycles_in_dram_cycles():
    cfg = with_(load_config("pim-gpt"), link__bytes_per_cyc=8)  # 1 GHz link, tCK 500 ps
    assert link_busy_cyc(cfg, 0) == 0
    assert link_busy_cyc(cfg, 100) == 13 * 2  # ceil(100 / 8) = 13 link cycles of 2 tCK
    assert link_busy_cyc(cfg, 2048) == 256 * 2
    assert link_latency_cyc(cfg) == 8 * 2
    g = load_config("gddr6")  # 28 B per 1 ns link cycle, tCK 570 ps
    assert link_busy_cyc(g, 64) == 6  # 3 link cycles = 3000 ps = 5.26 tCK -> 6
    assert link_busy_cyc(g, 28 * 57) == 100  # 57 ns = exactly 100 tCK: no rounding up


def test_transfer_bytes_count_every_column_crossing_the_link():
    items = np.array([[WR_GB, -1, -1, 64, 0], [MAC_AB, -1, 5, 64, 0], [RD_MAC, -1, -1, 3, 0],
                      [ACT, 2, 7, 1, 0], [RD, 2, 7, 5, 0], [WR, 1, 9, 1, 3]], np.int64)
    assert transfer_bytes(items, 32) == (64 + 3 + 5 + 1) * 32
    assert transfer_bytes(items[:0], 32) == 0


class _OneStep(Program):
    """A program of PIM steps with hand-written items (channel 0 only)."""

    def __init__(self, geo, per_step):
        super().__init__("hand", "hand", geo, {"n_ctx": 8})
        self.per_step = per_step
        for i in range(len(per_step)):
            self.steps.append(Step(i, f"s{i}", "param_fetch", -1, "pim", (i - 1,) if i else ()))

    def pim_items(self, step, pos):
        out = [np.empty((0, 5), np.int64) for _ in range(self.geo.channels)]
        out[0] = np.array(self.per_step[step.index], np.int64).reshape(-1, 5)
        return out


@pytest.mark.parametrize("fast", [True, False])
def test_a_step_ends_when_its_link_has_moved_its_bytes(fast):
    base = load_config("pim-gpt", refresh=False)
    geo = map_geo(base)
    # 64 RD columns of one open row = 2048 B back to the ASIC; at 4 B per link cycle: 512 link
    # cycles = 1024 tCK, far longer than the channel's ACT + 64 reads; + latency 8 link cycles
    # = 16 tCK. Reads are outputs: the channel starts at once
    prog = _OneStep(geo, [[(RD, 0, 5, 64, 0)], [(RD, 0, 5, 32, 0)]])
    narrow = DecodeSimulator(prog, with_(base, link__bytes_per_cyc=4), fast=fast)
    tt = narrow.run_token(0)
    assert tt.step_end[0] == 1024 + 16
    assert tt.step_end[1] == 1040 + 512 + 16  # the second step starts after the first
    assert list(tt.step_link) == [1024, 512]
    wide = DecodeSimulator(prog, base, fast=fast).run_token(0)
    assert wide.step_end[0] < 1024  # 32 B per link cycle: the channel's commands bind
    assert wide.step_link[0] == 128


@pytest.mark.parametrize("fast", [True, False])
def test_a_fill_waits_for_its_data_beyond_the_bus_time(fast):
    """A step that starts with a 64-column global-buffer fill: at 4 B per link cycle its data
    takes 1024 tCK to arrive, the channel's own bus would take 64 x nBL = 128 of them, so the
    channel's whole part shifts by 896 cycles against a 32 B link (where the link is exactly
    as fast as the bus and delays nothing); the result read streams behind."""
    base = load_config("pim-gpt", refresh=False)
    prog = _OneStep(map_geo(base), [[(WR_GB, -1, -1, 64, 0), (MAC_AB, -1, 3, 64, 0),
                                     (RD_MAC, -1, -1, 1, 0)]])
    narrow = DecodeSimulator(prog, with_(base, link__bytes_per_cyc=4), fast=fast).run_token(0)
    wide = DecodeSimulator(prog, base, fast=fast).run_token(0)
    assert narrow.step_link[0] == (2048 + 32) // 4 * 2  # the fill and the accumulator read
    # the channel still binds once shifted (mode switches, ACT, 64 MACs after the fill)
    assert wide.step_end[0] - 16 + (1024 - 128) > narrow.step_link[0]
    assert narrow.step_end[0] - wide.step_end[0] == 1024 - 64 * 2


def map_geo(cfg):
    from compiler.passes.mapping import geometry

    return geometry(cfg)


# ---------------------------------------------------------------- loop orders

def _matrix(order="pim-gpt", fill_cols=0, acc=1, out_dim=16 * 2 * 5, in_dim=100):
    # 2 channels x 16 banks, rows of 32 elements (2 columns): 5 slots per channel, 4 chunks
    g = Geometry(2, 16, 1024, 32, 16, 2)
    return MatrixLayout("m", "ffn_up", out_dim, in_dim, 32, (0, 0), g, fill_cols, acc, order)


def _counts(m, ch=0):
    from pimsim.isa import _build_matvec_items

    a = _build_matvec_items(m)[ch]
    fills = int((a[:, 0] == WR_GB).sum())
    reads = int(a[a[:, 0] == RD_MAC, 3].sum())
    batches = int((a[:, 0] == RD_MAC).sum())
    return fills, reads, batches, int(a[a[:, 0] == MAC_AB, 3].sum())


@pytest.mark.parametrize("order,fill_cols,acc,want", [
    # (WR_GB items, RD_MAC reads, RD_MAC batches, MAC columns) for 5 slots x 4 chunks (2+2+2+1
    # columns): PIM-GPT, one chunk per fill: 4 fills, 5 reads each
    ("pim-gpt", 0, 1, (4, 20, 20, 35)),
    ("pim-gpt", 4, 1, (2, 10, 10, 35)),  # two chunks per fill: half the fills and reads
    ("pim-gpt", 1, 1, (7, 35, 35, 35)),  # one column per fill: a fill per piece of a row
    ("pim-gpt", 0, 2, (4, 20, 12, 35)),  # 2 accumulators: reads in batches of 2, 2, 1
    ("reuse", 0, 2, (12, 5, 3, 35)),  # 3 slot groups x 4 fills; one read per slot
    ("reuse", 8, 5, (1, 5, 1, 35)),  # the input fits one fill: written once
    ("reuse", 8, 2, (1, 5, 3, 35)),  # ... and kept for every slot group
])
def test_loop_order_command_counts(order, fill_cols, acc, want):
    m = _matrix(order, fill_cols, acc)
    assert _counts(m) == want
    check_matvec_items(m, fill_cols or 2, acc)
    assert m.n_reads == (want[1] // 5)


def test_mapping_check_catches_items_beyond_the_buffers():
    m = _matrix("pim-gpt", 4, 2)
    with pytest.raises(MappingError, match="global buffer holds 2"):
        check_matvec_items(m, 2, 2)  # its fills are 4 columns
    with pytest.raises(MappingError, match="accumulate at once"):
        check_matvec_items(m, 4, 1)  # it keeps 2 slots' sums side by side


def test_buffer_smaller_than_one_head_is_refused_naming_the_fix():
    src = resolve_model("tiny-wide", weights=False)[0]  # d_head 48: 96 bytes of q per head
    cfg = with_(load_config("pim-gpt"), pim__global_buffer_bytes=64)
    with pytest.raises(MappingError, match="set global_buffer_bytes to at least 96"):
        compile_model(src, cfg)


# ---------------------------------------------------------------- numbers against PyTorch

def _small_rows_config(tmp_path, **pim) -> str:
    """pim-gpt with rows of 32 elements (tiny's matrices need several chunks), written to TOML."""
    text = (ROOT / "hwconfigs" / "pim-gpt.toml").read_text()
    text = text.replace("columns = 64 ", "columns = 2 ")
    for k, v in pim.items():
        lines = [ln for ln in text.splitlines() if ln.startswith(f"{k} =")]
        assert lines, k
        text = text.replace(lines[0], f"{k} = {v!r}".replace("'", '"'))
    path = tmp_path / f"rows32_{'_'.join(f'{k}{v}' for k, v in pim.items())}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("pim", [
    {"global_buffer_bytes": 128, "accumulators_per_bank": 3},  # 2 chunks per fill
    {"global_buffer_bytes": 32, "accumulators_per_bank": 2},  # half a row per fill
    {"global_buffer_bytes": 192, "accumulators_per_bank": 4, "mapping": "reuse"},
])
def test_functional_orders_match_pytorch(tmp_path, pim):
    hw = _small_rows_config(tmp_path, **pim)
    m = validate("tiny-counter", hw, 8, reference="cpu", exact=True).to_dict()
    assert m["passed"], m
    assert m["greedy_tokens_match"]
    assert m["min_cosine"] > 0.9999


def test_reuse_order_changes_the_numbers_it_should():
    """One accumulator read per neuron (reuse) rounds once instead of once per chunk: the
    logits differ from the PIM-GPT order's in the last bits, both close to PyTorch."""
    from pimsim.functional import FunctionalExecutor, MemoryImage  # noqa: F401
    from workloads.validation import functional_executor

    outs = []
    for order in ("pim-gpt", "reuse"):
        cfg = with_(load_config("pim-gpt"), org__columns=2, pim__mapping=order,
                    pim__accumulators_per_bank=4, pim__global_buffer_bytes=64)
        c = compile_model(resolve_model("tiny", weights=True, seed=0)[0], cfg, name="tiny")
        fx = functional_executor(c, cfg, True)
        outs.append(fx.step(3, 0))
    assert not np.array_equal(outs[0], outs[1])
    assert np.max(np.abs(outs[0] - outs[1])) < 0.05


# ---------------------------------------------------------------- direction

def _run(cfg, model="tiny", tokens=3):
    c = compile_model(resolve_model(model, weights=False)[0], cfg, name=model)
    rep = run_generation(c.program, cfg, prompt=[0], n_tokens=tokens)
    n_fill = sum(int((a[:, 0] == WR_GB).sum()) for st in c.program.steps if st.kind == "pim"
                 for a in c.program.pim_items(st, 0))
    return rep, n_fill


def test_narrower_link_is_slower():
    base = load_config("pim-gpt", refresh=False)
    cyc = [_run(with_(base, link__bytes_per_cyc=b))[0].cycles for b in (64, 32, 4, 2, 1)]
    assert cyc[0] == cyc[1]  # wider than the DRAM data bus: the bus binds
    assert cyc[1] < cyc[2] < cyc[3] < cyc[4]


def test_bigger_buffer_fills_less_and_is_not_slower():
    base = with_(load_config("pim-gpt", refresh=False), org__columns=2)
    runs = [_run(with_(base, pim__global_buffer_bytes=b)) for b in (64, 128, 512)]
    fills = [n for _, n in runs]
    reads = [r.commands["RD_MAC"] for r, _ in runs]
    cyc = [r.cycles for r, _ in runs]
    assert fills[0] > fills[1] > fills[2]
    assert reads[0] > reads[1] > reads[2]
    assert cyc[0] >= cyc[1] >= cyc[2]


def test_more_accumulators_switch_modes_less_and_run_faster_on_aim():
    base = with_(load_config("aim-gddr6", refresh=False), org__channels=2,
                 org__channel_mask=0x3)  # 2 channels: several slots per matrix for tiny
    runs = [_run(with_(base, pim__accumulators_per_bank=k))[0] for k in (1, 4, 16)]
    tmod = [r.commands["TMOD"] for r in runs]
    assert tmod[0] > tmod[1] > tmod[2]
    assert runs[0].cycles > runs[1].cycles > runs[2].cycles
    assert [r.commands["RD_MAC"] for r in runs] == [runs[0].commands["RD_MAC"]] * 3


def test_sweep_over_each_parameter_reports_a_ratio(tmp_path):
    import workloads.sweeps as S

    spec = S.spec_from_dict({
        "name": "params", "hw": "pim-gpt", "model": "tiny", "tokens": 2,
        "grid": {"accumulators_per_bank": [1, 4], "link_bytes_per_cyc": [32, 2]},
    })
    res = S.run_sweep(spec, tmp_path / "p.db", workers=0, progress=False, log=lambda s: None)
    assert res.counts["ok"] == 4
    ratios = {s["param"]: s["latency_ratio"] for s in res.scaling}
    assert ratios["accumulators_per_bank"] > 1.0  # 1 -> 4: faster
    assert ratios["link_bytes_per_cyc"] != 1.0


# ---------------------------------------------------------------- executors and the checker

ORDERED = {
    "k4_two_chunks": dict(org__columns=2, pim__global_buffer_bytes=128,
                          pim__accumulators_per_bank=4),
    "reuse_k3_half_rows": dict(org__columns=2, pim__global_buffer_bytes=32,
                               pim__accumulators_per_bank=3, pim__mapping="reuse"),
    "narrow_link_k2": dict(link__bytes_per_cyc=2, pim__accumulators_per_bank=2),
}


@pytest.mark.parametrize("which", list(ORDERED))
@pytest.mark.parametrize("schedule", ["serial", "overlap"])
def test_new_orders_fast_path_equals_command_by_command_and_passes_the_checker(which, schedule):
    from pimsim.check import check_command_log

    cfg = with_(load_config("pim-gpt"), **ORDERED[which])
    prog = compile_model(resolve_model("tiny", weights=False)[0], cfg, name="tiny").program
    fast = DecodeSimulator(prog, cfg, schedule=schedule, fast=True)
    slow = DecodeSimulator(prog, cfg, schedule=schedule, fast=False, log=True)
    for pos in range(0, 40, 3):
        a, b = fast.run_token(pos), slow.run_token(pos)
        assert a.end_cyc == b.end_cyc, pos
        assert np.array_equal(a.step_end, b.step_end)
        assert np.array_equal(a.step_counts, b.step_counts)
        assert np.array_equal(a.step_link, b.step_link)
    assert np.array_equal(fast.states.counts, slow.states.counts)
    v = check_command_log(slow.command_log(), cfg)
    assert v.total == 0, str(v[:5])


def test_example_sweep_varies_one_parameter_at_a_time():
    import workloads.sweeps as S

    spec = S.load_spec(ROOT / "examples" / "sweep_buffers.toml")
    rows = [(p.params["link_bytes_per_cyc"], p.params["global_buffer_bytes"],
             p.params["accumulators_per_bank"], p.params["mapping"]) for p in spec.points]
    base = (32, 2048, 1, "pim-gpt")
    assert rows[0] == base
    for r in rows[1:]:
        assert sum(a != b for a, b in zip(r, base)) == 1 or r[2:] == (16, "reuse")
