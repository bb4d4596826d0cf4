"""An xPU beside PIM devices (workloads.xpu, serve --xpu): placements, the link, overlap, on the
tiny model on pim-gpt."""

from __future__ import annotations

import json

import pytest

from pimsim.attention import attention_program, kv_only_program
from pimsim.batch import step_cost
from pimsim.errors import UserError
from workloads import session
from workloads.cli import main
from workloads.gpu.model import decode_flops, predict_step
from workloads.serving import GpuModelCost, PimBatchedCost
from workloads.xpu.cost import Task, XpuPimCost, schedule
from workloads.xpu.link import LINKS, xpu_link

DECODE, CHUNKS = [5, 10, 20, 30], [(0, 8)]


@pytest.fixture(scope="module")
def tiny():
    cfg = session.hw_config("pim-gpt")
    return session.compile_model("tiny", cfg), cfg


def test_all_xpu_is_the_gpu_model(tiny):
    c, cfg = tiny
    x = XpuPimCost(c, cfg, "tiny", xpu="H100", placement="xpu")
    g = GpuModelCost("H100", "tiny")
    for d, ch in ((DECODE, CHUNKS), ([3], []), ([], [(0, 16)])):
        a, b = x.step(d, ch), g.step(d, ch)
        assert (a.time_s, a.energy_j) == (b.time_s, b.energy_j)
    assert x.kv_capacity_tokens == g.kv_capacity_tokens


def test_a_measured_batched_file_is_an_xpu(tiny, tmp_path):
    """--xpu / --gpu FILE.json: the preset of the GPU the file names, fitted to the file; the
    shipped H100 file gives the H100 preset's numbers (that preset is fitted to it), another
    file other numbers; a file that is not a batched measurement is a clear error."""
    import os

    from workloads.gpu.calibration import DATA_DIR, batched_measured_path

    c, cfg = tiny
    path = batched_measured_path("H100")
    assert path is not None and path.startswith(DATA_DIR)
    by_file = XpuPimCost(c, cfg, "tiny", xpu=path, placement="attention")
    by_name = XpuPimCost(c, cfg, "tiny", xpu="H100", placement="attention")
    a, b = by_file.step(DECODE, CHUNKS), by_name.step(DECODE, CHUNKS)
    assert (a.time_s, a.energy_j) == (b.time_s, b.energy_j)
    assert os.path.basename(path) in by_file.gpu.label
    doc = json.load(open(path))
    doc["results"] = [dict(r, ms_per_step=2 * r["ms_per_step"]) for r in doc["results"]]
    slow = tmp_path / "slow_h100.json"
    slow.write_text(json.dumps(doc))
    g = GpuModelCost(str(slow), "llama2-7b")  # the file's Llama (gated) path
    assert g.step(DECODE, CHUNKS).time_s > 1.5 * GpuModelCost("H100", "llama2-7b").step(
        DECODE, CHUNKS).time_s
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for p in (bad, tmp_path / "missing.json"):
        with pytest.raises(UserError, match="batched measurement"):
            GpuModelCost(str(p), "tiny")


def test_all_pim_is_the_pim_cost(tiny):
    c, cfg = tiny
    x = XpuPimCost(c, cfg, "tiny", placement="pim")
    p = PimBatchedCost(c, cfg)
    a, b = x.step(DECODE, CHUNKS), p.step(DECODE, CHUNKS)
    assert (a.time_s, a.energy_j, a.cycles) == (b.time_s, b.energy_j, b.cycles)
    assert x.kv_capacity_tokens == p.kv_capacity_tokens


def test_serve_all_pim_and_all_xpu_equal_todays_serve(tiny):
    kw = dict(num_prompts=6, input_len=8, output_len=6)
    m_pim = session.serve("tiny", "pim-gpt", **kw).metrics
    m_x = session.serve("tiny", "pim-gpt", xpu="H100", placement="pim", **kw).metrics
    m_gpu = session.serve("tiny", "pim-gpt", cost="gpu:H100", **kw).metrics
    m_xg = session.serve("tiny", "pim-gpt", xpu="H100", placement="xpu", **kw).metrics
    for k in ("duration", "mean_ttft_ms", "mean_tpot_ms", "energy_per_output_token_mj"):
        assert m_x[k] == m_pim[k], k
        assert m_xg[k] == m_gpu[k], k


def test_offloaded_attention_splits_into_xpu_pim_and_link_steps(tiny):
    c, cfg = tiny
    x = XpuPimCost(c, cfg, "tiny", xpu="H100", link="pcie5", placement="attention")
    st = x.step(DECODE, CHUNKS)
    # the xPU: FC layers of the decode tokens (no KV, no attention FLOPs) and the whole prompt
    r = predict_step(x.gpu.spec, x.shape, DECODE, CHUNKS, decode_attention=False)
    # PIM: the batched attention of every layer, the chunk's K/V written, from fresh states
    prog = x.pim.programs[0]
    a_cyc, _ = step_cost(kv_only_program(prog), cfg, tuple(DECODE), tuple(range(4)))
    w_cyc, _ = step_cost(kv_only_program(prog, ("kv_write",)), cfg, tuple(range(8)), (0,) * 8)
    xpu_s, pim_s = r["ms"] / 1e3, cfg.timing.ns(a_cyc + w_cyc) / 1e9
    L, lk = 2, xpu_link("pcie5")
    to_b = 4 * (64 + 2 * 64) * 2 * L + 8 * 2 * 64 * 2 * L  # q, k, v per token + the chunk's K/V
    from_b = 4 * 64 * 2 * L  # the context back
    link_s = lk.transfer_s(to_b) + lk.transfer_s(from_b) + 2 * L * lk.latency_s
    assert st.per_device_busy_s[0] == pytest.approx(xpu_s, rel=1e-12)
    assert st.per_device_busy_s[1] == pytest.approx(pim_s, rel=1e-12)
    # serial: the step is the sum of its parts
    assert st.time_s == pytest.approx(xpu_s + pim_s + link_s, rel=1e-12)
    assert x.totals.link_bytes == to_b + from_b


def test_overlap_step_is_the_critical_path(tiny):
    c, cfg = tiny
    x = XpuPimCost(c, cfg, "tiny", placement="attention", overlap=True)
    st = x.step(DECODE, [])
    b = x.totals.busy_s
    serial = sum(b.values()) + 4 * 2 * x.link.latency_s  # two sub-batches, 2 layers, 2 ways
    # PIM and the link hide behind the xPU here: the step is the xPU's busy time
    assert max(b["xpu"], b["pim"]) <= st.time_s < serial
    # each sub-batch streams the weights on its own: xPU busy = two sub-batch steps
    r1 = predict_step(x.gpu.spec, x.shape, DECODE[:2], [], decode_attention=False)
    r2 = predict_step(x.gpu.spec, x.shape, DECODE[2:], [], decode_attention=False)
    assert b["xpu"] == pytest.approx((r1["ms"] + r2["ms"]) / 1e3, rel=1e-12)


def test_schedule_critical_path_and_link_contention():
    # two chains: xPU 3 then PIM 5; PIM 4 first in the second chain
    a = [Task("xpu", 3.0), Task("link_to_pim", 1.0, 0.5), Task("pim", 5.0)]
    b = [Task("pim", 4.0), Task("link_to_pim", 1.0, 0.5), Task("xpu", 2.0)]
    t, busy = schedule([a, b])
    # stage 0: xpu 0-3 (a), pim 0-4 (b); stage 1: link 3-4 (a), link 4-5 (b, waits for a's
    # transfer: contention); stage 2: pim from max(4.5, 4) = 4.5 to 9.5 (a), xpu 5.5-7.5 (b)
    assert t == 9.5
    assert busy == {"xpu": 5.0, "pim": 9.0, "link_to_pim": 2.0, "link_from_pim": 0.0}
    assert schedule([a + b])[0] == sum(x.busy_s + x.after_s for x in a + b)


def test_prefill_on_xpu_hands_kv_to_pim(tiny):
    c, cfg = tiny
    x = XpuPimCost(c, cfg, "tiny", placement="prefill")
    st = x.step(DECODE, CHUNKS)
    p = PimBatchedCost(c, cfg)
    dec = sum(p.batch_step(g)[1] for g in p.groups(DECODE))
    r = predict_step(x.gpu.spec, x.shape, [], CHUNKS)
    w_cyc, _ = step_cost(attention_program(x.pim.programs[0], None, ("kv_write",)), cfg,
                         tuple(range(8)), (0,) * 8)
    kv_b = 8 * 2 * 64 * 2 * 2
    link_s = x.link.transfer_s(kv_b) + x.link.latency_s
    assert st.time_s == pytest.approx(r["ms"] / 1e3 + link_s + cfg.timing.ns(w_cyc) / 1e9 + dec,
                                      rel=1e-12)
    ov = XpuPimCost(c, cfg, "tiny", placement="prefill", overlap=True).step(DECODE, CHUNKS)
    assert ov.time_s < st.time_s


def test_kv_only_program_times_like_the_compiled_layout(tiny):
    """Moving the KV block to row 0 and dropping the weights changes no attention cycle."""
    c, cfg = tiny
    prog = c.program
    for pos in ((7,), (3, 40)):
        reg = tuple(range(len(pos)))
        assert step_cost(kv_only_program(prog), cfg, pos, reg)[0] == \
            step_cost(attention_program(prog, None), cfg, pos, reg)[0]


def test_predict_step_without_decode_attention(tiny):
    c, _ = tiny
    x = XpuPimCost(c, session.hw_config("pim-gpt"), "tiny", placement="attention")
    full = predict_step(x.gpu.spec, x.shape, DECODE, [])
    fc = predict_step(x.gpu.spec, x.shape, DECODE, [], decode_attention=False)
    assert fc["flops"] == 4 * decode_flops(x.shape, -1) < full["flops"]
    assert full["bytes"] - fc["bytes"] == sum((p + 1) * x.shape.kv_bytes_per_token(2)
                                              for p in DECODE)


def test_links_are_cited_presets():
    for name in LINKS:
        lk = xpu_link(name, 2)
        assert lk.bytes_per_s > 0 and lk.latency_s > 0 and lk.pj_per_bit > 0
    assert xpu_link("package", 2).bytes_per_s == 2 * 670.4e9
    assert xpu_link("pcie5").bytes_per_s == pytest.approx(63.0e9, rel=1e-3)


def test_cli_serve_xpu_json_reports_busy_time(capsys):
    assert main(["serve", "tiny", "--hw", "pim-gpt", "--num-prompts", "3", "--input-len", "4",
                 "--output-len", "3", "--xpu", "H100", "--offload", "attention", "--overlap",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    x = d["config"]["xpu"]
    assert x["placement"] == "attention" and x["overlap"] is True
    assert x["busy_s"]["xpu"] > 0 and x["busy_s"]["pim"] > 0
    assert d["metrics"]["completed"] == 3


@pytest.mark.parametrize("argv, words", [
    (["--overlap"], "without --xpu"),
    (["--xpu", "H100", "--offload", "attention", "--prefill-on", "xpu"], "both given"),
    (["--xpu", "H100", "--link", "usb"], "invalid choice"),
    (["--xpu", "H100", "--gpu", "H100"], "not both"),
])
def test_cli_bad_xpu_input_exits_2(argv, words, capsys):
    try:
        rc = main(["serve", "tiny", "--hw", "pim-gpt", "--num-prompts", "2", *argv])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert words in capsys.readouterr().err


def test_cli_compare_xpu_rows(capsys):
    assert main(["compare", "tiny", "--hw", "pim-gpt", "--xpu", "H100", "--batch", "1,4",
                 "--prompt", "16", "--tokens", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and {r["position"] for r in rows} == {16}
    g = GpuModelCost("H100", "tiny").step([16] * 4, [])
    xpu4 = next(r for r in rows if r["system"] == "xpu alone" and r["batch"] == 4)
    assert xpu4["ms_per_step"] == pytest.approx(g.time_s * 1e3, rel=1e-12)
    off = [r for r in rows if r["system"] == "xpu + pim attention"]
    assert all(r["ms_per_step"] > r["xpu_busy_ms"] + r["pim_busy_ms"] for r in off)
    try:
        rc = main(["compare", "tiny", "--hw", "pim-gpt", "--xpu", "H100"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2


@pytest.mark.slow  # trains tiny-counter and builds two executors
def test_functional_xpu_and_pim_give_the_all_pim_tokens():
    import numpy as np

    from workloads.validation import functional_executor
    from workloads.xpu.functional import xpu_functional_executor

    cfg = session.hw_config("pim-gpt")
    c = session.compile_model("tiny-counter", cfg, weights=True)

    def greedy(fx, first=3, n=8):
        tok, out = first, []
        for pos in range(n):
            lg = fx.step(tok, pos)
            tok = int(np.argmax(lg))
            out.append(tok)
        return out, lg

    xfx = xpu_functional_executor(c, cfg)
    x_tokens, x_last = greedy(xfx)
    p_tokens, p_last = greedy(functional_executor(c, cfg, exact=False))
    assert x_tokens == p_tokens == [4, 5, 6, 7, 8, 9, 10, 11]  # the counter counts
    assert xfx.xpu_products > 0
    # the numbers differ (other rounding of the products), the decisions do not
    assert not np.array_equal(x_last, p_last)
    assert np.corrcoef(x_last, p_last)[0, 1] > 0.999
