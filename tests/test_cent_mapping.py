"""CENT's mapping choices as options (Chen et al., ASPLOS'25; issue 23): tensor parallelism with
every product split by rows and the attention on a master device, GQA unrolled per query head,
pipeline stages smaller than a device, and the host's sampling time. Tiny models, few tokens."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("transformers")

from compiler.passes.images import build_graph_image  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from pimsim.config import load_config  # noqa: E402
from pimsim.functional import AsicMath, FlowExecutor, SystemFlowExecutor  # noqa: E402
from pimsim.generate import run_generation  # noqa: E402
from pimsim.pipeline import run_system  # noqa: E402
from pimsim.system import resolve  # noqa: E402
from tests.hf_tiny import tiny_model  # noqa: E402
from workloads.models.hf_decode import decode_step_module  # noqa: E402


@pytest.fixture(scope="module")
def gqa():
    return tiny_model("llama-gqa")  # 8 query heads, 2 KV heads


def _cfg(devices=None, tp=None, pp=None, attention=None, name="pim-gpt"):
    cfg = load_config(name)
    return dataclasses.replace(cfg, system=resolve(devices, tp, pp, cfg.system, attention))


def _compiled(model, cfg):
    return compile_model(decode_step_module(model), cfg, name="m")


@pytest.fixture(scope="module")
def one(gqa):
    """The tiny model on one device (the reference of every option)."""
    return _compiled(gqa, _cfg())


@pytest.fixture(scope="module")
def master(gqa):
    return _compiled(gqa, _cfg(4, attention="master"))


def test_master_splits_every_product_by_rows_and_keeps_attention_on_device_0(master):
    prog = master.program
    kl, _ = prog.kv_layouts[0]
    assert (kl.n_head, kl.kv_heads) == (8, 2)  # every head on the master
    for m, (kind, rows) in prog.tp_rows.items():  # every product, q/k/v/o and the head included
        assert kind == "col", m
        n = sum(len(r) for r in rows)  # contiguous blocks of ceil(n / 4) rows, in order
        assert [r.tolist() for r in rows] == [list(range(i * -(-n // 4),
                                                         min(n, (i + 1) * -(-n // 4))))
                                              for i in range(4)], m
    n_layer, n_mat = prog.dims["n_layer"], len(prog.tp_rows)
    ops = [s.op for s in prog.steps if s.kind == "comm"]
    # one broadcast of the input and one gather of the rows per product; no all-reduce
    assert ops.count("broadcast") == ops.count("gather") == n_mat
    assert "all_reduce" not in ops and n_mat == 4 * n_layer + 1
    for s in prog.steps:  # each product waits for its input's broadcast
        if s.kind == "pim" and s.matrix:
            assert prog.steps[s.deps[0]].op == "broadcast", s.name


def test_master_tokens_equal_one_device(master, one):
    cfg, c = _cfg(4, attention="master"), master
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), cfg, math=math)
    fx = SystemFlowExecutor(c.programs, [[build_graph_image(mp, rank=r) for r in range(4)]
                                         for mp in c.stage_mappings], cfg, math=math)
    a = run_generation(one.program, _cfg(), prompt=[5, 9], n_tokens=8, functional=fx1)
    b = run_system(c.programs, cfg, prompt=[5, 9], n_tokens=8, functional=fx)
    assert b.tokens == a.tokens
    assert b.per_op["broadcast"] > 0 and b.per_op["gather"] > 0


def test_gqa_unrolled_keeps_a_kv_head_per_query_head_and_the_tokens(gqa, one):
    base = _cfg()
    cfg = dataclasses.replace(base, system=dataclasses.replace(base.system, gqa="unrolled"))
    c = _compiled(gqa, cfg)
    kl, _ = c.program.kv_layouts[0]
    assert (kl.n_head, kl.kv_heads) == (8, 8)  # native: (8, 2)
    assert one.program.kv_layouts[0][0].kv_heads == 2
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), base, math=math)
    fxu = FlowExecutor(c.program, build_graph_image(c.mapping), cfg, math=math)
    a = run_generation(one.program, base, prompt=[5, 9], n_tokens=6, functional=fx1)
    b = run_generation(c.program, cfg, prompt=[5, 9], n_tokens=6, functional=fxu)
    assert b.tokens == a.tokens
    # a copy of its KV head per query head: 4x the heads in a cache row, and in each write
    assert kl.heads_per_chunk == 4 * one.program.kv_layouts[0][0].heads_per_chunk
    assert b.commands["WR"] > a.commands["WR"]


def test_host_sampling_adds_its_time_to_every_token(gqa, one):
    base = _cfg()
    cfg = dataclasses.replace(base, system=dataclasses.replace(base.system,
                                                               host_sample_ns=150_000.0))
    a = run_generation(one.program, base, prompt=[1], n_tokens=3)
    prog = _compiled(gqa, cfg).program
    assert [s.op for s in prog.steps][-1] == "host_sample"
    b = run_generation(prog, cfg, prompt=[1], n_tokens=3)
    assert b.per_op["host_sample"] == pytest.approx(0.15, abs=cfg.tCK_ps / 1e9)
    assert b.ms_per_token == pytest.approx(a.ms_per_token + 0.15, abs=1e-3)


def test_stages_smaller_than_a_device_share_its_channels(gqa):
    from workloads.compiling import hw_config

    cfg = hw_config("pim-gpt", devices=1, pp=2)  # 2 stages on one device, half its channels each
    full = load_config("pim-gpt").org.channels
    assert (cfg.system.tp, cfg.system.pp, cfg.system.stages_per_device) == (1, 2, 2)
    assert cfg.org.channels == full // 2 and cfg.system.device_channels == full
    c = _compiled(gqa, cfg)
    assert len(c.programs) == 2 and all(p.geo.channels == full // 2 for p in c.programs)
    rep = run_system(c.programs, cfg, prompt=[1], n_tokens=2)
    assert rep.system["pp"] == 2
    # back to whole devices: the channels return
    assert hw_config(cfg, devices=2, pp=2).org.channels == full


def test_cent_options_refuse_bad_values(tmp_path):
    from pimsim.config import ConfigError
    for key, val, msg in (("attention", '"centre"', "attention = 'centre' is not known"),
                          ("gqa", '"rolled"', "gqa = 'rolled' is not known"),
                          ("host_sample_ns", "-1.0", "host_sample_ns = -1.0 must be"),
                          ("lowering", '"centre"', "lowering = 'centre' is not known"),
                          ("placement", '"sparse"', "placement = 'sparse' is not known"),
                          ("host_lines", '"chip"', "host_lines = 'chip' is not known"),
                          ("placement", '"cent"', "placement = \"cent\" pads each matrix")):
        p = tmp_path / "s.toml"
        p.write_text(f'[system]\ndevice = "pim-gpt"\ndevices = 2\n{key} = {val}\n')
        with pytest.raises(ConfigError, match=msg):
            load_config(p)
    with pytest.raises(Exception, match="'centre' is not known"):
        resolve(4, None, None, None, "centre")


# CENT's published PIM time of one block (Yufeng98/CENT@9b4165f simulation_results.csv,
# Llama2-7B, 8 devices, tp 8, "PIM latency" in ms) for its own traces (tests/data/cent)
CENT_PIM_MS = {128: 0.0189785, 4096: 0.047729}


@pytest.mark.slow  # about 5 s each: the default run is at its time budget
@pytest.mark.parametrize("seq", [128, 4096])
def test_cents_own_trace_replays_within_ten_percent_of_its_published_pim_time(seq):
    """pimsim's AiM timing on CENT's commands: the gap between CENT and pimsim with CENT's
    options is the mapping (which commands), not the DRAM/PIM timing."""
    import gzip
    from pathlib import Path

    from pimsim.dma import replay_trace
    from pimsim.trace import parse_trace

    cfg = load_config("aim-gddr6")
    f = Path(__file__).parent / "data" / "cent" / f"llama2-7b_tp8_seq{seq}.trace.gz"
    res, _ = replay_trace(cfg, parse_trace(gzip.decompress(f.read_bytes()).decode(), cfg,
                                           f.name))
    ms = res.cycles * cfg.tCK_ps / 1e9
    assert abs(ms - CENT_PIM_MS[seq]) <= 0.10 * CENT_PIM_MS[seq], (ms, CENT_PIM_MS[seq])


def test_more_stages_per_device_than_channels_is_refused():
    from pimsim.system import SystemError_
    from workloads.compiling import hw_config

    with pytest.raises(SystemError_, match="16 pipeline stages per device on 8 channels leave "
                                           "a stage no channel"):
        hw_config("pim-gpt", devices=1, pp=16)
    with pytest.raises(SystemError_, match="--tp 2 x --pp 32 = 64 devices"):
        hw_config("pim-gpt", devices=8, tp=2, pp=32)


def test_cent_options_round_trip_through_the_toml_writer():
    from pimsim.config import config_from_dict
    from workloads.compiling import hw_config
    from workloads.sweeps.spec import config_to_dict

    cfg = hw_config("examples/cent/cent-8.toml", tp=1, pp=32)
    assert (cfg.org.channels, cfg.system.stages_per_device) == (8, 4)
    back = config_from_dict(config_to_dict(cfg))
    assert back.org.channels == 8 and back.system == cfg.system
    assert (back.system.attention, back.system.host_sample_ns) == ("master", 150_000.0)
    assert back.system.lowering == "cent" and back.system.placement == "cent"
    assert back.system.host_lines == "device"
    assert back.system.interconnect.unicast_bw_factor == 0.5
    plain = config_to_dict(hw_config("aim-gddr6"))  # the defaults are not written
    assert "lowering" not in plain["system"] and "placement" not in plain["system"]
    assert "host_lines" not in plain["system"] and "attention_accumulators" not in plain["pim"]
    assert "unicast_bw_factor" not in plain["interconnect"]


def _cent(base):
    return dataclasses.replace(base, system=dataclasses.replace(base.system, lowering="cent"))


@pytest.fixture(scope="module")
def cent_master(gqa):
    return _compiled(gqa, _cent(_cfg(4, attention="master")))


def _cols(prog, pos, layer=0, ch=0):
    """{step name without the layer: {command: columns}} of a layer's PIM steps on channel
    ``ch`` of the simulated device."""
    from pimsim.spec.commands import COMMANDS

    out = {}
    for st in prog.steps:
        if st.kind == "pim" and st.layer == layer:
            cols = {}
            for cmd, _, _, n, _ in prog.pim_items(st, pos)[ch].tolist():
                cols[COMMANDS[cmd].name] = cols.get(COMMANDS[cmd].name, 0) + n
            out[st.name.split(".", 1)[1]] = cols
    return out


def test_cent_lowering_issues_cents_commands_per_block(master, cent_master):
    """The tiny Llama (d_model 64, 8 query / 2 KV heads of 16, d_ff 128) on 4 pim-gpt devices
    (8 channels x 16 banks = 128 banks each), channel 0 of the master, the token at position
    20 (21 scores a head): the counts docs/validation.md derives from CENT's trace generator
    (pimsim.cent_ops)."""
    a, b = _cols(master.program, 20), _cols(cent_master.program, 20)
    # a product per weight matrix: the input (4 columns, one fill) into the global buffer once
    # per matrix on every channel: q, k, v 3x; w1, w3 2x; the others as before
    assert a["qkv"]["WR_GB"] == 4 and b["qkv"]["WR_GB"] == 3 * 4
    assert b["ffn_up"]["WR_GB"] == 2 * a["ffn_up"]["WR_GB"]
    assert b["out_proj"]["WR_GB"] == a["out_proj"]["WR_GB"]
    assert b["ffn_down"]["WR_GB"] == a["ffn_down"]["WR_GB"]
    for k in ("qkv", "ffn_up", "out_proj", "ffn_down"):  # the same MACs; a WR_BIAS per group
        assert b[k]["MAC_AB"] == a[k]["MAC_AB"] and b[k]["WR_MAC"] == b[k]["RD_MAC"]
    # the gate's part runs AF + RD_AF per slot after its last fill (on the channels holding it)
    ch = [_cols(cent_master.program, 20, ch=c)["ffn_up"] for c in range(8)]
    assert sum(c.get("AF", 0) for c in ch) == sum(c.get("RD_AF", 0) for c in ch) > 0
    assert not any("AF" in _cols(master.program, 20, ch=c)["ffn_up"] for c in range(8))
    # RMSNorm: x into neighbouring banks (64 banks, 1 burst: 8 a channel, twice), x and the
    # norm into bank groups 0 / 1 (32 banks of 2 elements: 4 a channel, twice), 2 EWMULs of
    # one column, 4 banks copied through the global buffer, the result read (4)
    norm = {"WR": 16 + 8, "WR_MAC": 1, "MAC_AB": 1, "RD_MAC": 1, "EWMUL": 2, "RD_CP": 4,
            "WR_CP": 4, "RD": 4}
    assert b["rmsnorm.banks"] == b["rmsnorm.banks.1"] == norm
    # rotary embedding: q (4 elements a bank, 8 with sin/cos) and k (4 / n_repeat 4 x 2) into
    # bank group 1 and the results into group 2 (4 banks a channel, 1 burst each): 16 WR;
    # EWMUL over 128 / 16 columns for q and 128 / 4 / 16 for k
    assert b["rope.banks"] == {"WR": 16, "EWMUL": 8 + 2}
    # softmax, each half: 8 heads one a bank (channel 0 holds 4), 21 scores = 2 bursts, into
    # bank groups 0 and 1 (16 WR), one EWMUL of 2 columns, read back (8 RD)
    half = {"WR": 16, "EWMUL": 2, "RD": 8}
    assert b["softmax.banks"] == b["softmax.banks.1"] == half
    # SiLU and the gate: 128 elements, 4 a bank: x1, sigmoid, x3 written (12), 2 EWMULs,
    # 4 banks copied, read back (4)
    assert b["activation.banks"] == {"WR": 12, "EWMUL": 2, "RD_CP": 4, "WR_CP": 4, "RD": 4}
    assert not any(k.endswith(".banks") for k in a)  # the default issues none of them
    # the attention and the cache writes are pimsim's own either way
    for k in ("kv_write", "attn_score", "attn_value"):
        assert a[k] == b[k]


def test_cent_lowering_softmax_grows_with_the_position(cent_master):
    p = cent_master.program
    short, long_ = _cols(p, 20)["softmax.banks"], _cols(p, 100)["softmax.banks"]
    assert long_ == {"WR": 2 * 4 * 7, "EWMUL": 7, "RD": 4 * 7}  # 101 scores: 7 bursts
    assert long_["WR"] > short["WR"]


def test_cent_lowering_keeps_the_tokens_and_costs_time(gqa, cent_master, one):
    base = _cfg(4, attention="master")
    cfg = _cent(base)
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), _cfg(), math=math)
    fx = SystemFlowExecutor(cent_master.programs,
                            [[build_graph_image(mp, rank=r) for r in range(4)]
                             for mp in cent_master.stage_mappings], cfg, math=math)
    a = run_generation(one.program, _cfg(), prompt=[5, 9], n_tokens=6, functional=fx1)
    b = run_system(cent_master.programs, cfg, prompt=[5, 9], n_tokens=6, functional=fx)
    assert b.tokens == a.tokens
    plain = run_system(_compiled(gqa, base).programs, base, prompt=[5, 9], n_tokens=6)
    assert b.cycles > plain.cycles
    assert plain.commands.get("EWMUL", 0) == 0 < b.commands["EWMUL"]
    assert b.commands["WR_GB"] > plain.commands["WR_GB"]


@pytest.mark.slow  # about 8 s: the default run is at its time budget
@pytest.mark.parametrize("lowering", ["pimsim", "cent", "cent-placed"])
def test_command_by_command_executor_agrees_on_cents_options(gqa, lowering):
    base = _cfg(2, attention="master")
    cfg = dataclasses.replace(base, system=dataclasses.replace(
        base.system, host_sample_ns=1234.0, lowering=lowering.split("-")[0],
        placement="cent" if lowering.endswith("placed") else "dense"))
    c = _compiled(gqa, cfg)
    fast = run_system(c.programs, cfg, prompt=[1, 2], n_tokens=3)
    slow = run_system(c.programs, cfg, prompt=[1, 2], n_tokens=3, fast=False)
    assert slow.cycles == fast.cycles and slow.per_token_ms == fast.per_token_ms
    assert slow.breakdown == fast.breakdown and slow.commands == fast.commands


def _placed(base, placement="cent"):
    return dataclasses.replace(base, system=dataclasses.replace(
        base.system, lowering="cent", placement=placement))


def test_cent_placement_pads_every_matrix_on_every_channel_and_keeps_the_tokens(gqa, one):
    """The tiny Llama on 4 pim-gpt devices (512 banks): q (128 rows), k and v (32 each) get
    one slot each on every channel of every device (CENT's ceil(rows / 512)), where the dense
    placement deals the master's 48 rows of the pack over 3 channels; the numbers stay."""
    base = _cfg(4, attention="master")
    cfg = _placed(base)
    c = _compiled(gqa, cfg)
    qkv = c.program.matrices["L0.qkv"]
    assert qkv.cent_slots == (1, 1, 1)
    assert [qkv.slots(ch) for ch in range(8)] == [3] * 8
    dense = _compiled(gqa, _cent(base)).program.matrices["L0.qkv"]
    assert [dense.slots(ch) for ch in range(8)] == [1, 1, 1, 0, 0, 0, 0, 0]
    for ch in range(8):  # every channel MACs each of q, k, v's slots over the 4-column input
        assert _cols(c.program, 20, ch=ch)["qkv"]["MAC_AB"] == 3 * 4
    math = AsicMath.from_config(cfg, exact=True)
    fx1 = FlowExecutor(one.program, build_graph_image(one.mapping), _cfg(), math=math)
    fx = SystemFlowExecutor(c.programs, [[build_graph_image(mp, rank=r) for r in range(4)]
                                         for mp in c.stage_mappings], cfg, math=math)
    a = run_generation(one.program, _cfg(), prompt=[5, 9], n_tokens=6, functional=fx1)
    b = run_system(c.programs, cfg, prompt=[5, 9], n_tokens=6, functional=fx)
    assert b.tokens == a.tokens


# MAC columns per channel of one block's weight products in CENT's trace generator
# (Yufeng98/CENT@9b4165f, cent_simulation/TransformerBlock.py
# Vector_Matrix_Mul_weight_pim_only_trace 696-734, the af variant 736-780, called from
# Llama.py trace_only 649-653, 789, 829-830, 887): per matrix of r rows and an input of n
# elements, ceil(r / FC_total_banks) MAC_ABKs per input row on every channel, each of the
# row's columns (n / 16 in all); FC_total_banks = devices x 32 channels x 16 banks.
#   7B (8 devices, 4,096 banks): q, k, v 3 x 1 x 256; o 256; w1, w3 2 x 3 x 256; w2 688
#   13B (20 devices, 10,240 banks): q, k, v 3 x 320; o 320; w1, w3 2 x 2 x 320; w2 864
#   70B (32 devices, 16,384 banks; k and v 1,024 rows): 3 x 512; 512; 2 x 2 x 512; w2 1,792
# CENT's traces add the norms' squares (2 x 1 for 7B, 2 x 2 for 13B and 70B) and the
# attention: 3,570 MAC columns per channel for 7B at 128 tokens (tests/data/cent), 3,876 for
# 13B and 6,916 for 70B (docs/validation.md).
CENT_PRODUCT_MACS = {
    "llama2-7b": (8, 4096, 11008, 32, 32, {"qkv": 768, "out_proj": 256, "ffn_up": 1536,
                                           "ffn_down": 688}),
    "llama2-13b": (20, 5120, 13824, 40, 40, {"qkv": 960, "out_proj": 320, "ffn_up": 1280,
                                             "ffn_down": 864}),
    "llama2-70b": (32, 8192, 28672, 64, 8, {"qkv": 1536, "out_proj": 512, "ffn_up": 2048,
                                            "ffn_down": 1792}),
}


@pytest.mark.parametrize("model", sorted(CENT_PRODUCT_MACS))
def test_cent_placement_macs_per_channel_equal_cents_generator(model):
    """One block of the real Llama 2 shapes (a one-layer model on the meta device, no
    weights) on CENT's config: every channel of the master MACs exactly CENT's columns."""
    import torch
    import transformers as T

    from pimsim.spec.commands import cmd_id
    from workloads.compiling import hw_config

    devices, d, ff, heads, kv, want = CENT_PRODUCT_MACS[model]
    with torch.device("meta"):
        m = T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=d, intermediate_size=ff, num_hidden_layers=1, num_attention_heads=heads,
            num_key_value_heads=kv, vocab_size=32000, max_position_embeddings=4096))
    cfg = hw_config(f"examples/cent/cent-{devices}.toml")
    assert cfg.system.placement == "cent"
    prog = compile_model(decode_step_module(m), cfg, name=model, n_ctx=256).program
    mac = cmd_id("MAC_AB")
    got = {}
    for st in prog.steps:
        role = st.name.split(".", 1)[-1]
        if st.kind == "pim" and role in want:
            per_ch = {int(a[a[:, 0] == mac][:, 3].sum()) for a in prog.pim_items(st, 128)}
            assert len(per_ch) == 1, (role, per_ch)  # the same on every channel
            got[role] = per_ch.pop()
    assert got == want


@pytest.fixture(scope="module")
def two_stages_one_asic(gqa):
    """Two pipeline stages on one device (CENT's pipeline, half the channels each), the ASIC
    1000x slower than pim-gpt's ([assumed], for the test: its work is then 99 % of a stage's
    job)."""
    from workloads.compiling import hw_config

    cfg = hw_config("pim-gpt", devices=1, pp=2)
    cfg = dataclasses.replace(cfg, asic=dataclasses.replace(cfg.asic,
                                                            clock_mhz=cfg.asic.clock_mhz / 1000))
    own = dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, stages_per_device=1))
    return cfg, own, _compiled(gqa, cfg).programs


def _asic_spans(monkeypatch):
    """Every job's ASIC steps as (begin, end) rows, recorded as the pipeline runs them."""
    import numpy as np

    from pimsim.pipeline import DeviceAsics

    spans = []
    after = DeviceAsics.after

    def spy(self, s, tt, active):
        run = (self.sims[s].steps.kind == 0) & (tt.step_end > tt.step_start)
        spans.append(np.stack([tt.step_start[run], tt.step_end[run]], axis=1))
        return after(self, s, tt, active)

    monkeypatch.setattr(DeviceAsics, "after", spy)
    return spans


def test_stages_on_one_device_take_its_asic_in_turn(two_stages_one_asic, monkeypatch):
    import numpy as np

    from pimsim.decode import StepTable

    cfg, own, progs = two_stages_one_asic
    spans = _asic_spans(monkeypatch)
    reps = {}
    for name, c in (("shared", cfg), ("own", own)):
        spans.clear()
        reps[name] = run_system(progs, c, prompt=[1], n_tokens=3)
        b = np.concatenate(spans)
        b = b[np.argsort(b[:, 0], kind="stable")]
        overlap = int((b[1:, 0] < b[:-1, 1]).sum())  # a step begun before the previous ended
        if name == "shared":
            assert overlap == 0  # the device's one ASIC: never two steps at once
        else:
            assert overlap > 0  # an ASIC per stage: the two stages' steps overlap
    shared, mine = reps["shared"], reps["own"]
    # the device's ASIC does every ASIC step of both stages' jobs, one after another: the run
    # takes at least their sum (2 sequences x 3 positions x both stages' ASIC cycles), which
    # the stages with an ASIC each beat
    tables = [StepTable(p, cfg) for p in progs]
    asic = [[int(t.durations(pos)[t.kind == 0].sum()) for pos in range(3)] for t in tables]
    asic_cyc = sum(2 * sum(a) for a in asic)
    assert mine.cycles < asic_cyc <= shared.cycles
    assert shared.throughput_tokens_per_s < mine.throughput_tokens_per_s
    # the steady round: the ASIC's work of a round, pp x both stages' ASIC cycles (closed
    # form), to within the jobs' other work (each stage's job with an ASIC of its own, less its
    # ASIC steps), the send and the return; with an ASIC each, about half of it
    bound = 2 * sum(a[2] for a in asic)
    other = 2 * sum(j - a[2] for j, a in zip(mine.system["stage_job_cyc"], asic))
    sy = shared.system
    assert bound <= sy["round_cyc"] <= bound + other + sum(sy["stage_send_cyc"]) + \
        sy["token_return_cyc"]
    assert mine.system["round_cyc"] < 0.55 * bound
    # a stage's jobs wait for the other's ASIC steps (queueing in the latency's shares, which
    # still add up to it); with an ASIC each, no job waits inside
    sj, oj = shared.system["stage_job_cyc"], mine.system["stage_job_cyc"]
    assert sum(sj) > sum(oj)
    assert shared.breakdown["queueing"] > 0
    for r in (shared, mine):
        assert sum(r.per_op.values()) == pytest.approx(r.ms_per_token, rel=1e-9)
        assert sum(r.breakdown_cyc.values()) * cfg.tCK_ps / 1e9 == \
            pytest.approx(r.ms_per_token, rel=1e-9)
        e = r.energy
        assert sum(e["by_component"].values()) == pytest.approx(e["j_per_token"], rel=1e-9)


def test_shared_asic_is_exact_in_both_executors(two_stages_one_asic):
    cfg, _, progs = two_stages_one_asic
    a = run_system(progs, cfg, prompt=[1], n_tokens=2)
    b = run_system(progs, cfg, prompt=[1], n_tokens=2, fast=False)
    assert (b.cycles, b.per_token_ms, b.system["stage_job_cyc"]) == \
        (a.cycles, a.per_token_ms, a.system["stage_job_cyc"])
    assert run_system(progs, cfg, prompt=[1], n_tokens=2).cycles == a.cycles  # deterministic


def test_asic_gap_is_the_first_gap_that_holds_the_step():
    import numpy as np

    from pimsim.timing.token_runner import asic_gap

    busy = np.array([[10, 20], [25, 40]], np.int64)
    assert asic_gap(busy, 0, 5) == 0  # before the first: fits in [0, 10)
    assert asic_gap(busy, 8, 5) == 20  # [8, 13) meets [10, 20); [20, 25) holds it
    assert asic_gap(busy, 8, 6) == 40  # too long for [20, 25)
    assert asic_gap(busy, 30, 0) == 40  # inside a held interval: after it
    assert asic_gap(busy, 40, 100) == 40
    assert asic_gap(np.zeros((0, 2), np.int64), 7, 3) == 7


def _cent_groups(n: int, size: int) -> list[int]:
    """CENT's balanced latch groups of ``n`` slots, at most ``size`` each
    (Yufeng98/CENT@9b4165f TransformerBlock.py 715-716, 757-758)."""
    k = -(-n // size)
    s = -(-n // k)
    return [s] * (k - 1) + [n - s * (k - 1)]


def test_cents_latches_group_weight_products_and_leave_the_attention_one_at_a_time():
    """Llama2-7B's shapes, one block on one CENT device (32 channels x 16 banks = 512 banks):
    w1 and w3 hold ceil(11008 / 512) = 22 rows a bank, q 4096 / 512 = 8; the input (4096) is
    4 fills. With CENT's 32 latches (examples/cent: accumulators_per_bank = 32) each fill
    writes a group's biases, MACs them and reads them together: w3 one group of 22, w1 (the
    AF unit's half, 16) two of 11, q one of 8; with aim-gddr6's one accumulator every slot is
    a group of its own. The same WR_BIAS / RD_MAC commands either way; the attention's reads
    stay one at a time (attention_accumulators = 1)."""
    import torch
    import transformers as T

    from pimsim.spec.commands import cmd_id
    from workloads.compiling import hw_config

    with torch.device("meta"):
        m = T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
            num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
            max_position_embeddings=4096))
    cent = hw_config("examples/cent/cent-8.toml", devices=1)
    assert (cent.pim.accumulators_per_bank, cent.pim.attention_accumulators) == (32, 1)
    one, all32 = (dataclasses.replace(cent, pim=dataclasses.replace(
        cent.pim, accumulators_per_bank=k, attention_accumulators=0)) for k in (1, 32))
    banks = cent.org.channels * cent.org.banks
    fills = 4  # 4096 inputs, a fill of the 2 KB global buffer: 1024
    wr, rd = cmd_id("WR_MAC"), cmd_id("RD_MAC")
    got = {}
    for name, cfg in (("cent", cent), ("one", one), ("all32", all32)):
        prog = compile_model(decode_step_module(m), cfg, name="llama2-7b", n_ctx=256).program
        steps = {st.name.split(".", 1)[-1]: st for st in prog.steps if st.kind == "pim"}
        got[name] = {k: prog.pim_items(steps[k], 128)[0] for k in ("ffn_up", "qkv", "attn_score")}
    slots = -(-11008 // banks)
    assert slots == 22
    for name, size, af_size in (("cent", 32, 16), ("one", 1, 1)):
        up, qkv = got[name]["ffn_up"], got[name]["qkv"]
        # w1's product (AF: half the latches), each fill its groups, then w3's
        want = fills * _cent_groups(slots, af_size) + fills * _cent_groups(slots, size)
        assert up[up[:, 0] == wr][:, 3].tolist() == want
        assert up[up[:, 0] == rd][:, 3].tolist() == want
        assert up[up[:, 0] == wr][:, 3].sum() == fills * 2 * slots  # a WR_BIAS per slot
        q = _cent_groups(4096 // banks, size)
        assert qkv[qkv[:, 0] == wr][:, 3].tolist() == fills * 3 * q  # q, k, v each
    assert len(got["cent"]["ffn_up"]) < len(got["one"]["ffn_up"])
    for name in ("cent", "one"):  # q.K^T: a RD_MAC per MAC (CENT's, 798-803)
        score = got[name]["attn_score"]
        assert set(score[score[:, 0] == rd][:, 3].tolist()) == {1}
    # without the option the scores share the 32 latches: the 8 heads of a key row chunk
    # (1024 / 128) read together
    score = got["all32"]["attn_score"]
    assert set(score[score[:, 0] == rd][:, 3].tolist()) == {8}


def test_a_system_configs_pim_keys_change_its_device_and_are_checked(tmp_path):
    from pimsim.config import ConfigError, config_from_dict
    from workloads.sweeps.spec import config_to_dict

    cfg = load_config("examples/cent/cent-8.toml")
    back = config_from_dict(config_to_dict(cfg))  # the toml writer keeps them
    assert (back.pim.accumulators_per_bank, back.pim.attention_accumulators) == (32, 1)
    assert load_config("aim-gddr6").pim.accumulators_per_bank == 1  # the device as shipped
    p = tmp_path / "s.toml"
    for pim, msg in (("attention_accumulators = 2", "attention_accumulators = 2 must be"),
                     ("latches = 32", r"unknown key\(s\) \['latches'\] in \[pim\]")):
        p.write_text(f'[system]\ndevice = "aim-gddr6"\ndevices = 2\n[pim]\n{pim}\n')
        with pytest.raises(ConfigError, match=msg):
            load_config(p)


def test_device_host_lines_wait_for_every_stage_on_the_device(gqa):
    """CENT's pipeline trace (``[system] host_lines = "device"``, examples/cent): each in-bank
    step of a stage waits for the single-bank lines of every stage on the device (CENT writes
    them once per block, TransformerBlock.py 1141-1204) and the all-channel lines once; with
    "stage" only for its own. Two stages on one device: the single-bank lines twice."""
    from pimsim.decode import DecodeSimulator
    from workloads.compiling import hw_config

    cfg = hw_config("examples/cent/cent-8.toml", devices=1, pp=2)
    assert (cfg.system.host_lines, cfg.system.stages_per_device) == ("device", 2)
    own = dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, host_lines="stage"))
    prog = _compiled(gqa, cfg).programs[0]
    line = cfg.host.line_cyc
    dur, lines = {}, {}
    for name, c in (("device", cfg), ("stage", own)):
        sim = DecodeSimulator(prog, c)
        tt = sim.run_token(20)
        sb = sim.streams
        for k, s in enumerate(sb.pim_steps):
            if s.cent:
                dur[name, s.name] = int(tt.step_end[s.index] - tt.step_start[s.index])
                lines[s.name] = (int(sb.seg_host[k]), int(sb.seg_host_bank[k]))
    assert lines and all(b > 0 for _, b in lines.values())
    for step, (shared, bank) in lines.items():  # no step ends before its lines are through
        assert dur["device", step] >= line * (shared + 2 * bank)
        assert dur["stage", step] >= line * (shared + bank)
        assert dur["device", step] >= dur["stage", step]
    # the SiLU step's 256 single-bank lines, twice, outlast its channels' work (389 cycles)
    act = next(s for s in lines if s.endswith("activation.banks"))
    assert lines[act] == (10, 256)
    assert dur["device", act] > dur["stage", act] and dur["device", act] >= line * (10 + 512)
