"""Golden outputs of the compiler and simulator for every preset: what a restructuring must keep.

Two kinds of goldens, both recorded from the code as it is when this script runs:

* ``program_<case>_pos<P>.txt``: the printed program (:meth:`pimsim.isa.Program.to_text`) of a
  few small cases (:data:`PROGRAM_CASES`: presets on shipped configs, some with changed PIM data
  paths) at positions 0, 17 and the last one. A text over :data:`MAX_TEXT_BYTES` is kept as its
  sha256 and first :data:`HEAD_LINES` lines.
* ``presets.json``: for every model preset (:func:`workloads.models.preset_names`, weightless)
  on every config in ``hwconfigs/``: the sha256 of each device program's text at the first and
  last position, and the simulated cycles, generated tokens, command counts and energy of a
  one-token prompt plus two generated tokens; or the error the config answers (a model too
  large for it).

Usage (from the repository root)::

    python tests/golden/make_goldens.py            # rewrite every golden
    python tests/golden/make_goldens.py --check    # compare, exit 1 on any difference
    python tests/golden/make_goldens.py --only tiny,gpt2-small --check
    python tests/golden/make_goldens.py --hw hbm-pim   # rewrite only that config's goldens

``tests/test_goldens.py`` makes the same comparisons under pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent
ROOT = GOLDEN.parent.parent
PRESETS_JSON = GOLDEN / "presets.json"
MAX_TEXT_BYTES = 2_000_000
HEAD_LINES = 400
MID_POS = 17  # a position inside every preset's context

# (preset, config): a shipped config, or one with ``section__field=value`` changes after a colon
# (a global buffer smaller than a row, several accumulators, the reuse loop order)
PROGRAM_CASES: tuple[tuple[str, str], ...] = (
    ("tiny", "pim-gpt"),
    ("tiny-wide", "pim-gpt"),
    ("gpt2-small", "pim-gpt"),
    ("gpt3-small", "pim-gpt"),
    ("tiny", "hbm-pim"),
    ("tiny-wide", "aim-gddr6"),
    ("tiny", "pim-gpt:pim__global_buffer_bytes=64,pim__accumulators_per_bank=2"),
    ("tiny-wide", "pim-gpt:pim__global_buffer_bytes=192,pim__accumulators_per_bank=4,"
                  "pim__mapping=reuse"),
)

SIM_PROMPT = [1]
SIM_TOKENS = 2


def hw_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "hwconfigs").glob("*.toml"))


def config(hw: str):
    """A shipped config, with the ``section__field=value`` changes after a colon applied."""
    from pimsim.config import load_config

    name, _, changes = hw.partition(":")
    c = load_config(name)
    for kv in filter(None, changes.split(",")):
        key, v = kv.split("=")
        sec, fld = key.split("__")
        c = c.replace(**{sec: dataclasses.replace(getattr(c, sec), **{
            fld: int(v) if v.isdigit() else v})})
    return c


def case_slug(preset: str, hw: str) -> str:
    """A file-name form of a program case: ``tiny_pim-gpt`` or ``tiny_pim-gpt+gbuf64+acc2``."""
    name, _, changes = hw.partition(":")
    short = {"global_buffer_bytes": "gbuf", "accumulators_per_bank": "acc", "mapping": ""}
    parts = [name]
    for kv in filter(None, changes.split(",")):
        key, v = kv.split("=")
        parts.append(short.get(key.split("__")[1], key.split("__")[1]) + v)
    return f"{preset}_{'+'.join(parts)}"


def positions(n_ctx: int) -> tuple[int, ...]:
    return (0, MID_POS, n_ctx - 1)


def text_golden(text: str) -> str:
    """What a program text's golden file holds: the text, or a digest and the first lines."""
    data = text.encode()
    if len(data) <= MAX_TEXT_BYTES:
        return text
    head = "".join(text.splitlines(True)[:HEAD_LINES])
    return (f"# sha256 {hashlib.sha256(data).hexdigest()} bytes {len(data)} "
            f"(first {HEAD_LINES} lines follow)\n{head}")


def program_texts(preset: str, hw: str) -> dict[str, str]:
    """file name -> golden text of one program case."""
    from compiler.pipeline import compile_model
    from workloads.models.resolve import resolve_model

    src, name = resolve_model(preset, weights=False)
    prog = compile_model(src, config(hw), name=name).program
    slug = case_slug(preset, hw)
    return {f"program_{slug}_pos{p}.txt": text_golden(prog.to_text(p))
            for p in positions(prog.dims["n_ctx"])}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def preset_record(prepared: Any, hw: str) -> dict:
    """The presets.json entry of one prepared model on one shipped config."""
    from compiler.passes.mapping import CapacityError, MappingError
    from compiler.pipeline import lower
    from pimsim.errors import UserError
    from pimsim.pipeline import run_system

    cfg = config(hw)
    try:
        c = lower(prepared, cfg)
    except (UserError, CapacityError, MappingError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    progs = c.programs
    n_ctx = progs[0].dims["n_ctx"]
    rec: dict[str, Any] = {
        "program_sha256": [{str(p): _sha(prog.to_text(p)) for p in (0, n_ctx - 1)}
                           for prog in progs],
        "steps": [len(prog.steps) for prog in progs],
    }
    rep = run_system(progs, cfg, prompt=SIM_PROMPT, n_tokens=SIM_TOKENS).to_dict()
    rec["cycles"] = rep["cycles"]
    rec["tokens"] = rep["tokens"]
    rec["commands"] = rep["commands"]
    rec["j_per_token"] = rep["energy"].get("j_per_token") if rep.get("energy") else None
    return rec


def model_records(model: str, hws: list[str], log=None) -> dict[str, dict]:
    """hw -> record for one preset on each config in ``hws``."""
    from compiler.pipeline import prepare
    from workloads.models.resolve import resolve_model

    t0 = time.perf_counter()
    src, name = resolve_model(model, weights=False)
    prep = prepare(src, name=name)
    out = {}
    for hw in hws:
        out[hw] = preset_record(prep, hw)
    if log:
        log(f"{model}: {time.perf_counter() - t0:.1f} s")
    return out


def all_models() -> list[str]:
    from workloads.models.resolve import preset_names

    return preset_names()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of rewriting")
    ap.add_argument("--only", help="comma-separated presets (default: all)")
    ap.add_argument("--no-programs", action="store_true", help="skip the program-text cases")
    ap.add_argument("--hw", help="comma-separated shipped configs (default: all); the other "
                                 "configs' goldens are left as stored")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    hws = args.hw.split(",") if args.hw else hw_names()
    unknown = sorted(set(hws) - set(hw_names()))
    if unknown:
        ap.error(f"--hw: no shipped config {', '.join(unknown)}; known: {', '.join(hw_names())}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    bad = 0
    if not args.no_programs:
        for preset, hw in PROGRAM_CASES:
            if (only and preset not in only) or hw.partition(":")[0] not in hws:
                continue
            for fname, text in program_texts(preset, hw).items():
                path = GOLDEN / fname
                if args.check:
                    if not path.exists() or path.read_text() != text:
                        bad += 1
                        log(f"DIFFERS: {fname}")
                else:
                    path.write_text(text)
            log(f"program {preset} on {hw}: done")
    stored = json.loads(PRESETS_JSON.read_text()) if PRESETS_JSON.exists() else {}
    for model in all_models():
        if only and model not in only:
            continue
        recs = model_records(model, hws, log)
        if args.check:
            for hw, rec in recs.items():
                if stored.get(model, {}).get(hw) != json.loads(json.dumps(rec)):
                    bad += 1
                    log(f"DIFFERS: {model} on {hw}")
        else:
            stored[model] = {**stored.get(model, {}), **recs}
            PRESETS_JSON.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    if args.check:
        log("goldens match" if not bad else f"{bad} golden(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
