"""validate's verdict: decisive steps and error bounds, not a raw top-1 rate, so the same
numbers give the same verdict at 8 and at 32 tokens; a failure names its criterion."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from workloads.validation import TOLERANCES, decisive_steps, failed_line, validation_metrics, verdict

sys.path.insert(0, str(Path(__file__).parent))


def _logits(steps: int, near_tie: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits with clear winners (gap 1.0) except a near-tie at step ``near_tie``
    (gap below the bf16 step at the top logit), and simulated ones within 1e-3 that pick the
    other token at the near-tie."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(-4.0, 4.0, (steps, 32)).astype(np.float32)
    top = rng.integers(0, 32, steps)
    ref[np.arange(steps), top] = 6.0
    sim = ref + rng.uniform(-1e-3, 1e-3, ref.shape).astype(np.float32)
    if near_tie is not None:
        other = (top[near_tie] + 1) % 32
        ref[near_tie, other] = 6.0 - 0.01  # bf16 step at 6.0 is 2 ** (2 - 7) = 0.03125
        sim[near_tie, other] = 6.0 + 0.005  # the simulator picks the other one
        sim[near_tie, top[near_tie]] = 6.0
    return sim, ref


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_one_near_tie_passes_at_8_and_at_32_tokens(mode):
    for steps in (8, 32):
        sim, ref = _logits(steps, near_tie=3)
        m = validation_metrics(sim, ref)
        assert m["top1_agreement"] == (steps - 1) / steps  # 87.5 % at 8 tokens
        assert m["decisive_steps"] == steps - 1 and m["top1_agreement_decisive"] == 1.0
        assert not decisive_steps(ref)[3]
        crit = verdict(m, TOLERANCES[mode])
        assert all(c["ok"] for c in crit), crit
        assert {c["name"] for c in crit} == {"top1_agreement_decisive", "min_cosine",
                                             "max_rel_err"}


def test_a_decisive_flip_fails_and_names_the_criterion():
    for steps in (8, 32):
        sim, ref = _logits(steps, near_tie=None)
        sim[2] = ref[2]
        sim[2, (ref[2].argmax() + 1) % 32] = 7.0  # a clear winner lost: decisive
        m = validation_metrics(sim, ref)
        crit = verdict(m, TOLERANCES["exact"])
        failed = [c["name"] for c in crit if not c["ok"]]
        assert "top1_agreement_decisive" in failed
        assert "top-1 agreement on decisive steps" in failed_line(crit)
    # an error bound alone
    sim, ref = _logits(8, near_tie=None)
    m = validation_metrics(sim * 1.2, ref)
    crit = verdict(m, TOLERANCES["exact"])
    assert [c["name"] for c in crit if not c["ok"]] == ["max_rel_err"]
    assert failed_line(crit).startswith("max relative logit error")


def test_cli_failed_line_and_json_name_the_criterion(capsys, monkeypatch):
    import json

    from workloads import session
    from workloads.cli import main
    from workloads.validation import ValidationResult

    sim, ref = _logits(8, near_tie=None)
    m = validation_metrics(sim * 1.2, ref)
    tol = TOLERANCES["exact"]
    m.update(model="tiny", hw="pim-gpt", asic_math="exact", reference_device="cpu", tokens=8,
             greedy_tokens_match=True, tolerance=tol, criteria=verdict(m, tol))
    m["failed_criteria"] = [c["name"] for c in m["criteria"] if not c["ok"]]
    m["passed"] = not m["failed_criteria"]
    monkeypatch.setattr(session, "validate", lambda *a, **k: ValidationResult(dict(m)))
    assert main(["validate", "tiny", "--tokens", "8"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "FAILED" in x)
    assert "max relative logit error" in line and "min cosine" not in line
    assert main(["validate", "tiny", "--tokens", "8", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed_criteria"] == ["max_rel_err"] and not doc["passed"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["phi", "llama"])
def test_tiny_hf_family_on_two_devices_same_verdict_at_8_and_32_tokens(family, tmp_path,
                                                                       monkeypatch):
    from workloads import session

    mod = f"tiny_hf_{family}"  # one module per family (imported modules are cached)
    (tmp_path / f"{mod}.py").write_text(f"import hf_tiny\nmodel = hf_tiny.tiny_model({family!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = {}
    for n in (8, 32):
        m = session.validate(f"{mod}:model", "pim-gpt", n, reference="cpu",
                             devices=2).to_dict()
        assert m["system"]["devices"] == 2 and m["min_cosine"] > 0.9999
        got[n] = (m["passed"], m["failed_criteria"])
    assert got[8] == got[32] == (True, [])
