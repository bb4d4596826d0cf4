"""A sweep whose spawned worker processes cannot run (the script's unguarded top level run again
in each, or a script they cannot import) raises a UserError naming the fix instead of storing
every point as an error."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest
from test_readme_api import run_script

from pimsim.errors import UserError
from workloads.sweeps.run import GUARD_FIX, run_sweep

SPEC = "{'model': 'tiny', 'tokens': 2, 'grid': {'channels': [2, 4]}}"


def test_workers_that_never_start_raise_the_fix_and_store_no_errors(tmp_path):
    # the script removes itself: the caller cannot see where it was called from, and every
    # spawned worker fails importing the script again
    code = ("import os\n"
            "from workloads import sweep\n"
            "os.remove(__file__)\n"
            f"res = sweep({SPEC}, 's.db', workers=2, progress=False)\n"
            "print('COUNTS', res.counts)\n")
    r = run_script(code, tmp_path)
    assert r.returncode != 0 and "COUNTS" not in r.stdout
    assert "UserError" in r.stderr and "every local worker process died" in r.stderr
    assert "if __name__ == \"__main__\":" in r.stderr and "workers=0" in r.stderr
    with sqlite3.connect(tmp_path / "s.db") as db:
        tables = {t for (t,) in db.execute("select name from sqlite_master where type='table'")}
        errors = [row for t in tables for row in db.execute(f"select * from {t}")
                  if "error" in map(str, row)]
    assert errors == []


def test_a_sweep_started_while_a_worker_imports_the_script_is_refused(tmp_path, monkeypatch):
    # what a spawned worker sees when the script's unguarded top level starts the sweep again
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(UserError) as e:
        run_sweep(tmp_path / "none.toml", tmp_path / "s.db", workers=2, log=lambda s: None)
    assert str(e.value).endswith(GUARD_FIX) and "spawned worker" in str(e.value)
    assert not (tmp_path / "s.db").exists()
