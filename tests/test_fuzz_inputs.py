"""Fuzzers of the two text readers: random mutations of a config and random trace lines raise
nothing but the UserError family (or load).

The config fuzzer mutates the parsed TOML of a shipped config (set, delete or retype any key, at
any depth) and, separately, the TOML text itself (characters replaced, inserted, lines dropped);
the trace fuzzer writes lines from the grammar with random operands and random tokens.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimsim.config import config_from_dict, load_config
from pimsim.errors import UserError
from pimsim.trace import parse_trace

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "hwconfigs" / "pim-gpt.toml").read_text()
BASE = tomllib.loads(TEXT)
AIM = load_config("aim-gddr6")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


PATHS = _paths(BASE)
NAMES = sorted({p[-1] for p in PATHS} | {"bogus", "nREFI", "cycles", "channels"})

values = st.recursive(
    st.one_of(
        st.integers(min_value=-(1 << 70), max_value=1 << 70),
        st.sampled_from([0, 1, -1, 2, 3, 100, 212, 250, 1 << 24, (1 << 24) + 1, 1 << 16,
                         4096, 4097, 10**6, 10**6 + 1, (1 << 63) - 1, 1 << 63, 1 << 64]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300]),
        st.booleans(),
        st.text(max_size=8),
        st.sampled_from(["bf16", "fp16", "fp32", "", "GDDR6"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
    max_leaves=6,
)

mutation = st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "add"]),
                     values, st.sampled_from(NAMES))


def _apply(d: dict, mut) -> None:
    path, kind, value, name = mut
    node = d
    for p in path[:-1]:
        if not isinstance(node, dict) or p not in node:
            return
        node = node[p]
    if not isinstance(node, dict):
        return
    last = path[-1]
    if kind == "delete":
        node.pop(last, None)
    elif kind == "set":
        node[last] = value
    elif isinstance(node.get(last), dict):
        node[last][name] = value
    else:
        node[name] = value


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=4))
def test_config_mutations_raise_only_user_errors(muts):
    d = copy.deepcopy(BASE)
    for m in muts:
        _apply(d, m)
    try:
        cfg = config_from_dict(d, source="fuzz.toml")
    except UserError as e:
        assert str(e).startswith("fuzz.toml: ") and "\n" not in str(e).strip()
        return
    # it loaded: then it is within every bound the loader promises
    assert 1 <= cfg.org.channels <= 4096 and 1 <= cfg.org.rows <= 1 << 24
    assert all(0 <= v <= 10**6 for v in cfg.timing.cycles.values())
    assert math.isfinite(cfg.asic.clock_mhz) and math.isfinite(cfg.link.clock_mhz)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(TEXT) - 1),
                          st.sampled_from(["replace", "insert", "drop_line"]),
                          st.text(alphabet=st.characters(codec="utf-8"), min_size=1,
                                  max_size=4)),
                min_size=1, max_size=5))
def test_config_text_mutations_raise_only_user_errors(tmp_path_factory, edits):
    text = TEXT
    for pos, kind, s in edits:
        pos = min(pos, max(len(text) - 1, 0))
        if kind == "replace":
            text = text[:pos] + s + text[pos + len(s):]
        elif kind == "insert":
            text = text[:pos] + s + text[pos:]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                del lines[pos % len(lines)]
            text = "".join(lines)
    f = tmp_path_factory.mktemp("fuzz") / "fuzz.toml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(f)
    except UserError:
        pass


OPS = ["MAC_ABK", "MAC_SBK", "WR_GB", "WR_BIAS", "RD_MAC", "WR_SBK", "RD_SBK", "WR_ABK",
       "COPY_BKGB", "COPY_GBBK", "EWMUL", "AF", "RD_AF", "EWADD", "SYNC", "EOC", "NOPE"]
number = st.one_of(st.integers(-5, 70000).map(str),
                   st.integers(-(1 << 40), 1 << 40).map(hex),
                   st.sampled_from(["0x", "-0x1", "1e3", "0b101", "0o17", "1_000", "", "nan",
                                    "0xffffffff", "0x100000000", "-1"]))
token = st.one_of(number, st.text(alphabet="aAiImM#\t _-xX0123456789", max_size=6))
aim_line = st.tuples(st.sampled_from(["AiM", "aim", "AIM"]), st.sampled_from(OPS),
                     st.lists(number, max_size=6)).map(lambda t: " ".join([t[0], t[1], *t[2]]))
host_line = st.tuples(st.sampled_from(["R", "W", "r", "X"]),
                      st.sampled_from(["GPR", "CFR", "MEM", "FOO", ""]),
                      st.lists(number, max_size=4)).map(lambda t: " ".join([t[0], t[1], *t[2]]))
junk_line = st.lists(token, max_size=6).map(" ".join)
line = st.one_of(aim_line, host_line, junk_line,
                 st.text(alphabet=st.characters(codec="utf-8"), max_size=20))


@SETTINGS
@given(st.lists(line, min_size=1, max_size=12))
def test_trace_lines_raise_only_user_errors(lines):
    try:
        tr = parse_trace("\n".join(lines), AIM, name="fuzz.trace")
    except UserError as e:
        assert "fuzz.trace:" in str(e)
        return
    assert set(tr.streams) <= set(range(AIM.org.channels))
