"""Every preset compiles and simulates exactly as recorded in tests/golden/ (make_goldens.py).

* the printed programs of the small cases of :data:`make_goldens.PROGRAM_CASES` at three
  positions (files ``tests/golden/program_*.txt``);
* for every model preset on every shipped config (``tests/golden/presets.json``): the sha256 of
  each device program's text at the first and last position, the simulated cycles, tokens,
  command counts and energy, or the error the config answers.

The small presets run by default, the large ones under ``-m slow``. After an intended change,
regenerate with ``python tests/golden/make_goldens.py`` and read the diff before committing it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "make_goldens", Path(__file__).parent / "golden" / "make_goldens.py")
mg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mg)

FAST_MODELS = ("tiny", "tiny-wide", "tiny-counter", "gpt2-small")
STORED = json.loads(mg.PRESETS_JSON.read_text())
_FAST_CASES = [c for c in mg.PROGRAM_CASES if c[0] in ("tiny", "tiny-wide")]


def _mark(cases, fast):
    return [c if fast(c) else pytest.param(*c if isinstance(c, tuple) else (c,),
                                           marks=pytest.mark.slow) for c in cases]


@pytest.mark.parametrize("preset,hw", _mark(mg.PROGRAM_CASES, lambda c: c in _FAST_CASES))
def test_program_text_is_unchanged(preset: str, hw: str) -> None:
    for fname, text in mg.program_texts(preset, hw).items():
        want = (mg.GOLDEN / fname).read_text()
        assert text == want, f"{fname} differs (regenerate with tests/golden/make_goldens.py)"


def test_every_preset_and_config_is_recorded() -> None:
    assert sorted(STORED) == sorted(mg.all_models())
    for model, recs in STORED.items():
        assert sorted(recs) == mg.hw_names(), model


@pytest.mark.parametrize("model", _mark(sorted(STORED), lambda m: m in FAST_MODELS))
def test_preset_compiles_and_simulates_as_recorded(model: str) -> None:
    recs = json.loads(json.dumps(mg.model_records(model, mg.hw_names())))
    for hw in mg.hw_names():
        assert recs[hw] == STORED[model][hw], f"{model} on {hw}"
