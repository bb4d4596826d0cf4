"""The README's "Python API" section runs as written, and a sweep behaves from a plain script.

Every ```python block of the section is run as a script of its own, in a subprocess from an
empty directory (so a sweep runs as it does from a user's script, without an
``if __name__ == "__main__":`` guard); a sweep point that fails unexpectedly raises instead of
being kept quietly as a result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^### Python API\n(.*?)(?=^#{1,3} )", text, re.S | re.M)
    assert m, "README.md has no '### Python API' section"
    return re.findall(r"^```python\n(.*?)^```", m.group(1), re.S | re.M)


def run_script(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    script = cwd / "script.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PIMSIM_CACHE_DIR=str(cwd / "cache"), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_section_has_the_five_calls():
    code = "\n".join(api_blocks())
    for name in ("compile_model", "simulate", "validate", "compare", "sweep"):
        assert re.search(rf"\bfrom workloads import {name}\b", code), name


def test_every_python_block_of_the_docs_is_run():
    """A ```python block anywhere else in the README or under docs/ would go untested: the pages
    keep their Python code in the README's Python API section, whose blocks run below."""
    run = api_blocks()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M):
            assert block in run, f"{page.name} has a Python block outside README's Python API:\n{block}"


@pytest.mark.parametrize("i", range(len(api_blocks())))
def test_readme_python_api_block_runs(i, tmp_path):
    r = run_script(api_blocks()[i], tmp_path)
    assert r.returncode == 0, f"README Python API block {i} failed:\n{r.stderr[-3000:]}"


@pytest.mark.slow  # 10 s subprocess sweep (guard detection; test_sweep_spawn covers failed worker starts)
def test_a_sweep_from_an_unguarded_script_runs_its_points(tmp_path):
    """Worker processes would run the script again: the points run in the caller, every one ok."""
    code = ("from workloads import sweep\n"
            "res = sweep({'model': 'tiny', 'tokens': 2, 'grid': {'channels': [2, 4]}},\n"
            "            's.db', workers=2, progress=False)\n"
            "print('COUNTS', res.counts)\n")
    r = run_script(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "COUNTS {'ok': 2, 'invalid': 0, 'error': 0}" in r.stdout
    assert "outside 'if __name__ == \"__main__\":'" in r.stderr


@pytest.mark.slow  # 12 s subprocess sweep; tests/test_sweep.py runs worker processes by default
def test_a_sweep_under_the_guard_uses_worker_processes(tmp_path):
    code = ("import os\n"
            "from workloads import sweep\n"
            "if __name__ == '__main__':\n"
            "    res = sweep({'model': 'tiny', 'tokens': 2, 'grid': {'channels': [2, 4]}},\n"
            "                's.db', workers=2, progress=False)\n"
            "    print('COUNTS', res.counts)\n"
            "    print('WORKERS', sorted({w.split(':')[1] != str(os.getpid())\n"
            "                             for w in res.df['worker']}))\n")
    r = run_script(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "COUNTS {'ok': 2, 'invalid': 0, 'error': 0}" in r.stdout
    assert "WORKERS [True]" in r.stdout  # run by other processes
    assert "outside 'if __name__" not in r.stderr


def test_a_point_that_fails_unexpectedly_raises(tmp_path, monkeypatch):
    from pimsim.errors import UserError
    from workloads import compiling, session

    def boom(model, cfg):
        raise RuntimeError("the lowering broke")

    monkeypatch.setattr(compiling, "_memo_compile", boom)
    spec = {"model": "tiny", "tokens": 2, "grid": {"channels": [2, 4]}}
    with pytest.raises(UserError, match=r"2 of 2 points failed .*the lowering broke"):
        session.sweep(spec, tmp_path / "e.db", workers=0, progress=False, log=lambda s: None)
    res = session.sweep(spec, tmp_path / "e.db", workers=0, progress=False, log=lambda s: None,
                        raise_on_error=False)
    assert res.counts == {"ok": 0, "invalid": 0, "error": 2}  # stored as errors: retried


def test_a_program_for_another_system_is_refused():
    from pimsim.errors import UserError
    from workloads import compile_model, simulate

    c = compile_model("tiny", "pim-gpt", tp=2, cache=False)
    with pytest.raises(UserError, match=r"compiled for tp 2 x pp 1, but the system of pim-gpt "
                                        r"is tp 1 x pp 1"):
        simulate(c, "pim-gpt", tokens=1)
    assert simulate(c, "pim-gpt", tp=2, tokens=1).report.system["tp"] == 2
