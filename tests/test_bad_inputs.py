"""Every bad input gets a clear error: exit status 2, exactly one line on stderr
(``pimsim: error: <problem>; <fix>``), no traceback, and never the "internal error" line that
means a pimsim bug.

Most cases call :func:`workloads.cli.main` in this process (stderr captured); a handful run the
real command line in a subprocess, each bounded by a 10 s timeout. Configs are temporary TOML
files derived from ``hwconfigs/pim-gpt.toml``; traces, sweep specs, models and reference files
are written per case.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from workloads.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASE = tomllib.loads((ROOT / "hwconfigs" / "pim-gpt.toml").read_text())
AIM = tomllib.loads((ROOT / "hwconfigs" / "aim-gddr6.toml").read_text())
TRACE = str(ROOT / "examples" / "gemv_aim.trace")
ERROR_LINE = re.compile(r"^pimsim: error: \S.*; \S.*$")


# ---------------------------------------------------------------- helpers

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump_toml(d: dict) -> str:
    """A minimal TOML writer for the config and spec mappings of these tests."""
    out: list[str] = []

    def table(prefix: str, t: dict) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        if prefix:
            out.append(f"[{prefix}]")
        for k, v in scalars.items():
            out.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", d)
    return "\n".join(out) + "\n"


def cli(argv: list[str], capsys, expect: str | None = None) -> str:
    """Run the CLI in this process; assert the bad-input contract; return the error line."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors exit through SystemExit
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, f"exit status {rc} for {argv}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} stderr lines for {argv}:\n{err[-3000:]}"
    line = lines[0]
    assert ERROR_LINE.match(line), f"not '<problem>; <fix>': {line}"
    assert "internal error" not in line, line
    assert len(line) <= 800, f"{len(line)} characters: {line[:200]}..."
    if expect is not None:
        assert re.search(expect, line), f"{expect!r} not in: {line}"
    return line


def cli_subprocess(argv: list[str], expect: str | None = None, cwd: Path = ROOT) -> str:
    """The same contract for the real command line, in a process of its own (10 s at most)."""
    r = subprocess.run([sys.executable, "-m", "workloads.cli", *map(str, argv)],
                       capture_output=True, text=True, timeout=10, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2, f"exit {r.returncode} for {argv}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert ERROR_LINE.match(lines[0]) and "internal error" not in lines[0], lines[0]
    if expect is not None:
        assert re.search(expect, lines[0]), lines[0]
    return lines[0]


def mutated(base: dict, path: str, value) -> dict:
    """``base`` with ``path`` (``section.key``, ``a.b.c``) set to ``value``; a value of
    ``DELETE`` removes the key."""
    d = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return d


DELETE = object()


# ---------------------------------------------------------------- hardware configs

# (path, value, what the message must mention)
CONFIG_CASES = [
    ("organization", DELETE, r"missing section \[organization\]"),
    ("timing", DELETE, r"missing section \[timing\]"),
    ("pim", DELETE, r"missing section \[pim\]"),
    ("asic", DELETE, r"missing section \[asic\]"),
    ("link", DELETE, r"missing section \[link\]"),
    ("organization", 5, r"\[organization\] must be a table"),
    ("bogus", 1, "unknown top-level key"),
    ("name", 3, "name = 3 must be a string"),
    ("organization.ranks", 2, r"unknown key.*ranks"),
    ("organization.channels", "8", "channels = '8' must be of type int"),
    ("organization.channels", 0, r"channels = 0 is out of range.*1\.\.4,096"),
    ("organization.channels", -1, "channels = -1 is out of range"),
    ("organization.channels", 5000, r"channels = 5,000 is out of range.*1\.\.4,096"),
    ("organization.rows", 10**18, r"rows = 1,000,000,000,000,000,000 is out of range.*2\^24"),
    ("organization.rows", 99999999999999999999, "rows = .* is out of range"),
    ("organization.rows", 1.5, "rows = 1.5 must be of type int"),
    ("organization.columns", 0, "columns = 0 is out of range"),
    ("organization.columns", 1 << 17, r"columns = 131,072 is out of range.*2\^16"),
    ("organization.column_bytes", 0, "column_bytes = 0 is out of range"),
    ("organization.bankgroups", 100, "bankgroups = 100 is out of range"),
    ("organization.banks_per_group", 0, "banks_per_group = 0 is out of range"),
    ("organization.channel_mask", 0xF, r"channel_mask = 0xf selects 4 channels"),
    ("organization.channel_mask", -1, "channel_mask = -1 is out of range"),
    ("timing.tCK_ps", 0, "tCK_ps = 0 is not a clock period"),
    ("timing.tCK_ps", 10**7, "tCK_ps = 10000000 is not a clock period"),
    ("timing.tCK_ps", True, "tCK_ps = True is not a clock period"),
    ("timing.nRCDRD", 0, "nRCDRD = 0 is impossible"),
    ("timing.nRCDRD", 2_000_000, r"nRCDRD = 2,000,000 cycles .* out of range.*1\.\.1,000,000"),
    ("timing.nCL", -5, "nCL = -5 is impossible"),
    ("timing.nCL", 1.5, "nCL = 1.5 must be an integer"),
    ("timing.nCL", "50", "nCL = '50' must be an integer"),
    ("timing.nFOO", 3, "unknown timing name"),
    ("timing.nRP", DELETE, r"missing timing value.*nRP"),
    ("timing.tCK_ps", DELETE, "missing key 'tCK_ps'"),
    ("timing.nRAS", 100, "nRAS = 100 > nRC = 89"),
    ("timing.nRRDS", 7, "nRRDS = 7 > nRRDL = 6"),
    ("timing.nCCDS", 3, "nCCDS = 3 > nCCDL = 2"),
    ("timing.nREFI", 212, "nREFI = 212 leaves no room between refreshes"),
    ("timing.nREFI", 250, "nREFI = 250 leaves no room.*larger than nRFC \\+ nRP \\+ row cycle"),
    ("timing.nREFI", 200, "nREFI = 200 leaves no room"),
    ("timing.nRFC", 3400, "nREFI = 3333 leaves no room"),
    ("pim.enabled", "yes", "enabled = 'yes' must be of type bool"),
    ("pim.data_type", "int8", "data_type = 'int8' is not supported"),
    ("pim.banks_per_pim_unit", 3, "banks_per_pim_unit = 3 does not divide"),
    ("pim.global_buffer_bytes", 100, "not a whole number of"),
    ("pim.mac_lanes_per_bank", 0, "mac_lanes_per_bank = 0 must be positive"),
    ("pim.accumulator_type", "int4", "accumulator_type = 'int4' is not supported"),
    ("asic.clock_mhz", float("nan"), "clock_mhz = nan must be a finite number"),
    ("asic.clock_mhz", float("inf"), "clock_mhz = inf must be a finite number"),
    ("asic.clock_mhz", 0.0, r"clock_mhz = 0.0 is out of range.*\(0, 1e\+06\]"),
    ("asic.vector_lanes", 0, "vector_lanes = 0 is out of range"),
    ("asic.sram_bytes", 1 << 50, "sram_bytes = .* is out of range"),
    ("asic.exp_taylor_terms", 0, "exp_taylor_terms = 0 is out of range"),
    ("asic.op_passes.softmax", 10**7, r"softmax = 10000000 is out of range.*0\.\.1,000,000"),
    ("asic.op_latency_cyc.gelu", -1, "gelu = -1 is out of range"),
    ("asic.op_latency_cyc.gelu", 1.5, "gelu = 1.5 is out of range"),
    ("asic.op_passes.conv", 1, r"unknown op\(s\) \['conv'\]"),
    ("asic.op_passes.softmax", DELETE, r"missing op\(s\) \['softmax'\]"),
    ("asic.op_passes", 4, "op_passes = 4 must be of type dict"),
    ("link.latency_cyc", 10**7, r"latency_cyc = 10,000,000 is out of range.*0\.\.1,000,000"),
    ("link.bytes_per_cyc", 0, "bytes_per_cyc = 0 is out of range"),
    ("link.clock_mhz", float("-inf"), "clock_mhz = -inf must be a finite number"),
    ("refresh.enabled", 1, "enabled = 1 must be of type bool"),
    ("refresh", "on", r"\[refresh\] must be a table"),
    ("energy.vdd_v", float("nan"), "vdd_v = nan must be a finite number"),
    ("energy.idd0_ma", float("inf"), "idd0_ma = inf must be a finite number"),
    ("energy.mac_unit_pj", -1.0, "mac_unit_pj = -1.0 is out of range"),
    ("energy.io_pj_per_bit", 1e12, "io_pj_per_bit = .* is out of range"),
    ("energy.table", "", "table must name the source"),
    ("energy.idd3n_ma", 50.0, "idd3n_ma = 50.0 < idd2n_ma = 60"),
    ("energy.channels_per_chip", 0, "channels_per_chip = 0 is out of range"),
    ("energy", "x", r"\[energy\] must be a table"),
]


@pytest.mark.parametrize("path,value,expect", CONFIG_CASES,
                         ids=[f"{p}={'DEL' if v is DELETE else v!r}"[:60]
                              for p, v, _ in CONFIG_CASES])
def test_bad_config_value(tmp_path, capsys, path, value, expect):
    f = tmp_path / "bad.toml"
    f.write_text(dump_toml(mutated(BASE, path, value)))
    line = cli(["trace", TRACE, "--hw", f], capsys, expect)
    assert "bad.toml" in line  # the message names the file


def test_the_base_of_the_config_cases_loads(tmp_path):
    """The cases above fail because of their one change: the unchanged dump loads."""
    from pimsim.config import load_config

    f = tmp_path / "ok.toml"
    f.write_text(dump_toml(BASE))
    assert load_config(f).org.channels == BASE["organization"]["channels"]


RAW_CONFIG_CASES = [
    ("not toml at all [", "not valid TOML"),
    ("", r"missing section \[organization\]"),
    ("[organization]\nchannels = 8\nchannels = 9\n", "not valid TOML"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
]


@pytest.mark.parametrize("text,expect", RAW_CONFIG_CASES, ids=["syntax", "empty", "dup", "bin"])
def test_unreadable_config_file(tmp_path, capsys, text, expect):
    f = tmp_path / "bad.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    cli(["trace", TRACE, "--hw", f], capsys, expect)


def test_config_path_problems(tmp_path, capsys):
    shipped = sorted(p.stem for p in (Path(__file__).parent.parent / "hwconfigs").glob("*.toml"))
    assert {"aim-gddr6", "gddr6", "hbm-pim", "pim-gpt"} <= set(shipped)
    cli(["trace", TRACE, "--hw", "no-such-config"], capsys,
        r"not found; .*shipped names: " + re.escape(", ".join(shipped)) + "$")
    cli(["trace", TRACE, "--hw", tmp_path / "missing.toml"], capsys, "not found")
    d = tmp_path / "dir.toml"
    d.mkdir()
    cli(["trace", TRACE, "--hw", d], capsys, "is a directory")
    cli(["trace", TRACE, "--hw", "a\0b"], capsys, "not found")
    cli(["trace", TRACE, "--hw", "x" * 5000], capsys, "not found")


# ---------------------------------------------------------------- traces

TRACE_CASES = [
    ("AiM FOO 1 2", "unknown AiM operation 'FOO'"),
    ("AiM", "'AiM' needs an operation"),
    ("AiM MAC_ABK 64 0x1", r"takes 3 argument\(s\)"),
    ("AiM MAC_ABK 64 0x1 0 9", r"takes 3 argument\(s\)"),
    ("AiM MAC_ABK 64 0xg 0", "mask must be a number"),
    ("AiM MAC_ABK 1e3 0x1 0", "opsize must be a number"),
    ("AiM MAC_ABK 0 0x1 0", "opsize 0 must be between 1 and the 64 columns"),
    ("AiM MAC_ABK 65 0x1 0", "opsize 65 must be between"),
    ("AiM MAC_ABK 64 0x1 -1", r"row -1 out of range 0\.\.16383"),
    ("AiM MAC_ABK 64 0x1 16384", "row 16384 out of range"),
    ("AiM MAC_ABK 64 0x1 99999999999999999999999", "row .* out of range"),
    ("AiM MAC_SBK 4 0x1 16 0", r"bank 16 out of range 0\.\.15"),
    ("AiM RD_SBK 0 0x1 -3 0", "bank -3 out of range"),
    ("AiM MAC_ABK 64 0x100000000 0", "must be a positive number of at most 32 bits"),
    ("AiM MAC_ABK 64 0 0", "channel mask 0x0"),
    ("R MEM 0 0", "'R MEM' takes <channel> <bank> <row>"),
    ("W MEM 40 0 0", "channel 40 not in config"),
    ("R GPR", "'R GPR' takes <id>"),
    ("W CFR 1 2 3", "'W CFR' takes <id>"),
    ("R FOO 1", "unknown host access target 'FOO'"),
    ("X 1 2", "a line must start with 'AiM', 'R' or 'W'"),
    ("AiM MAC_ABK 64 0x1 " + "9" * 5000, "row .*(must be a number|out of range|too long)"),  # clipped
    ("AiM MAC_ABK 64 -1 0", "channel mask -0x1 must be a positive number"),
    ("AiM MAC_ABK 64 -2 0", "channel mask -0x2 must be a positive number"),
    ("AiM WR_ABK 0 0xc0000000 0", "must select exactly one channel"),
    # strict numbers: Python's int(tok, 0) takes all of these
    ("AiM MAC_ABK 6_4 0x1 0", "opsize must be a number .* got '6_4'"),
    ("AiM MAC_ABK 64 0x1 1_0", "row must be a number .* got '1_0'"),
    ("AiM MAC_ABK +64 0x1 0", "opsize must be a number .* got '\\+64'"),
    ("AiM MAC_ABK 64 0b1 0", "mask must be a number .* got '0b1'"),
    ("AiM MAC_ABK 64 0o1 0", "mask must be a number .* got '0o1'"),
    ("AiM MAC_ABK 64 0x_1 0", "mask must be a number .* got '0x_1'"),
    ("AiM MAC_ABK 064 0x1 0", "opsize must be a number .* got '064'"),
    ("R GPR 1_2", "operand must be a number .* got '1_2'"),
    # trailing words
    ("AiM SYNC now", "'AiM SYNC' takes no more words, got 'now'"),
    ("AiM EOC 1 2", "'AiM EOC' takes no more words, got '1 2'"),
    ("AiM EWADD 1", r"AiM EWADD takes 3 arguments <opsize> <gpr> <gpr>, got 1"),
    ("AiM EWADD 1 2 3 4", "AiM EWADD takes 3 arguments"),
    ("AiM EWADD 1 x 3", "gpr must be a number .* got 'x'"),
]


@pytest.mark.parametrize("line,expect", TRACE_CASES)
def test_bad_trace_line(tmp_path, capsys, line, expect):
    f = tmp_path / "bad.trace"
    f.write_text(f"# a comment\nAiM SYNC\n{line}\nAiM EOC\n")
    msg = cli(["trace", f], capsys, expect)
    assert "bad.trace:3" in msg  # file and line number


EMPTY_TRACES = {
    "empty": "",
    "blank-lines": "\n\n   \n",
    "comments": "# a comment\n  # another\n",
    "sync-only": "AiM SYNC\nAiM SYNC\n",
    "eoc-only": "AiM EOC\n",
    "all-after-eoc": "AiM SYNC\nAiM EOC\nAiM MAC_ABK 64 0x1 0\n",
}


@pytest.mark.parametrize("name", list(EMPTY_TRACES))
def test_a_trace_with_no_instructions(tmp_path, capsys, name):
    """An empty trace is refused (it used to replay as "1 cycles")."""
    f = tmp_path / "empty.trace"
    f.write_text(EMPTY_TRACES[name])
    cli(["trace", f], capsys, "empty.trace: the trace has no instructions")


def test_trace_file_problems(tmp_path, capsys):
    cli(["trace", tmp_path / "none.trace"], capsys, "trace file .* not found; check the path")
    cli(["trace", tmp_path], capsys, "is a directory")
    f = tmp_path / "bin.trace"
    f.write_bytes(b"AiM SYNC\n\xff\xfe\x80\n")
    cli(["trace", f], capsys, "not UTF-8 text")
    g = tmp_path / "pim.trace"
    g.write_text("AiM MAC_ABK 4 0x1 0\n")
    cli(["trace", g, "--hw", "gddr6"], capsys, "needs a PIM device")


# ---------------------------------------------------------------- models

@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A directory on sys.path with small modules a MODEL argument may name."""
    d = tmp_path / "mods"
    d.mkdir()
    (d / "bi_raises.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "bi_exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "bi_objs.py").write_text(
        "import torch\n"
        "conv = torch.nn.Conv2d(1, 1, 1)\n"
        "number = 7\n"
        "def needs_args(a, b):\n    return a\n"
        "def factory_raises():\n    raise ValueError('no model today')\n"
        "def factory_returns_int():\n    return 3\n"
        "def factory_returns_conv():\n    return torch.nn.Conv2d(1, 1, 1)\n"
        "class NoDims(torch.nn.Module):\n"
        "    def decode_step(self, token, pos, k, v):\n        return token\n"
        "nodims = NoDims()\n")
    monkeypatch.syspath_prepend(str(d))
    for m in ("bi_raises", "bi_exits", "bi_objs"):
        sys.modules.pop(m, None)
    return d


MODEL_CASES = [
    ("nosuch", "unknown MODEL 'nosuch'; give a preset"),
    ("", "MODEL '' is empty"),
    (":", "is not module:attribute"),
    ("bi_objs:", "is not module:attribute"),
    ("no_such_module_xyz:model", "cannot import module 'no_such_module_xyz'.*no such module"),
    ("bi_raises:model", "importing module 'bi_raises'.*raised RuntimeError: boom at import"),
    ("bi_exits:model", "importing module 'bi_exits'.*raised SystemExit"),
    ("bi_objs:missing", "has no attribute 'missing'"),
    ("bi_objs:conv", "torch.nn.*Conv2d: an nn.Module without a decode_step method"),
    ("torch.nn:Conv2d", "nn.Module class without decode_step \\(it is not called\\)"),
    ("bi_objs:number", "is a builtins.int: not a model"),
    ("bi_objs:needs_args", "a callable that needs arguments"),
    ("bi_objs:factory_raises", r"calling bi_objs:factory_raises\(\) raised ValueError"),
    ("bi_objs:factory_returns_int", r"returned a builtins.int, not a model"),
    ("bi_objs:factory_returns_conv", r"returned a torch.nn.*Conv2d, not a model"),
    ("bi_objs:nodims", "cannot find the KV-cache shape"),
]


@pytest.mark.parametrize("model,expect", MODEL_CASES, ids=[m or "empty" for m, _ in MODEL_CASES])
def test_bad_model(user_modules, capsys, model, expect):
    cli(["compile", model, "--no-cache"], capsys, expect)


def _onnx_files(d: Path) -> dict[str, Path]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]),
                           helper.make_node("Tanh", ["y"], ["z"])], "not_a_decoder",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])], [w])
    valid = helper.make_model(g)
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")]))
    files = {}
    files["not_a_decoder"] = d / "mlp.onnx"
    onnx.save(valid, files["not_a_decoder"])
    files["conv"] = d / "conv.onnx"
    onnx.save(conv, files["conv"])
    data = valid.SerializeToString()
    files["truncated"] = d / "truncated.onnx"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"] = d / "garbage.onnx"
    files["garbage"].write_bytes(b"\x08\x07\xff\xff\xff\xff\xff" + os.urandom(64))
    files["empty"] = d / "empty.onnx"
    files["empty"].write_bytes(b"")
    files["directory"] = d / "dir.onnx"
    files["directory"].mkdir()
    files["missing"] = d / "missing.onnx"
    files["text"] = d / "text.onnx"  # protobuf reads this as an empty ModelProto
    files["text"].write_text("x\n")
    return files


ONNX_CASES = {
    "not_a_decoder": "expected two KV-cache inputs .past_k, past_v.*export one decode step",
    "conv": "unsupported op 'Conv'",
    "truncated": "truncated.onnx' cannot be read as a model",
    "garbage": "garbage.onnx' cannot be read as a model",
    "empty": "empty.onnx' is empty",
    "directory": "is a directory",
    "missing": "not found",
    "text": "text.onnx' holds no ONNX model .IR version 0, 0 graph nodes",
}


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_onnx(tmp_path, capsys, case):
    f = _onnx_files(tmp_path)[case]
    cli(["compile", f, "--no-cache"], capsys, ONNX_CASES[case])


# ---------------------------------------------------------------- messages that name the cause

def test_a_folder_without_config_json_is_named_as_such(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    cli(["compile", tmp_path / "hf", "--no-cache"], capsys,
        "is a folder without a config.json.*give a folder written by save_pretrained")


def test_a_module_in_the_current_directory_names_the_import_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "cwd_only_mod.py").write_text("m = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cli(["compile", "cwd_only_mod:m", "--no-cache"], capsys,
        "cwd_only_mod.py is in the current directory, which is not on the import path; "
        "run with PYTHONPATH=.")


@pytest.mark.parametrize("argv, expect", [
    (["run", "tiny", "--context", "4", "--no-cache"],
     "more than the --context of 4; make prompt \\+ tokens at most 5 or raise --context"),
    (["run", "tiny", "--prompt", "60", "--tokens", "10", "--no-cache"],
     "--prompt 60 \\+ --tokens 10 need 69 decode steps, more than tiny's context of 64"),
    (["compare", "tiny", "--no-cache"],
     "--prompt 128 \\(the default\\) \\+ --tokens 8 .*tiny's context of 64; give a shorter "
     "--prompt"),
    (["sweep", "x.toml", "--store", "y.db"], "unrecognized arguments: --store y.db; see pimsim "
     "sweep --help"),
])
def test_messages_name_the_limit_the_user_set(capsys, argv, expect):
    cli(argv, capsys, expect)


def test_a_channel_mask_error_lists_every_missing_channel(tmp_path, capsys):
    t = tmp_path / "t.trace"
    t.write_text("AiM MAC_ABK 64 0xffffffff 0\n")
    cli(["trace", t, "--hw", "pim-gpt"], capsys, "selects channel\\(s\\) 8..31 that config "
        "'pim-gpt' does not have")


def test_a_d_head_the_banks_cannot_split_names_the_config(tmp_path, capsys):
    f = tmp_path / "twelve_banks.toml"
    f.write_text(dump_toml(mutated(AIM, "organization.bankgroups", 3)))
    cli(["compile", "tiny", "--hw", f, "--no-cache"], capsys,
        "d_head = 16 does not split over the config's 12 banks per channel.*use a config whose "
        "banks per channel")


def test_a_stream_whose_every_request_is_refused_is_an_error(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text('{"arrival_s": 0, "prompt_len": 60, "output_len": 8}\n')
    cli(["serve", "tiny", "--requests", f, "--context", "16", "--no-progress"], capsys,
        "every one of the 1 requests was refused.*exceed the reserved context \\(--context\\) "
        "of 16")


# ---------------------------------------------------------------- numbers on the command line

NUMBER_CASES = [
    (["run", "gpt2-small", "--tokens", "0"], r"--tokens: 0 is out of range: give an integer >= 1"),
    (["run", "gpt2-small", "--tokens", "-3"], "--tokens: -3 is out of range"),
    (["run", "gpt2-small", "--tokens", "abc"], "'abc' is not an integer"),
    (["run", "gpt2-small", "--tokens", "1e3"], "'1e3' is not an integer"),
    (["run", "gpt2-small", "--prompt", "0"], "--prompt: 0 is out of range"),
    (["run", "gpt2-small", "--seed", "-1"], r"--seed: -1 is out of range: .*0\.\.4294967295"),
    (["run", "gpt2-small", "--seed", str(1 << 40)], "--seed: .* is out of range"),
    (["run", "gpt2-small", "--tokens", "2000"], "need 2000 decode steps, more than gpt2-small's "
                                                "context of 1024"),
    (["run", "gpt2-small", "--prompt", "1000", "--tokens", "30"], "context of 1024"),
    (["run", "tiny", "--tokens", str(1 << 70)], "is out of range"),
    (["run", "gpt2-small", "--timeline", "t.json", "--timeline-pos", "5000"],
     r"--timeline-pos 5000 is outside gpt2-small's context 0\.\.1023"),
    (["run", "gpt2-small", "--timeline-pos", "-1"], "--timeline-pos: -1 is out of range"),
    (["run", "gpt2-small", "--schedule", "fast"], "invalid choice: 'fast'"),
    (["compile", "gpt2-small", "--pos", "1024"], r"--pos 1024 is outside .*0\.\.1023"),
    (["compile", "gpt2-small", "--pos", "-1"], "--pos: -1 is out of range"),
    (["validate", "tiny", "--tokens", "0"], "--tokens: 0 is out of range"),
    (["validate", "tiny", "--tokens", "100"], "context of 64"),
    (["validate", "tiny", "--prompt", "0"], "--prompt: 0 is out of range"),
    (["validate", "tiny", "--reference", "tpu"], "--reference 'tpu' is not a device"),
    (["compare", "gpt2-small", "--prompt", "0"], "--prompt: 0 is out of range"),
    (["compare", "gpt2-small", "--tokens", "3000"], "context of 1024"),
    (["compare", "gpt2-small", "--gpu", "V100"], "unknown GPU 'V100'; use one of T4, A100, "
                                                 "H100, H200"),
    (["compare", "nosuch-model"], "unknown MODEL 'nosuch-model'"),
    (["compare", "gpt2-small", "--hw", "no-such-hw"], "not found"),
    (["run", "gpt2-small", "--hw", "no-such-hw"], "hardware config 'no-such-hw' not found"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run"], "the following arguments are required: model"),
    (["sweep", "x.toml", "--workers", "0"], r"--workers: 0 is out of range: .*1\.\.1024"),
    (["sweep", "x.toml", "--workers", "-1"], "--workers: -1 is out of range"),
    (["sweep", "x.toml", "--max-points", "0"], "--max-points: 0 is out of range"),
    (["sweep", "x.toml", "--connect-timeout", "0"], "--connect-timeout: 0 is out of range"),
    (["sweep", "x.toml", "--connect-timeout", "nan"], "--connect-timeout: nan is out of range"),
]


@pytest.mark.parametrize("argv,expect", NUMBER_CASES,
                         ids=[" ".join(a)[:50] for a, _ in NUMBER_CASES])
def test_bad_number(capsys, argv, expect):
    cli(argv, capsys, expect)


def test_reference_problems(tmp_path, capsys):
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        cli(["validate", "tiny", "--reference", "cuda"], capsys,
            "--reference cuda: no CUDA device is available here")
    cli(["validate", "tiny", "--reference", tmp_path / "none.npz"], capsys, "not found")
    g = tmp_path / "garbage.npz"
    g.write_bytes(b"PK\x03\x04 definitely not a zip")
    cli(["validate", "tiny", "--reference", g], capsys, "is not a reference run")
    h = tmp_path / "half.npz"
    np.savez(h, logits=np.zeros((2, 3), np.float32))
    cli(["validate", "tiny", "--reference", h], capsys, "lacks model, device, prompt")
    o = tmp_path / "other.npz"
    np.savez(o, model="gpt2-small", device="cpu", prompt=np.array([1]), tokens=np.array([2]),
             logits=np.zeros((1, 4), np.float32), info=np.array("x"))
    cli(["validate", "tiny", "--reference", o], capsys, "was made for gpt2-small, not tiny")
    cli(["validate", "bi_no_module:model", "--reference", "cpu"], capsys,
        "cannot import module 'bi_no_module'")  # any MODEL is validated against itself


def test_gpu_baseline_problems(tmp_path, capsys):
    cli(["compare", "gpt2-small", "--gpu", tmp_path / "none.json"], capsys, "not found")
    b = tmp_path / "bad.json"
    b.write_text("{not json")
    cli(["compare", "gpt2-small", "--gpu", b], capsys, "is not valid JSON")
    e = tmp_path / "empty.json"
    e.write_text('{"results": []}')
    cli(["compare", "gpt2-small", "--gpu", e], capsys, "is not a gpu_baseline measurement")
    m = tmp_path / "other.json"
    m.write_text(json.dumps({"method": {}, "info": {}, "results": [
        {"model": "gpt2-xl", "graph": {"ms_at": {"128": 3.5}}}]}))
    cli(["compare", "gpt2-small", "--gpu", m], capsys, "has no measurement of gpt2-small")


# ---------------------------------------------------------------- output paths

def test_unwritable_outputs_fail_before_the_work(tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cli(["compile", "gpt2-small", "-o", tmp_path], capsys, r"\(-o\) .* is a directory")
    cli(["compile", "gpt2-small", "-o", afile / "prog.txt"], capsys,
        "cannot be created: .* is a file")
    cli(["compile", "gpt2-small", "-o", "/proc/no/such/dir/prog.txt"], capsys,
        "cannot be created: the folder .* does not exist")
    cli(["run", "gpt2-small", "--timeline", afile / "t.json"], capsys, "timeline file")
    cli(["compare", "gpt2-small", "--plot", afile], capsys, "exists and is not a directory")
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n')
    cli(["sweep", spec, "--db", tmp_path], capsys, r"results store \(--db\) .* is a directory")
    cli(["sweep", spec, "--db", tmp_path / "s.db", "--csv", tmp_path], capsys, "CSV file")
    cli(["sweep", spec, "--db", tmp_path / "s.db", "--plot", afile], capsys, "plot directory")
    assert not (tmp_path / "s.db").exists()  # refused before the store was made


def test_a_results_store_that_is_not_a_database(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n')
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not an sqlite database, not at all" * 100)
    cli(["sweep", spec, "--db", db, "--in-process"], capsys, "file is not a database")
    cli(["sweep", spec, "--db", db, "--report"], capsys, "file is not a database")
    cli(["sweep", spec, "--db", tmp_path / "none.db", "--report"], capsys,
        "results store .* not found")


# ---------------------------------------------------------------- sweep specs

SPEC_CASES = [
    ("model = \n", "not valid TOML"),
    ('bogus = 1\n', "unknown key"),
    ('[grid]\nchanels = [2]\n', "unknown parameter 'chanels'"),
    ('[grid]\nchannels = []\n', "empty list"),
    ('grid = 3\n', r"\[grid\] must be a table"),
    ('fixed = 3\n', r"\[fixed\] must be a table"),
    ('points = 3\n', "points must be an array of tables"),
    ('model = "tiny"\nmodels = ["tiny"]\n', "model or models, not both"),
    ('clock_scaling = "ps"\n', "clock_scaling = 'ps'"),
    ('skip_prompt = "yes"\n', "skip_prompt = 'yes' must be true or false"),
    ('hw = "no-such-hw"\n', "base hardware config"),
    ('hw = 5\n', "hw = 5 must be a config name"),
    ('name = 5\n', "name = 5 must be a non-empty string"),
    ('prompt = []\n', "prompt is an empty list"),
    ('[grid]\nchannels = [2, 4]\n[[points]]\nchannels = 8\n', "also a \\[grid\\] axis"),
    ('[grid]\nchannels = ' + str(list(range(1, 201))) + '\nrows = '
     + str(list(range(1, 201))) + '\n', r"expands to 40,000 points .* limit of 10,000.*"
                                        r"--max-points 40000"),
]


@pytest.mark.parametrize("text,expect", SPEC_CASES, ids=[t[:30] for t, _ in SPEC_CASES])
def test_bad_sweep_spec(tmp_path, capsys, text, expect):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    cli(["sweep", spec, "--db", tmp_path / "s.db", "--in-process"], capsys, expect)
    assert not (tmp_path / "s.db").exists()


def test_sweep_spec_file_problems(tmp_path, capsys):
    cli(["sweep", tmp_path / "none.toml"], capsys, "sweep spec .* not found")
    cli(["sweep", tmp_path], capsys, "is a directory")
    b = tmp_path / "bin.toml"
    b.write_bytes(b"\xff\xfe\x00\x01")
    cli(["sweep", b], capsys, "not UTF-8 text")


def test_the_point_limit_is_checked_before_expanding(tmp_path):
    """A grid of 10^12 points is refused from its axis lengths, at once."""
    from workloads import sweeps as S

    axis = list(range(1, 1001))
    raw = {"grid": {"channels": axis, "rows": axis, "banks": axis, "vector_lanes": axis}}
    with pytest.raises(S.SpecError, match="1,000,000,000,000 points"):
        S.spec_from_dict(raw)
    assert len(S.spec_from_dict({"grid": {"channels": [1, 2]}}, max_points=2).points) == 2
    with pytest.raises(S.SpecError, match="limit of 1"):
        S.spec_from_dict({"grid": {"channels": [1, 2]}}, max_points=1)


def test_cluster_address_problems(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n')
    db = tmp_path / "s.db"
    cli(["sweep", spec, "--db", db, "--cluster", "local:abc"], capsys,
        "'abc' is not a worker count in 1..1024")
    cli(["sweep", spec, "--db", db, "--cluster", "local:0"], capsys, "not a worker count")
    cli(["sweep", spec, "--db", db, "--cluster", "tcp://"], capsys,
        "is not a Dask scheduler address")
    cli(["sweep", spec, "--db", db, "--cluster", "host:99999"], capsys,
        "port 99999 is out of range")
    assert not db.exists()


def test_an_unreachable_scheduler_fails_within_its_timeout(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n')
    cli_subprocess(["sweep", spec, "--db", tmp_path / "s.db", "--cluster", "tcp://127.0.0.1:9",
                    "--connect-timeout", "2", "--no-progress"],
                   "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' within 2 s")


def test_an_unreadable_model_makes_an_invalid_point_an_unresolved_one_an_error(tmp_path):
    """A model file that cannot be read is recorded invalid with the reason (never retried: a new
    file has a new key); a model that cannot be resolved (a missing file, a module whose import
    needs a package that is not installed) is an error, tried again on resume."""
    from workloads import sweeps as S

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07\xff\xff\xff\xff" + b"junk" * 10)
    (tmp_path / "m.py").write_text("raise ImportError('needs a package that is not here')\n")
    sys.modules.pop("m", None)
    sys.path.insert(0, str(tmp_path))
    try:
        spec = S.spec_from_dict({"models": [str(bad), "m:model", str(tmp_path / "none.onnx")],
                                 "tokens": 2})
        res = S.run_sweep(spec, tmp_path / "s.db", workers=0, progress=False, log=lambda s: None)
        again = S.run_sweep(spec, tmp_path / "s.db", workers=0, progress=False,
                            log=lambda s: None)
    finally:
        sys.path.remove(str(tmp_path))
    assert res.counts == {"ok": 0, "invalid": 1, "error": 2}
    reasons = res.df["reason"].tolist()
    assert res.df["status"].tolist() == ["invalid", "error", "error"]
    assert "cannot be read as a model" in reasons[0]
    assert "needs a package that is not here" in reasons[1]
    assert "none.onnx' not found" in reasons[2] and "tried again on resume" in reasons[2]
    assert again.n_run == 2 and again.n_skipped == 1  # invalid is final, unresolved is not


# ---------------------------------------------------------------- the real command line

def test_subprocess_cases(tmp_path):
    """A few cases through ``python -m workloads.cli``: the same one line, in under 10 s."""
    f = tmp_path / "bad.toml"
    f.write_text(dump_toml(mutated(BASE, "timing.nREFI", 250)))
    cli_subprocess(["trace", TRACE, "--hw", f], "nREFI = 250 leaves no room")
    cli_subprocess(["run", "gpt2-small", "--tokens", "0"], "--tokens: 0 is out of range")
    cli_subprocess(["run", "gpt2-small", "--tokens", "5000"], "context of 1024")
    cli_subprocess(["compare", "gpt2-small", "--gpu", "V100"], "unknown GPU 'V100'")
    t = tmp_path / "t.trace"
    t.write_text("AiM MAC_ABK 64 0x1 99999\n")
    cli_subprocess(["trace", t], r"t.trace:1: row 99999 out of range")


def test_the_entry_point_script(tmp_path):
    """The installed ``pimsim`` script follows the same contract."""
    exe = Path(sys.executable).parent / "pimsim"
    if not exe.exists():
        pytest.skip("no pimsim script beside this interpreter")
    r = subprocess.run([str(exe), "run", "gpt2-small", "--seed", "-4"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--seed: -4" in r.stderr


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(capsys, monkeypatch):
    """A pimsim bug (not bad input): one line naming the exception and --debug; exit 2."""
    import pimsim.cli as core

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(core, "_cmd_trace", boom)
    assert main(["trace", TRACE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "trace", TRACE])
    with pytest.raises(KeyError):
        main(["trace", TRACE, "--debug"])


def test_user_errors_reraise_under_debug():
    from pimsim.errors import UserError

    with pytest.raises(UserError, match="not found"):
        main(["--debug", "trace", "/no/such/file.trace"])


def test_the_error_family():
    from compiler.frontends import UnsupportedOpError
    from compiler.passes.lower import LoweringError
    from pimsim.config import ConfigError
    from pimsim.errors import UserError
    from pimsim.trace import TraceError
    from workloads.models.resolve import ModelError
    from workloads.sweeps import PointError, SpecError

    for cls in (ConfigError, TraceError, ModelError, SpecError, PointError, UnsupportedOpError,
                LoweringError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    assert str(UserError("the problem", "the fix")) == "the problem; the fix"
    import pimsim.cli

    assert not hasattr(pimsim.cli, "UserError") or pimsim.cli.UserError is UserError
    assert main.__globals__.get("UserError", UserError) is UserError  # the pimsim command's


def test_validation_failure_keeps_exit_status_1(capsys, monkeypatch):
    from workloads import session
    from workloads.validation import ValidationResult

    monkeypatch.setattr(session, "validate", lambda *a, **k: ValidationResult({
        "model": "tiny", "hw": "pim-gpt", "asic_math": "approx", "reference_device": "cpu",
        "tokens": 1, "max_abs_err": 1.0, "max_rel_err": 1.0, "min_cosine": 0.0,
        "top1_agreement": 0.0, "top1_agreement_decisive": 0.0, "decisive_steps": 1,
        "greedy_tokens_match": False, "passed": False, "tolerance": {}}))
    assert main(["validate", "tiny", "--tokens", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "PASSED" not in out


def test_the_read_only_store_writes_nothing(tmp_path):
    from pimsim.errors import UserError
    from workloads import sweeps as S
    from workloads.sweeps.store import Store, to_dataframe

    spec = S.spec_from_dict({"model": "tiny", "tokens": 2, "grid": {"channels": [2, 4]}},
                            name="ro")
    db = tmp_path / "ro.db"
    S.run_sweep(spec, db, workers=0, progress=False, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    df = to_dataframe(db, "ro")
    assert list(df["status"]) == ["ok", "ok"]
    with Store(db, readonly=True) as st:
        assert st.count() == 2
        with pytest.raises(UserError, match="readonly"):
            st.write({"key": "k", "status": "ok", "model": "m", "prompt": 1, "tokens": 1,
                      "schedule": "serial", "skip_prompt": True, "version": "v", "hw": {}})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(UserError, match="not found"):
        to_dataframe(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    con = sqlite3.connect(db)  # the store is still a normal, writable database
    assert con.execute("SELECT COUNT(*) FROM points").fetchone()[0] == 2
    con.close()


# ---------------------------------------------------------------- root causes: models, systems

@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained (config.json, model.safetensors)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_tiny import tiny_model

    d = tmp_path_factory.mktemp("hf") / "llama"
    tiny_model("llama").save_pretrained(d)
    return d


def _hf_copy(src: Path, dst: Path, *, layers: int | None = None, drop: str | None = None,
             rename: tuple[str, str] | None = None, reshape: str | None = None) -> Path:
    """A copy of the saved folder with its config or its weight file edited."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if layers is not None:
        cfg = json.loads((dst / "config.json").read_text())
        cfg["num_hidden_layers"] = layers
        (dst / "config.json").write_text(json.dumps(cfg))
    sd = load_file(dst / "model.safetensors")
    if drop is not None:
        del sd[drop]
    if rename is not None:
        sd[rename[1]] = sd.pop(rename[0])
    if reshape is not None:
        sd[reshape] = sd[reshape][:-1].clone()
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit, expect", [
    ({"drop": "model.layers.1.mlp.up_proj.weight"},
     r"1 tensor\(s\) missing from the weight files \(model.layers.1.mlp.up_proj.weight\)"),
    ({"rename": ("model.norm.weight", "model.final_norm.weight")},
     r"missing from the weight files \(model.norm.weight\).*not in the model config.json "
     r"describes \(model.final_norm.weight\)"),
    ({"layers": 3}, r"9 tensor\(s\) missing .*model.layers.2.* and 6 more"),
    ({"layers": 1}, r"9 tensor\(s\) in the weight files but not .*model.layers.1"),
    ({"reshape": "model.layers.0.self_attn.q_proj.weight"}, r"q_proj"),
], ids=["tensor-deleted", "tensor-renamed", "config-more-layers", "config-fewer-layers",
        "tensor-reshaped"])
def test_hf_folder_whose_weights_do_not_match_its_config(saved_llama, tmp_path, capsys, edit,
                                                        expect):
    """Refused (no random fill-ins), naming the tensors, on run and on validate."""
    d = _hf_copy(saved_llama, tmp_path / "edited", **edit)
    line = cli(["run", d, "--functional", "--tokens", "1"], capsys, expect)
    assert "config.json" in line
    cli(["validate", d, "--tokens", "1", "--reference", "cpu"], capsys, expect)


def test_an_intact_hf_folder_runs_the_same_tokens_twice(saved_llama, capsys):
    """The valid folder loads with its own weights: two functional runs agree token for token."""
    runs = []
    for _ in range(2):
        assert main(["run", str(saved_llama), "--functional", "--tokens", "2", "--json",
                     "--no-progress"]) == 0
        runs.append(json.loads(capsys.readouterr().out)["tokens"])
    assert runs[0] == runs[1] and len(runs[0]) == 2


def _system_file(folder: Path, device: str, devices: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "system.toml"
    f.write_text(f'name = "two"\n[system]\ndevice = "{device}"\ndevices = {devices}\n')
    return f


def test_a_system_files_device_path_is_read_against_its_folder(tmp_path, monkeypatch):
    """Not against the working directory: the device beside the system file is used, from any
    working directory, and one in the working directory only is not found."""
    from pimsim.config import load_config

    dev = mutated(AIM, "organization.channels", 16)
    dev["organization"]["channel_mask"] = 0
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "dev.toml").write_text(dump_toml(dev))
    f = _system_file(tmp_path / "sys", "dev.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dev.toml").write_text(dump_toml(AIM))  # 32 channels: must not be picked
    monkeypatch.chdir(elsewhere)
    cfg = load_config(f)
    assert (cfg.org.channels, cfg.system.devices, cfg.name) == (16, 2, "two")
    cfg = load_config(os.path.relpath(f, elsewhere))
    assert cfg.org.channels == 16


def test_a_system_files_missing_device_names_where_it_looked(tmp_path, capsys, monkeypatch):
    (tmp_path / "dev.toml").write_text(dump_toml(AIM))  # in the working directory only
    f = _system_file(tmp_path / "sys", "dev.toml")
    monkeypatch.chdir(tmp_path)
    cli(["compile", "tiny", "--hw", f], capsys,
        r"device = 'dev.toml' not found \(read against the system file's folder: .*sys.dev"
        r"\.toml'\); give the device config's path relative to the system file")


@pytest.mark.parametrize("flags, expect", [
    (["--tp", "4"], r"--tp 4 x pp 1 \(the config's\) = 4 devices, but hardware config "
                    r"aim-cxl-8 has 8 devices; add --pp 2 \(4 x 2 = 8\), or --devices 4"),
    (["--pp", "2"], r"tp 8 \(the config's\) x --pp 2 = 16 devices, but .* has 8 devices; add "
                    r"--tp 4 \(4 x 2 = 8\)"),
    (["--tp", "3"], r"--tp 3 x pp 1 .* = 3 devices, but .* 8 devices; give --tp T and --pp P "
                    r"with T x P = 8"),
    (["--tp", "4", "--pp", "4"], r"--tp 4 x --pp 4 = 16 devices, but .* has 8 devices"),
], ids=["tp-alone", "pp-alone", "tp-not-dividing", "tp-and-pp"])
def test_tp_or_pp_alone_keep_a_system_configs_device_count(capsys, flags, expect):
    cli(["compile", "tiny", "--hw", "aim-cxl-8", *flags], capsys, expect)


@pytest.mark.parametrize("argv, expect", [
    (["run", "tiny", "--tp", "4", "--ep", "2"],
     r"--ep 2 is not the tensor-parallel size 4 \(4 devices, tp 4 x pp 1\).*; use --ep 4 or "
     r"--enable-expert-parallel \(or --tp 2 --devices 2\)"),
    (["serve", "tiny", "--devices", "4", "--ep", "3"], r"--ep 3 does not divide the 4 devices"),
    (["compare", "tiny", "--hw", "aim-cxl-8", "--ep", "4"],
     r"--ep 4 is not the tensor-parallel size 8"),
    (["compile", "tiny", "--ep", "2", "--tp-attention", "master"],
     r"expert parallelism over 2 devices with tp 2 and master attention; use --ep equal to "
     r"--tp, with attention split or one-device"),
    (["run", "tiny", "--ep", "0"], r"--ep: 0 is out of range"),
], ids=["ep-not-tp", "ep-not-dividing", "ep-config-devices", "ep-master", "ep-zero"])
def test_bad_expert_parallel_sizes(capsys, argv, expect):
    cli([*argv, "--no-cache"], capsys, expect)


def test_aim_trace_of_a_pipelined_system_writes_every_stage(tmp_path, capsys):
    """One trace per pipeline stage (the stage in the file name), each the stage's program."""
    from pimsim.aim_emit import aim_trace_text
    from workloads.session import compile_model, hw_config

    out = tmp_path / "traces" / "step.trace"
    out.parent.mkdir()
    assert main(["compile", "tiny", "--pp", "2", "--aim-trace", str(out), "--no-progress",
                 "--no-cache"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["step.stage0.trace",
                                                            "step.stage1.trace"]
    assert "pipeline stage 1 of 2" in text and str(out.parent / "step.stage1.trace") in text
    cfg = hw_config("pim-gpt", pp=2)
    c = compile_model("tiny", cfg, cache=False)
    for s, prog in enumerate(c.programs):
        assert (out.parent / f"step.stage{s}.trace").read_text() == aim_trace_text(prog, cfg, 63)
    assert c.programs[0].to_text(63) != c.programs[1].to_text(63)


def test_aim_trace_stage_files_are_checked_before_the_work(tmp_path, capsys):
    (tmp_path / "step.stage1.trace").mkdir()  # a directory where stage 1's trace would go
    cli(["compile", "tiny", "--pp", "2", "--aim-trace", tmp_path / "step.trace"], capsys,
        r"step.stage1.trace.* is a directory")


# ---------------------------------------------------------------- the compiled-program cache

@pytest.fixture(scope="module")
def tiny_compiled():
    """One weightless compile of ``tiny`` on pim-gpt (what a cache entry holds)."""
    from pimsim.config import load_config
    from workloads.compiling import compile_with_source

    cfg = load_config("pim-gpt")
    return cfg, compile_with_source("tiny", cfg, cache=False)[0]


def _still_unpickles(data: bytes) -> bytes:
    """A flipped bit in the payload that still unpickles: the model's name tiny -> tinz."""
    head, _, payload = data.partition(b"\n")
    i = payload.index(b"tiny")
    bad = payload[:i + 3] + bytes([payload[i + 3] ^ 0x03]) + payload[i + 4:]
    import pickle

    assert getattr(pickle.loads(bad), "program", None) is not None  # a plausible program
    return head + b"\n" + bad


CACHE_DAMAGE = {
    "payload-bit-that-unpickles": _still_unpickles,
    "payload-last-byte": lambda d: d[:-1] + bytes([d[-1] ^ 0xFF]),
    "checksum-digit": lambda d: d[:30] + (b"0" if d[30:31] != b"0" else b"1") + d[31:],
    "truncated": lambda d: d[:len(d) // 2],
    "bare-pickle": lambda d: d.partition(b"\n")[2],
    "empty": lambda d: b"",
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_cache_entry_is_a_miss_with_a_warning(tmp_path, monkeypatch, capsys,
                                                         tiny_compiled, damage):
    from workloads import compile_cache

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    cfg, c = tiny_compiled
    path = compile_cache.store("tiny", cfg, c)
    good = path.read_bytes()
    assert good.startswith(b"pimsim-program-cache ")
    assert compile_cache.load("tiny", cfg).program.to_text(0) == c.program.to_text(0)
    assert capsys.readouterr().err == ""  # a good entry: no warning
    path.write_bytes(CACHE_DAMAGE[damage](good))
    assert compile_cache.load("tiny", cfg) is None  # a miss
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pimsim: warning: compiled-program cache entry")
    assert "compiling again" in err[0]
    assert not path.exists()  # dropped: the next compile writes it anew


def test_a_damaged_cache_entry_is_recompiled_and_rewritten(tmp_path, monkeypatch, capsys,
                                                           tiny_compiled):
    from workloads import compile_cache
    from workloads.compiling import compile_with_source

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    cfg, c = tiny_compiled
    path = compile_cache.store("tiny", cfg, c)
    path.write_bytes(_still_unpickles(path.read_bytes()))
    again, src = compile_with_source("tiny", cfg)
    assert src is not None  # compiled again, not read from the damaged entry
    assert again.program.to_text(0) == c.program.to_text(0)
    assert len(capsys.readouterr().err.splitlines()) == 1  # the one warning
    back = compile_cache.load("tiny", cfg)  # the rewritten entry passes its check
    assert back.program.to_text(0) == c.program.to_text(0) and capsys.readouterr().err == ""



def test_a_compile_for_another_context_is_cached_under_its_own_key(tmp_path, monkeypatch):
    """``context`` (KV caches reserved for that many tokens) is part of the key: the second
    compile for a context comes from the cache with that context, another context does not."""
    from pimsim.config import load_config
    from workloads import compile_cache
    from workloads.compiling import compile_with_source

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    cfg = load_config("pim-gpt")
    assert compile_cache.cache_key("tiny", cfg, 48) != compile_cache.cache_key("tiny", cfg)
    assert compile_cache.cache_key("tiny", cfg, 48) != compile_cache.cache_key("tiny", cfg, 40)
    first, src = compile_with_source("tiny", cfg, context=48)
    assert src is not None and first.spec.n_ctx == 48
    again, src = compile_with_source("tiny", cfg, context=48)
    assert src is None  # read back from the cache
    assert again.spec.n_ctx == 48 and again.program.to_text(0) == first.program.to_text(0)
    other, src = compile_with_source("tiny", cfg, context=40)
    assert src is not None and other.spec.n_ctx == 40
    own, src = compile_with_source("tiny", cfg)
    assert src is not None and own.spec.n_ctx != 48

# ---------------------------------------------------------------- the functional-run cache

def _functional_run(**kw):
    """A functional run of ``tiny`` (3 prompt + 4 generated tokens): tokens, cycles, logits."""
    from workloads.session import simulate

    r = simulate("tiny", tokens=4, prompt=3, functional=True, keep_logits=True, **kw)
    return r.report.tokens, r.report.cycles, r.logits


FUNCTIONAL_DAMAGE = {
    "image-last-byte": lambda d: d[:-1] + bytes([d[-1] ^ 0x01]),
    "pickle-byte": lambda d: d[:120] + bytes([d[120] ^ 0x01]) + d[121:],
    "checksum-digit": lambda d: d[:30] + (b"0" if d[30:31] != b"0" else b"1") + d[31:],
    "truncated": lambda d: d[:len(d) // 2],
    "no-header": lambda d: d.partition(b"\n")[2],
    "empty": lambda d: b"",
}


@pytest.mark.parametrize("damage", list(FUNCTIONAL_DAMAGE))
def test_a_damaged_functional_entry_is_a_miss_with_a_warning_and_rewritten(
        tmp_path, monkeypatch, capsys, damage):
    """A damaged entry of the functional-run cache is a miss (one warning line): the run is
    prepared again, gives the same tokens, cycles and logits, and rewrites the entry."""
    from pimsim.config import load_config
    from workloads import functional_cache

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    first = _functional_run(seed=3)
    path = functional_cache._entry(functional_cache.cache_key("tiny", load_config("pim-gpt"), 3))
    good = path.read_bytes()
    assert good.startswith(b"pimsim-functional-cache ")
    capsys.readouterr()
    path.write_bytes(FUNCTIONAL_DAMAGE[damage](good))
    again = _functional_run(seed=3)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pimsim: warning: functional-run cache entry")
    assert "preparing the run again" in err[0]
    assert again[:2] == first[:2] and np.array_equal(again[2], first[2])
    assert functional_cache.load("tiny", load_config("pim-gpt"), 3) is not None  # rewritten
    assert _functional_run(seed=3)[:2] == first[:2] and capsys.readouterr().err == ""


def test_a_cached_functional_run_matches_an_uncached_one(tmp_path, monkeypatch):
    """Read back from the cache (no compile, no image built: torch's exporter is not called),
    a functional run gives the uncached run's tokens, cycles and logits; the cached image stays
    pristine (a run writes its KV caches into its own copy); the seed and the context are part
    of the key."""
    import compiler.pipeline
    from pimsim.config import load_config
    from workloads import functional_cache

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    cfg = load_config("pim-gpt")
    uncached = _functional_run(cache=False)
    assert not (tmp_path / "functional").exists()  # --no-cache writes nothing
    written = _functional_run()
    assert len(list((tmp_path / "functional").iterdir())) == 1
    monkeypatch.setattr(compiler.pipeline, "compile_model",
                        lambda *a, **k: pytest.fail("compiled again despite the cache"))
    for _ in range(2):  # twice: the first cached run did not change the entry
        got = _functional_run()
        assert got[:2] == uncached[:2] == written[:2]
        assert np.array_equal(got[2], uncached[2])
    keys = {functional_cache.cache_key("tiny", cfg, 0), functional_cache.cache_key("tiny", cfg, 1),
            functional_cache.cache_key("tiny", cfg, 0, 48)}
    assert len(keys) == 3 and None not in keys
    c, images = functional_cache.load("tiny", cfg, 0)
    assert not c.mapping.weights  # the weights are in the image only
    assert images[0][0].bits.any() and images[0][0].words.ctypes.data % 4096 == 0


def test_the_functional_cache_is_off_without_a_cache_dir_and_for_other_models(
        tmp_path, monkeypatch):
    from pimsim.config import load_config
    from workloads import functional_cache

    cfg = load_config("pim-gpt")
    assert functional_cache.cache_key("mymod:model", cfg, 0) is None
    assert functional_cache.cache_key("model.onnx", cfg, 0) is None
    assert functional_cache.cache_key(str(tmp_path), cfg, 0) is None
    monkeypatch.setenv("PIMSIM_CACHE_DIR", "")
    assert functional_cache._entry(functional_cache.cache_key("tiny", cfg, 0)) is None
    monkeypatch.chdir(tmp_path)
    _functional_run()
    assert list(tmp_path.iterdir()) == []



def test_prune_removes_the_least_recently_used_entries_and_stale_half_written_files(tmp_path):
    """Oldest first until the rest fit; the entry just written stays even alone over the budget;
    a half-written file goes only once it is an hour old; other files are left alone."""
    from workloads import functional_cache as fc

    now = 1_000_000.0
    sizes = {"a": 300, "b": 200, "c": 100, "d": 50}  # a is the oldest, d the newest
    for i, (name, n) in enumerate(sizes.items()):
        p = tmp_path / f"{name}.bin"
        p.write_bytes(b"x" * n)
        os.utime(p, (now - 100 + i, now - 100 + i))
    (tmp_path / ".tmp-old.bin").write_bytes(b"x" * 1000)
    os.utime(tmp_path / ".tmp-old.bin", (now - fc.STALE_TMP_S - 1,) * 2)
    (tmp_path / ".tmp-new.bin").write_bytes(b"x" * 1000)
    os.utime(tmp_path / ".tmp-new.bin", (now - 10,) * 2)
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)
    removed = fc.prune(tmp_path, 300, keep=tmp_path / "d.bin", now=now)
    assert sorted(p.name for p in removed) == [".tmp-old.bin", "a.bin", "b.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-new.bin", "c.bin", "d.bin", "notes.txt"]
    assert fc.prune(tmp_path, 360, now=now) == []  # 150 bytes of entries fit
    assert [p.name for p in fc.prune(tmp_path, 10, keep=tmp_path / "d.bin", now=now)] == ["c.bin"]
    assert fc.prune(tmp_path, 0, keep=tmp_path / "d.bin", now=now) == []  # the one kept stays


def test_the_functional_cache_keeps_to_its_budget_dropping_the_least_recently_used(
        tmp_path, monkeypatch):
    """With room for two entries, a third run's entry replaces the one used least recently: a
    hit counts as a use. Read back or prepared again, every run gives the same numbers."""
    from pimsim.config import load_config
    from workloads import functional_cache

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    cfg = load_config("pim-gpt")
    first = _functional_run(seed=0)
    size = next((tmp_path / "functional").iterdir()).stat().st_size
    monkeypatch.setenv("PIMSIM_FUNCTIONAL_CACHE_GB", repr(2.5 * size / (1 << 30)))
    path = {k: functional_cache._entry(functional_cache.cache_key("tiny", cfg, k)) for k in range(3)}
    os.utime(path[0], (1, 1))  # long ago
    _functional_run(seed=1)
    assert path[0].exists() and path[1].exists()
    os.utime(path[1], (2, 2))  # entry 1 used after entry 0...
    hit = _functional_run(seed=0)  # ...until this hit uses entry 0 again
    assert hit[:2] == first[:2] and np.array_equal(hit[2], first[2])
    assert path[0].stat().st_mtime > 2
    _functional_run(seed=2)
    assert sorted(p.name for p in (tmp_path / "functional").iterdir()) == \
        sorted([path[0].name, path[2].name])
    again = _functional_run(seed=1)  # dropped: prepared again, the same numbers
    assert again[:2] == _functional_run(seed=1, cache=False)[:2]


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_bad_functional_cache_budget_is_named(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PIMSIM_FUNCTIONAL_CACHE_GB", value)
    cli(["run", "tiny", "--functional", "--tokens", "2"], capsys, expect="PIMSIM_FUNCTIONAL_CACHE_GB")


# ---------------------------------------------------------------- outputs against inputs

@pytest.fixture
def io_dir(tmp_path, monkeypatch):
    """A working directory with inputs to overwrite: a hardware config (an AiM one, with a
    symbolic and a hard link to it), a sweep spec, a request stream, an ONNX-named model file,
    a model folder and a measured GPU baseline; the shipped configs are copies here too."""
    import shutil

    import pimsim.config

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "hwconfigs" / "aim-gddr6.toml", "hw.toml")
    os.symlink("hw.toml", "link.toml")
    os.link("hw.toml", "hard.toml")
    Path("s.toml").write_text('model = "tiny"\ntokens = 2\n')
    Path("r.jsonl").write_text('{"arrival_s": 0, "prompt_len": 4, "output_len": 3}\n')
    Path("m.onnx").write_bytes(b"an onnx model")
    Path("folder").mkdir()
    Path("folder", "config.json").write_text("{}")
    Path("g.json").write_text("{}")
    Path("sub").mkdir()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copy(ROOT / "hwconfigs" / "pim-gpt.toml", shipped / "pim-gpt.toml")
    monkeypatch.setattr(pimsim.config, "HWCONFIG_DIR", shipped)
    return tmp_path


# (argv, what the message must say); every case fails before any compile
OVERWRITE_CASES = [
    (["compile", "tiny", "--hw", "hw.toml", "-o", "hw.toml"],
     r"program text file \(-o\) 'hw.toml' is the hardware config \(--hw\)"),
    (["compile", "tiny", "--hw", "hw.toml", "--aim-trace", "hw.toml"],
     r"AiM trace file \(--aim-trace\) 'hw.toml' is the hardware config"),
    (["compile", "tiny", "--hw", "hw.toml", "--aim-trace", "link.toml"],
     "'link.toml' is the hardware config"),  # a symbolic link to the input
    (["compile", "tiny", "--hw", "link.toml", "-o", "hw.toml"], "'hw.toml' is the hardware config"),
    (["compile", "tiny", "--hw", "hw.toml", "-o", "hard.toml"],
     "'hard.toml' is the hardware config"),  # a hard link: os.path.samefile
    (["compile", "tiny", "--hw", "hw.toml", "-o", "sub/../hw.toml"],
     "'sub/../hw.toml' is the hardware config"),
    (["compile", "tiny", "-o", "shipped/pim-gpt.toml"],
     "is the hardware config .*pim-gpt.toml"),  # a shipped config by name
    (["compile", "m.onnx", "-o", "m.onnx"], r"'m.onnx' is the model 'm.onnx'"),
    (["run", "folder", "--timeline", "folder/config.json"],
     "'folder/config.json' is a file of the model 'folder'"),
    (["compile", "tiny", "-o", "x.txt", "--aim-trace", "./x.txt", "--hw", "hw.toml"],
     r"AiM trace file \(--aim-trace\) './x.txt' is also the program text file \(-o\)"),
    (["run", "tiny", "--hw", "hw.toml", "--timeline", "hw.toml"], "is the hardware config"),
    (["run", "tiny", "--functional", "--logits", "l.npy", "--timeline", "l.npy"],
     r"\(--logits\) 'l.npy' is also the timeline file \(--timeline\)"),
    (["sweep", "s.toml", "--csv", "s.toml"], r"CSV file \(--csv\) 's.toml' is the sweep spec"),
    (["sweep", "s.toml", "--db", "s.toml"], r"results store \(--db\) 's.toml' is the sweep spec"),
    (["sweep", "s.toml", "--csv", "s.db"], r"results store \(--db\) 's.db' is also the CSV file"),
    (["sweep", "s.toml", "--report", "--db", "hw.toml", "--csv", "hw.toml"],
     r"CSV file \(--csv\) 'hw.toml' is the results store"),  # --report reads the store
    (["serve", "tiny", "--requests", "r.jsonl", "--csv", "r.jsonl"],
     r"CSV file \(--csv\) 'r.jsonl' is the request file \(--requests\)"),
    (["serve", "tiny", "--hw", "hw.toml", "--csv", "link.toml"], "is the hardware config"),
    (["compare", "tiny", "--gpu", "g.json", "--plot", "g.json"],
     r"plot directory \(--plot\) 'g.json' is the GPU baseline file \(--gpu\)"),
    (["compare", "folder", "--plot", "folder"], r"plot directory \(--plot\) 'folder' is the model"),
]


@pytest.mark.parametrize("argv,expect", OVERWRITE_CASES,
                         ids=[" ".join(a[3:])[:40] for a, _ in OVERWRITE_CASES])
def test_an_output_never_overwrites_an_input_or_another_output(io_dir, capsys, argv, expect):
    before = {p: p.read_bytes() for p in io_dir.rglob("*") if p.is_file()}
    cli(argv, capsys, expect)
    after = {p: p.read_bytes() for p in io_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


# an output in a missing folder, or that is a folder
FOLDER_CASES = [
    (["compile", "tiny", "-o", "nodir/p.txt"], r"\(-o\) 'nodir/p.txt' cannot be created: the "
                                               r"folder 'nodir' does not exist"),
    (["compile", "tiny", "--hw", "hw.toml", "--aim-trace", "nodir/t.trace"], "folder 'nodir'"),
    (["run", "tiny", "--timeline", "nodir/t.json"], r"timeline file \(--timeline\).*'nodir'"),
    (["run", "tiny", "--functional", "--logits", "a/b/l.npy"], "the folder 'a/b' does not exist"),
    (["serve", "tiny", "--csv", "nodir/r.csv"], r"CSV file \(--csv\) .*does not exist"),
    (["sweep", "s.toml", "--csv", "nodir/s.csv"], "does not exist"),
    (["sweep", "s.toml", "--db", "nodir/s.db"], r"results store \(--db\) .*does not exist"),
    (["compare", "tiny", "--plot", "nodir/plots"], r"plot directory .* folder 'nodir' does not"),
    (["compile", "tiny", "-o", "sub"], r"\(-o\) 'sub' is a directory"),
    (["serve", "tiny", "--csv", "."], r"\(--csv\) '.' is a directory"),
    (["compile", "tiny", "-o", ""], r"program text file \(-o\) is an empty path"),
]


@pytest.mark.parametrize("argv,expect", FOLDER_CASES,
                         ids=[" ".join(a[2:])[:40] for a, _ in FOLDER_CASES])
def test_an_output_in_a_missing_folder_or_that_is_a_folder(io_dir, capsys, argv, expect):
    cli(argv, capsys, expect)
    assert not Path("nodir").exists() and not Path("a").exists()  # no folder created


def test_outputs_are_written_atomically(tmp_path):
    from pimsim.errors import UserError
    from pimsim.outputs import atomic_write

    f = tmp_path / "out.txt"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(f) as w:
            w.write("half of the new")
            raise RuntimeError("interrupted")
    assert f.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]  # no temporary left
    with atomic_write(f) as w:
        w.write("new")
    assert f.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
    link = tmp_path / "link.txt"
    link.symlink_to("out.txt")
    with atomic_write(link) as w:
        w.write("through the link")
    assert link.is_symlink() and f.read_text() == "through the link"
    with pytest.raises(UserError, match="cannot be written"):
        with atomic_write(tmp_path / "out.txt" / "x") as w:  # under a file
            w.write("x")


def test_the_cli_writes_its_outputs_whole(tmp_path, monkeypatch, capsys):
    """A compile's program text and AiM trace land whole, with no temporary files beside them."""
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "tiny", "--hw", "aim-gddr6", "-o", "p.txt", "--aim-trace",
                 "t.trace"]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == ["p.txt", "t.trace"]
    assert Path("t.trace").read_text().rstrip().endswith("AiM EOC")
    assert Path("p.txt").stat().st_size > 0


# ---------------------------------------------------------------- measured GPU figures

def _baseline(**result) -> dict:
    """A measured baseline of tiny that passes every check, with ``result``'s fields set."""
    r = {"model": "tiny", "graph": {"ms_at": {"32": 0.5}}, "mean_power_w": 200.0,
         "joules_per_token": 0.1}
    r.update(result)
    return {"method": "m", "info": {"gpu": "X"}, "results": [r]}


NAN, INF = float("nan"), float("inf")
# (the baseline, what the message must say)
GPU_FIGURE_CASES = {
    "ms-zero": (_baseline(graph={"ms_at": {"32": 0}}), r"graph.ms_at\['32'\] = 0 is not a time"),
    "ms-negative": (_baseline(graph={"ms_at": {"32": -4.0}}), r"= -4.0 is not a time per token"),
    "ms-nan": (_baseline(graph={"ms_at": {"32": NAN}}), r"= nan is not a time per token"),
    "ms-inf": (_baseline(graph={"ms_at": {"32": INF}}), r"= inf is not a time per token"),
    "ms-string": (_baseline(graph={"ms_at": {"32": "0.5"}}), r"= '0.5' is not a time per token"),
    "ms-bool": (_baseline(graph={"ms_at": {"32": True}}), r"= True is not a time per token"),
    "position-underscore": (_baseline(graph={"ms_at": {"1_0": 0.5}}), "has the position '1_0'"),
    "position-negative": (_baseline(graph={"ms_at": {"-1": 0.5}}), "has the position '-1'"),
    "joules-zero": (_baseline(joules_per_token=0.0), r"results\[0\] \(tiny\) joules_per_token = "
                                                     r"0.0 is not a"),
    "joules-nan": (_baseline(joules_per_token=NAN), "joules_per_token = nan is not an energy"),
    "joules-negative": (_baseline(joules_per_token=-1), "joules_per_token = -1 is not an energy"),
    "graph-joules-inf": (_baseline(graph={"ms_at": {"32": 0.5}, "j_per_token": INF}),
                         r"graph.j_per_token = inf is not an energy per token"),
    "power-zero": (_baseline(mean_power_w=0), "mean_power_w = 0 is not a power"),
    "power-negative": (_baseline(power={"mean_power_w": -5.0}),
                       r"power.mean_power_w = -5.0 is not a power"),
    "power-not-an-object": (_baseline(power="x"), "power = 'x' is not an object"),
    "empty-model": (_baseline(model=""), "lacks model"),
}


@pytest.mark.parametrize("case", list(GPU_FIGURE_CASES))
def test_impossible_gpu_figures(tmp_path, capsys, case):
    doc, expect = GPU_FIGURE_CASES[case]
    f = tmp_path / "g.json"
    f.write_text(json.dumps(doc))
    cli(["compare", "tiny", "--gpu", f, "--prompt", "4", "--tokens", "2"], capsys,
        "GPU baseline file .*g.json'.*" + expect)


def test_the_gpu_figure_cases_start_from_a_good_baseline(tmp_path):
    from workloads.comparison import check_gpu

    f = tmp_path / "g.json"
    f.write_text(json.dumps(_baseline()))
    check_gpu(str(f), ["tiny"])  # no error: each case above breaks one figure only


def test_duplicate_gpu_results_and_keys(tmp_path, capsys):
    doc = _baseline()
    doc["results"].append(dict(doc["results"][0]))
    f = tmp_path / "g.json"
    f.write_text(json.dumps(doc))
    argv = ["compare", "tiny", "--gpu", f, "--prompt", "4", "--tokens", "2"]
    cli(argv, capsys, r"results\[0\] and results\[1\] both measure tiny; keep one result")
    f.write_text(json.dumps(_baseline()).replace('"32": 0.5', '"32": 0.5, "32": 0.7'))
    cli(argv, capsys, "gives the key '32' twice in one object")


@pytest.mark.parametrize("tp,expect", [
    ("3", "--gpu-tp 3: the measured file .* no measurement at tp 3"),
    ("0", "--gpu-tp: 0 is out of range"),
    ("-1", "--gpu-tp: -1 is out of range"),
    ("65", "--gpu-tp: 65 is out of range"),
    ("1.5", "--gpu-tp: '1.5' is not an integer"),
])
def test_impossible_gpu_tp(tmp_path, capsys, tp, expect):
    f = tmp_path / "g.json"
    f.write_text(json.dumps(_baseline()))
    cli(["compare", "tiny", "--gpu", f, "--prompt", "4", "--tokens", "2", "--gpu-tp", tp],
        capsys, expect)


@pytest.mark.parametrize("tp", [0, -1, 65, True, 2.0, "2"])
def test_impossible_gpu_tp_through_the_api(tp):
    from pimsim.errors import UserError
    from workloads import session

    with pytest.raises(UserError, match="--gpu-tp .* is not a GPU count"):
        session.compare("tiny", gpu="H100", prompt=4, tokens=2, gpu_tp=tp)


# ---------------------------------------------------------------- Hugging Face refusals

def _hf_configs() -> dict:
    """Tiny transformers configs of features pimsim refuses (built here, nothing downloaded)."""
    import transformers as T

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                 max_position_embeddings=64)
    return {  # (a sliding window is modelled: tests/test_attention_variants.py)
        "gemma2-everything": (lambda: T.Gemma2Config(sliding_window=16, **small),
                              r"attention soft-capping .* \(and logit soft-capping"),
        "gemma2-attention-softcap": (
            lambda: T.Gemma2Config(sliding_window=None, attn_logit_softcapping=50.0,
                                   final_logit_softcapping=None, **small),
            r"attention soft-capping \(attn_logit_softcapping = 50.0\)"),
        "gemma2-final-softcap": (
            lambda: T.Gemma2Config(sliding_window=None, attn_logit_softcapping=None,
                                   final_logit_softcapping=30.0, **small),
            r"logit soft-capping \(final_logit_softcapping = 30.0\)"),
    }


@pytest.mark.parametrize("name", ["gemma2-everything", "gemma2-attention-softcap",
                                  "gemma2-final-softcap"])
@pytest.mark.parametrize("command", [["compile"], ["run", "--functional", "--tokens", "1"]])
def test_unsupported_hf_features_are_refused_as_bad_input(tmp_path, capsys, name, command):
    """A config.json is enough: the refusal comes before any weight is read."""
    make, expect = _hf_configs()[name]
    folder = tmp_path / name
    make().save_pretrained(folder)
    line = cli([command[0], folder, *command[1:]], capsys, f"model '{name}' uses " + expect)
    assert "which pimsim does not support" in line


def test_unsupported_hf_features_through_module_attribute_and_at_trace_time():
    from pimsim.errors import UserError
    from workloads.models.decode_attention import decode_attention
    from workloads.models.hf_decode import UnsupportedFeatureError, decode_step_module

    assert issubclass(UnsupportedFeatureError, UserError)
    model = type("M", (), {"config": _hf_configs()["gemma2-attention-softcap"][0]()})()
    with pytest.raises(UnsupportedFeatureError, match="attention soft-capping"):
        decode_step_module(model)  # a module:attribute model object is wrapped here
    import torch

    q = k = v = torch.zeros(1, 2, 1, 4)
    with pytest.raises(UnsupportedFeatureError, match="soft-capping"):  # the export's backstop
        decode_attention(None, q, k, v, None, softcap=50.0)


# ---------------------------------------------------------------- quiet Hugging Face loads

@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory):
    """A tiny random GPT-2 saved with its weights (its config's bos / eos ids lie outside the
    vocabulary: transformers warns about that on every load)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_tiny import tiny_model

    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    return folder


def test_a_hugging_face_load_prints_nothing_to_stderr(tiny_hf_folder, capsys):
    import transformers.utils.logging as hl

    hl.set_verbosity_info()  # the user's own settings: restored after each load
    hl.enable_progress_bar()
    try:
        capsys.readouterr()
        assert main(["run", str(tiny_hf_folder), "--functional", "--tokens", "2",
                     "--no-progress"]) == 0
        cap = capsys.readouterr()
        assert "generated tokens" in cap.out and cap.err == ""
        assert hl.get_verbosity() == hl.INFO and hl.is_progress_bar_enabled()
    finally:
        hl.set_verbosity_warning()


def test_quiet_hf_restores_the_users_settings_and_scopes_its_filter():
    import warnings

    import transformers.utils.logging as hl

    from workloads.models.hf_quiet import quiet_hf

    hl.set_verbosity_debug()
    hl.disable_progress_bar()
    filters = list(warnings.filters)
    try:
        with quiet_hf():
            assert hl.get_verbosity() == hl.ERROR and not hl.is_progress_bar_enabled()
        assert hl.get_verbosity() == hl.DEBUG and not hl.is_progress_bar_enabled()
        assert warnings.filters == filters
        with pytest.raises(KeyError):
            with quiet_hf():
                raise KeyError("inside")
        assert hl.get_verbosity() == hl.DEBUG and warnings.filters == filters
    finally:
        hl.set_verbosity_warning()
        hl.enable_progress_bar()


# ---------------------------------------------------------------- the ends of the ranges

def _max_latency_system(tmp_path: Path) -> Path:
    """aim-cxl-8 on 2 devices with every interconnect latency at the top of its range."""
    d = tomllib.loads((ROOT / "hwconfigs" / "aim-cxl-8.toml").read_text())
    d["system"].update(devices=2, tp=2, pp=1)
    d["interconnect"].update(port_latency_ns=1e9, phy_latency_ns=1e9, switch_latency_ns=1e9,
                             multicast_phy_factor=1e6)
    f = tmp_path / "slow-fabric.toml"
    f.write_text(dump_toml(d))
    return f


def test_an_interconnect_latency_at_the_top_of_its_range_runs_to_the_end(tmp_path, capsys):
    """Seconds of idle time per collective: the idle channels' refreshes are recorded in closed
    form (it used to issue them one by one, for hours)."""
    rc = main(["run", "tiny", "--hw", str(_max_latency_system(tmp_path)), "--tokens", "2",
               "--no-progress", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["ms_per_token"] > 5_000  # five seconds of path latency per transfer
    assert rep["breakdown"]["interconnect"] > 0.99 * sum(rep["breakdown"].values())


def test_a_4096_device_collective_is_the_closed_form():
    """The largest system's collectives: the formula, at once (the transfer-by-transfer
    simulation would take minutes: 33 million transfers per all-reduce)."""
    from pimsim.system import collective, resolve

    ic = resolve(4096, None, None).interconnect
    n, size = 4096, 8192
    share = math.ceil(size / n)
    s, s_mc = ic.serialise_ns(share), ic.serialise_ns(share, multicast=True)
    t = 0.0
    for _ in range(n - 1):
        t += s
    t += ic.latency_ns() + 10.0
    for _ in range(n):
        t += s_mc
    c = collective(ic, "all_reduce", n, size, 10.0)
    assert c.ns == t + ic.latency_ns(multicast=True)
    w = ic.wire_bytes(share) * 8
    assert c.wire_bits == 2 * n * (n - 1) * w + n * n * w
    assert c.cycles(500) == math.ceil(c.ns * 2 - 1e-9)


def _gemv_trace(n_rows: int) -> str:
    lines = ["# a long GEMV: one global-buffer fill, then MACs over many rows of channel 0"]
    lines.append("AiM WR_GB 32 0 0x80000000")
    for r in range(n_rows):
        lines.append(f"AiM MAC_ABK 8 0x80000000 {r % 16384}")
        if r % 64 == 63:
            lines.append("AiM RD_MAC 0 0x80000000")
            lines.append("AiM SYNC")
    lines.append("AiM EOC")
    return "\n".join(lines) + "\n"


def test_a_violation_deep_in_a_large_trace_is_reported_with_its_line(tmp_path, capsys,
                                                                       monkeypatch):
    """``trace --check`` streams the commands through the checker; one command of a line near
    the end (made illegal on its way to the checker: its row changed) is reported with that
    line, exit status 1."""
    from pimsim.check import StreamChecker
    from pimsim.spec.commands import cmd_id

    f = tmp_path / "big.trace"
    text = _gemv_trace(4000)
    f.write_text(text)
    deep = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.endswith(" 3900"))
    feed = StreamChecker.feed

    def corrupt(self, records, tags=None):
        records = records.copy()
        hit = np.flatnonzero((tags == deep) & (records[:, 4] == cmd_id("MAC_AB")))
        records[hit[:1], 3] += 1
        return feed(self, records, tags)

    monkeypatch.setattr(StreamChecker, "feed", corrupt)
    rc = main(["trace", str(f), "--check", "--no-refresh"])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert f"big.trace:{deep}: ch0 row_not_open: MAC_AB@" in err
    assert "check: 1 violation(s) of 1 rule(s)" in err
    assert "checker    1 violation(s)" in out


def test_an_empty_trace_is_refused(tmp_path, capsys):
    f = tmp_path / "empty.trace"
    f.write_text("")
    cli(["trace", f, "--check"], capsys, "empty.trace: the trace has no instructions")
    f.write_text("# nothing but a comment\n\n   \n")
    cli(["trace", f], capsys, "has no instructions .*; give at least one line")
