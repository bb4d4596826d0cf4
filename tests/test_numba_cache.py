"""The numba cache of the timing kernels is keyed on the source of every ``pimsim/timing`` module.

A change to any timing module selects another cache directory (numba itself only checks the file
of the function it loads); a cache directory set by the user (``NUMBA_CACHE_DIR``) is kept; the
kernels' compiled code really lands in the chosen directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pimsim.timing import jit

ROOT = Path(__file__).resolve().parent.parent


def test_digest_follows_every_timing_module(tmp_path):
    dirs = tuple(tmp_path / d.name for d in jit.KERNEL_SOURCE_DIRS)
    for d, copy in zip(jit.KERNEL_SOURCE_DIRS, dirs):
        copy.mkdir()
        for p in d.glob("*.py"):
            shutil.copy(p, copy / p.name)
    src = dirs[0]

    def cache_dir():
        return jit.kernel_cache_dir(jit.source_digest(dirs), src)

    assert jit.source_digest(dirs) == jit.source_digest()
    seen = [cache_dir()]
    # a change to a module that is not the one of the loaded function still changes the key
    tables = src / "tables.py"
    tables.write_text(tables.read_text() + "\n# edited\n")
    seen.append(cache_dir())
    # so does a change to the command spec, and a new module
    commands = dirs[1] / "commands.py"
    commands.write_text(commands.read_text().replace("SYNC = -1", "SYNC = -3"))
    seen.append(cache_dir())
    (src / "extra.py").write_text("X = 1\n")
    seen.append(cache_dir())
    assert len(set(seen)) == len(seen)
    assert all(d.parent == src / "__pycache__" for d in seen)


def test_read_only_sources_use_the_user_cache(tmp_path, monkeypatch):
    src = tmp_path / "timing"
    src.mkdir()
    (src / "__pycache__").write_text("not a directory")  # nothing can be created in there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = jit.kernel_cache_dir("0123456789abcdef", src)
    assert d == tmp_path / "xdg" / "pimsim" / "numba" / "0123456789abcdef"


def _probe(env: dict[str, str]) -> str:
    """In a fresh process: run a small kernel, print the directory it is cached in."""
    code = ("import numpy as np\n"
            "from pimsim.timing import jit\n"
            "from pimsim.timing.token_runner import segment_classes\n"
            "items = np.zeros((4, 5), np.int64)\n"
            "cls = np.zeros((2, 1), np.int64)\n"
            "segment_classes(items, np.zeros((2, 1), np.int64), np.full((2, 1), 2, np.int64),\n"
            "                np.zeros((2, 1), np.int64), np.arange(1), cls,\n"
            "                np.zeros((2, 1, 3), np.int64))\n"
            "assert cls.ravel().tolist() == [0, 0]\n"
            "print(jit.cache_path(segment_classes))\n")
    full = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    full.update(env, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_kernels_are_cached_under_the_source_digest():
    path = Path(_probe({}))
    assert path.parent == jit.kernel_cache_dir(jit.source_digest())
    assert any(path.glob("*segment_classes*.nbi"))


def test_user_numba_cache_dir_is_respected(tmp_path):
    path = Path(_probe({"NUMBA_CACHE_DIR": str(tmp_path / "nc")}))
    assert path.parent == tmp_path / "nc"
    assert any(path.glob("*segment_classes*.nbi"))
