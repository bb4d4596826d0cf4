"""The compiler end to end: model -> IR -> passes -> graph lowering -> GraphMapping + Program.

* the ONNX and the torch.export paths give the same program and the same weights;
* every preset maps onto pim-gpt: check() passes, every weight byte is placed once, every bank of
  every channel holds an even share of every matrix, the KV cache is reserved for the full context;
* a model too large for the memory fails with a CapacityError (and the CLI with one line, exit 2);
* golden program text and mapping for ``tiny`` (regenerate with ``pytest --update-golden``, then
  read the diff before committing it);
* unsupported ops and non-PIM hardware fail clearly; program sanity across positions.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.frontends import UnsupportedOpError
from compiler.passes.mapping import CapacityError, MappingError
from compiler.pipeline import Compiled, compile_model, lower, prepare
from pimsim.config import load_config
from pimsim.isa import Program
from pimsim.spec.commands import cmd_id
from pimsim.timing import SYNC
from workloads.models.export import export_decode_onnx
from workloads.models.gpt import GPT, get_config
from workloads.models.resolve import resolve_model
from workloads.models.shape import DecoderShape

REPO = Path(__file__).resolve().parent.parent
# in-process ones first: the last three come from a background process (see Background)
PRESETS8 = ("gpt2-small", "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl",
            "gpt2-medium", "gpt2-large", "gpt2-xl")
MAC_AB = cmd_id("MAC_AB")
CLI_TEST = "test_cli_capacity_error_is_one_line_exit_2"


@pytest.fixture(scope="module")
def pim_gpt():
    return load_config("pim-gpt")


def two_channel_toml(path: Path) -> Path:
    """pim-gpt with 2 channels (1 GiB), written as a TOML file named pim-gpt-2ch."""
    text = (REPO / "hwconfigs" / "pim-gpt.toml").read_text()
    text, n1 = re.subn(r'(?m)^name = "pim-gpt"', 'name = "pim-gpt-2ch"', text)
    text, n2 = re.subn(r"(?m)^channels = 8\b", "channels = 2", text)
    text, n3 = re.subn(r"(?m)^channel_mask = 0xff\b", "channel_mask = 0", text)
    assert (n1, n2, n3) == (1, 1, 1), "hwconfigs/pim-gpt.toml changed shape; update this helper"
    path.write_text(text)
    return path


class Background:
    """Slow work run in other processes while this module's tests run in this one (2 cores):

    * ``cli``: ``pimsim compile gpt2-xl --hw <2 channels>``: ~15 s in a fresh process (import
      torch, export gpt2-xl), all of it on the other core;
    * ``presets``: the three largest gpt2 presets (BACKGROUND) through the full pipeline, each
      pickled to ``<name>.pkl`` (the Compiled and the prepared graph) when done;
      ``compiled(name)`` loads them from there.
    """

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.procs: dict[str, subprocess.Popen] = {}
        self._files: list = []

    def start(self, key: str, cmd: list[str]) -> None:
        out, err = (self.dir / f"{key}.stdout").open("w"), (self.dir / f"{key}.stderr").open("w")
        self._files += [out, err]
        self.procs[key] = subprocess.Popen(cmd, cwd=self.dir, stdout=out, stderr=err,
                                           stdin=subprocess.DEVNULL)

    def output(self, key: str) -> tuple[str, str]:
        return (self.dir / f"{key}.stdout").read_text(), (self.dir / f"{key}.stderr").read_text()

    def load(self, name: str, timeout: float = 600.0) -> tuple:
        path, proc = self.dir / f"{name}.pkl", self.procs["presets"]
        t_end = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None and not path.exists():
                pytest.fail(f"background compile of {name} failed (exit {proc.returncode}):\n"
                            f"{self.output('presets')[1][-3000:]}")
            if time.monotonic() > t_end:
                pytest.fail(f"background compile of {name} took over {timeout:.0f} s")
            time.sleep(0.05)
        with path.open("rb") as f:
            return pickle.load(f)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for f in self._files:
            f.close()


BACKGROUND = ("gpt2-medium", "gpt2-large", "gpt2-xl")
WORKER = """
import os, pickle, sys
from compiler.pipeline import lower, prepare
from pimsim.config import load_config
from workloads.models.resolve import resolve_model
cfg = load_config("pim-gpt")
for name in sys.argv[1:]:
    src, display = resolve_model(name, weights=False)
    prep = prepare(src, name=display)
    c = lower(prep, cfg)
    with open(name + ".pkl.tmp", "wb") as f:
        pickle.dump((c, prep), f)
    os.replace(name + ".pkl.tmp", name + ".pkl")
"""


@pytest.fixture(scope="module", autouse=True)
def background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Starts the background work (see :class:`Background`) that the selected tests need."""
    items = [it for it in request.session.items if getattr(it, "module", None) is request.module]
    bg = Background(tmp_path_factory.mktemp("background"))
    if any(it.name == CLI_TEST for it in items):
        toml = two_channel_toml(bg.dir / "pim-gpt-2ch.toml")
        script = Path(sys.executable).parent / "pimsim"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "workloads.cli"]
        bg.start("cli", cmd + ["compile", "gpt2-xl", "--hw", str(toml)])
    def wants(it, n: str) -> bool:  # by name: test_preset_mapping[gpt2-xl], test_gpt2_xl_...
        return "compiled" in it.fixturenames and (n in it.name or n.replace("-", "_") in it.name)

    wanted = [n for n in BACKGROUND if any(wants(it, n) for it in items)]
    if wanted:
        bg.start("presets", [sys.executable, "-c", WORKER, *wanted])
    yield bg
    bg.stop()


# ---- 1. ONNX and torch.export give the same program ---------------------------------------------


def assert_same_weights(a: Compiled, b: Compiled) -> None:
    dims = ("n_layer", "d_model", "n_head", "n_kv_head", "d_head", "d_ff", "vocab", "n_ctx",
            "eps", "n_weight_elems")
    assert [getattr(a.spec, k) for k in dims] == [getattr(b.spec, k) for k in dims]
    assert a.spec.has_weights and b.spec.has_weights
    ma, mb = a.mapping, b.mapping
    assert ma.weights.keys() == mb.weights.keys() and ma.tables == mb.tables
    for name in ma.weights:
        assert np.array_equal(ma.weights[name], mb.weights[name]), name
    assert ma.vector_values.keys() == mb.vector_values.keys()
    for name in ma.vector_values:
        assert np.array_equal(ma.vector_values[name], mb.vector_values[name]), name


@pytest.fixture(scope="module", params=["tiny", "tiny-wide"])
def both_paths(request, pim_gpt, tmp_path_factory) -> tuple[Compiled, Compiled]:
    name = request.param
    model = GPT.from_seed(get_config(name)).bf16_rounded()
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    export_decode_onnx(model, path, past_len=3)
    return compile_model(model, pim_gpt, name=name), compile_model(str(path), pim_gpt, name=name)


def test_onnx_and_torch_paths_give_the_same_program(both_paths) -> None:
    via_torch, via_onnx = both_paths
    assert_same_weights(via_torch, via_onnx)
    n_ctx = via_torch.spec.n_ctx
    for pos in (0, 1, 17, n_ctx - 1):
        a, b = via_torch.program.to_text(pos), via_onnx.program.to_text(pos)
        assert a == b, f"programs differ at position {pos}"
    assert via_torch.mapping.pretty() == via_onnx.mapping.pretty()


# ---- 2. every preset on pim-gpt -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(pim_gpt, background: Background):
    """compiled(name): the preset as a meta-device module through the full pipeline, cached;
    the BACKGROUND presets come from the worker process. ``compiled(name, prepared=True)``:
    the model's prepared graph (compiler.pipeline.prepare) instead."""
    cache: dict[str, tuple] = {}

    def get(name: str, prepared: bool = False):
        if name not in cache:
            if name in BACKGROUND and "presets" in background.procs:
                cache[name] = background.load(name)
            else:
                src, display = resolve_model(name, weights=False)
                prep = prepare(src, name=display)
                cache[name] = (lower(prep, pim_gpt), prep)
        return cache[name][1 if prepared else 0]

    return get


@pytest.mark.parametrize("name", [  # the three largest (5-9 s each) are slow
    pytest.param(n, marks=pytest.mark.slow) if n in ("gpt3-medium", "gpt3-large", "gpt2-xl") else n
    for n in PRESETS8])
def test_preset_mapping(compiled, name: str) -> None:
    c = compiled(name)
    mp, g, spec = c.mapping, c.mapping.geo, c.spec
    C, B = g.channels, g.banks
    mp.check()
    assert mp.placed_weight_bytes() == get_config(name).weight_bytes_bf16 == spec.weight_bytes(2)

    # every bank of every channel holds a share of every matrix and table, within one row of
    # an even split
    assert set(mp.tables) == {"table.0", "table.1"} and mp.tables["table.0"] == mp.lm_head.name
    assert mp.matrices["table.1"].out_dim == spec.n_ctx  # the position table
    for m in mp.matrices.values():
        ch, bank, _ = m.locate(np.arange(m.out_dim))
        per_cb = np.bincount(ch * B + bank, minlength=C * B)
        assert per_cb.sum() == m.out_dim
        assert per_cb.min() > 0, f"{m.name}: a (channel, bank) holds no neuron"
        assert per_cb.max() - per_cb.min() <= 1, \
            f"{m.name}: uneven split, {per_cb.min()}..{per_cb.max()} neurons per (channel, bank)"
        slots = [m.slots(c_) for c_ in range(C)]
        assert max(slots) - min(slots) <= 1 and min(slots) > 0
    assert mp.lm_head.out_dim == spec.vocab and mp.lm_head.role == "lm_head"
    # ... and the emitted program uses every channel for every weight matrix-vector product
    for st in c.program.steps:
        if st.matrix is not None:
            macs = [int((a[:, 0] == MAC_AB).sum()) for a in c.program.pim_items(st, 0)]
            assert min(macs) > 0 and max(macs) - min(macs) <= st.matrix.n_chunks, st.name

    keys = np.sort(mp.owned_rows())  # (sorting is much faster than np.unique's hash table here)
    assert (keys[1:] != keys[:-1]).all(), "a (channel, bank, row) is owned twice"

    # K and V caches reserved for the full context
    for kl, vl in zip(mp.k_cache, mp.v_cache, strict=True):
        assert kl.heads_per_chunk * kl.d_head <= g.row_elems
        assert kl.n_chunks == math.ceil(spec.n_head / kl.heads_per_chunk)
        assert kl.rows_reserved == math.ceil(spec.n_ctx / (C * B)) * kl.n_chunks
        assert int(kl.locate(spec.n_ctx - 1)[2]) < kl.n_slots
        vm = vl.matrix
        assert (vm.out_dim, vm.in_dim) == (spec.d_attn, spec.n_ctx)
        assert vl.rows_reserved == vm.slots(0) * math.ceil(spec.n_ctx / g.row_elems)
    # the last position's KV writes land inside the reserved regions
    last = spec.n_ctx - 1
    for st in c.program.steps:
        if st.op != "kv_write" or st.layer not in (0, spec.n_layer - 1):
            continue
        kl, vl = st.kv
        for c_, arr in enumerate(c.program.pim_items(st, last)):
            rows = arr[:, 2]
            in_k = (rows >= kl.base_row) & (rows < kl.base_row + kl.rows_reserved)
            in_v = (rows >= vl.base_row) & (rows < vl.base_row + vl.rows_reserved)
            assert (in_k | in_v).all() and (rows < mp.rows_used[c_]).all()


# ---- 3. too large for the memory ---------------------------------------------------------------


def capacity_numbers(msg: str) -> tuple[int, int]:
    need = re.search(r"needs ([\d,]+) bytes", msg)
    have = re.search(r"has ([\d,]+) bytes", msg)
    assert need and have, f"bytes needed / available not in the message: {msg}"
    return int(need.group(1).replace(",", "")), int(have.group(1).replace(",", ""))


def test_gpt2_xl_does_not_fit_two_channels(compiled, pim_gpt) -> None:
    cfg2 = pim_gpt.replace(org=dataclasses.replace(pim_gpt.org, channels=2, channel_mask=0))
    # import and passes already ran for the preset test; the CLI test below runs all of it
    with pytest.raises(CapacityError) as info:
        lower(compiled("gpt2-xl", prepared=True), cfg2)
    msg = str(info.value)
    need, have = capacity_numbers(msg)
    assert have == cfg2.org.capacity_bytes == 2**30
    assert need > have and need >= get_config("gpt2-xl").weight_bytes_bf16
    assert "gpt2-xl" in msg and cfg2.name in msg


def test_cli_capacity_error_is_one_line_exit_2(background: Background) -> None:
    """The whole pipeline through the CLI (started at the top of the module, see Background)."""
    rc = background.procs["cli"].wait(timeout=300)
    stdout, stderr = background.output("cli")
    assert rc == 2, f"exit status {rc}; stderr:\n{stderr}"
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("pimsim: error:") and "gpt2-xl" in line and "pim-gpt-2ch" in line
    need, have = capacity_numbers(line)
    assert have == 2**30 and need > have
    assert stdout == ""


# ---- 4. golden program text and mapping for tiny -----------------------------------------------


@pytest.fixture(scope="module")
def tiny(pim_gpt) -> Compiled:
    src, name = resolve_model("tiny", weights=False)
    return compile_model(src, pim_gpt, name=name)


@pytest.mark.parametrize("pos", [0, 5])
def test_golden_program_text(tiny: Compiled, pos: int, golden) -> None:
    golden(f"tiny_program_pos{pos}.txt", tiny.program.to_text(pos))


def test_golden_mapping(tiny: Compiled, golden) -> None:
    golden("tiny_mapping.txt", tiny.mapping.pretty() + "\n")


def test_cli_compile_mapping_prints_the_checked_loop_nest(tiny: Compiled, capsys) -> None:
    from workloads.cli import main

    assert main(["compile", "tiny", "--mapping", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert out == tiny.mapping.pretty() + "\n"
    # every matrix of a matrix-vector product has its loop nest; layers 0 and 1 are alike
    assert "  for layer in 0..1:" in out and out.count("RD_MAC x len(group)") == 5
    assert "table.1 [64 x 64]" in out and "gathered" in out


def test_mapping_check_catches_overlaps_overflows_and_buffer_violations(tiny: Compiled) -> None:
    mp = tiny.mapping
    mp.check()
    up = mp.matrices["L0.out_proj"]
    moved = dict(mp.matrices, **{"L0.out_proj": dataclasses.replace(
        up, base_row=mp.matrices["L0.qkv"].base_row)})
    with pytest.raises(MappingError, match="overlap: channel 0 bank 0 row 6"):
        dataclasses.replace(mp, matrices=moved).check()
    with pytest.raises(MappingError, match="beyond the rows reserved"):
        dataclasses.replace(mp, rows_used=[r - 1 for r in mp.rows_used]).check()
    with pytest.raises(MappingError, match="L0.qkv.*a fill of 4 columns, the global buffer "
                                           "holds 2"):
        dataclasses.replace(mp, gb_cols=2).check()
    with pytest.raises(MappingError, match="a bank has 0"):
        dataclasses.replace(mp, accumulators=0).check()
    short = dict(mp.matrices)
    del short["L1.ffn_down"]
    with pytest.raises(MappingError, match=r"placed \d+ weight elements, the model has"):
        dataclasses.replace(mp, matrices=short).check()


# ---- 5. clear errors ---------------------------------------------------------------------------


def test_unsupported_onnx_op_is_named(pim_gpt) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax", axis=-1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert isinstance(model, onnx.ModelProto)
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        compile_model(model, pim_gpt, name="hardmax")


def test_non_pim_hardware_is_refused() -> None:
    src, name = resolve_model("tiny", weights=False)
    with pytest.raises(MappingError, match=r"pim\.enabled") as info:
        compile_model(src, load_config("gddr6"), name=name)
    assert "gddr6" in str(info.value)


@pytest.mark.parametrize("d_head", [8, 24])
def test_head_size_the_kv_mapping_cannot_hold_is_refused(pim_gpt, d_head: int) -> None:
    """d_head = 8: a 16-neuron V group would span two heads; 24: keys not column-aligned."""
    cfg = DecoderShape(name="odd-heads", n_layer=1, d_model=96, n_head=96 // d_head,
                       d_head=d_head, d_ff=384, vocab=256, n_ctx=64)
    with pytest.raises(MappingError, match=f"d_head = {d_head}"):
        compile_model(GPT(cfg, device="meta").eval(), pim_gpt, name="odd-heads")


# ---- 6. program sanity -------------------------------------------------------------------------


def score_macs(prog: Program, pos: int) -> int:
    return sum(int((a[:, 0] == MAC_AB).sum()) for st in prog.steps if st.op == "attn_score"
               for a in prog.pim_items(st, pos))


def test_program_sanity_across_positions(tiny: Compiled) -> None:
    prog, g, spec = tiny.program, tiny.mapping.geo, tiny.spec
    n_pim = sum(st.kind == "pim" for st in prog.steps)
    n_asic = len(prog.steps) - n_pim
    for pos in (0, 5, 17, spec.n_ctx - 1):
        streams = prog.streams(pos)
        assert sorted(streams) == list(range(g.channels))
        syncs = {c: int((s[:, 0] == SYNC).sum()) for c, s in streams.items()}
        assert set(syncs.values()) == {n_pim}, syncs
        items = sum(s.shape[0] for s in streams.values()) - n_pim * g.channels
        assert prog.instruction_count(pos) == items + n_asic

    counts = [prog.instruction_count(p) for p in range(spec.n_ctx)]
    assert all(a <= b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > counts[0]

    macs = [score_macs(prog, p) for p in range(spec.n_ctx)]
    assert all(a <= b for a, b in zip(macs, macs[1:])), macs
    # one all-bank MAC per head per slot row in use: tiny's 64 tokens fill one row per channel
    kl = tiny.mapping.k_cache[0]
    for p in (0, 3, 7, spec.n_ctx - 1):
        rows = sum(kl.slots_in_use(c, p + 1) for c in range(g.channels))
        assert macs[p] == spec.n_layer * spec.n_head * rows
    assert macs[0] < macs[g.channels - 1]


def test_score_macs_grow_with_context(compiled) -> None:
    """A row slot holds channels x banks tokens: past 128 tokens each channel opens another."""
    prog = compiled("gpt2-small").program
    per = 8 * 16
    m = [score_macs(prog, p) for p in (0, per - 1, per, 2 * per, 1023)]
    assert all(a < b for a, b in zip(m, m[1:])), m


def test_hugging_face_gpt2_module_compiles_and_matches(tmp_path, monkeypatch):
    """A GPT2LMHeadModel given as MODEL (module:attribute) goes through the whole pipeline."""
    transformers = pytest.importorskip("transformers")
    import sys as _sys

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=256)).eval()
    mod = type(_sys)("hf_model_for_test")
    mod.model = hf
    monkeypatch.setitem(_sys.modules, "hf_model_for_test", mod)
    from workloads.models.resolve import resolve_model

    src, name = resolve_model("hf_model_for_test:model")
    c = compile_model(src, load_config("pim-gpt"), name=name)
    assert (c.spec.n_layer, c.spec.d_model, c.spec.n_head, c.spec.vocab) == (2, 64, 4, 256)
    c.mapping.check()


def test_cached_attention_items_equal_freshly_built_ones():
    """Position-dependent items (KV writes, attention) are cached and rebuilt only when their
    position key changes, taken from another layer's of the same shape with the rows moved,
    and the stream builder rewrites only changed regions: at every third position of
    gpt2-small, the first and last layers' regions must equal a build from empty caches."""
    import numpy as np

    from pimsim import isa
    from pimsim.decode import StreamBuilder

    spec_src, name = __import__("workloads.models.resolve", fromlist=["resolve_model"]).resolve_model(
        "gpt2-small", weights=False)
    prog = compile_model(spec_src, load_config("pim-gpt"), name=name).program
    sb = StreamBuilder(prog)
    last = prog.dims["n_layer"] - 1
    dyn = [(k, s) for k, s in enumerate(sb.pim_steps)
           if s.op in ("kv_write", "attn_score", "attn_value") and s.kv[0].layer in (0, last)]
    assert len(dyn) == 6
    assert len({s.kv[0].base_row for _, s in dyn}) == 2  # the layers' caches lie apart
    caches = (isa._LATEST, isa._SHAPED)
    for pos in range(0, prog.dims["n_ctx"], 3):
        items, lo, hi = sb.build(pos)
        saved = [dict(c) for c in caches]
        for c in caches:
            c.clear()
        for k, s in dyn:
            want = prog.pim_items(s, pos)
            isa._LATEST.clear()
            isa._SHAPED.clear()
            for c in range(prog.geo.channels):
                assert np.array_equal(items[lo[c, k]:hi[c, k]], want[c]), (s.op, pos, c)
        for c, kept in zip(caches, saved):
            c.clear()
            c.update(kept)
