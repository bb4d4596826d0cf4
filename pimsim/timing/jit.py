"""How the timing kernels are compiled by numba: the on-disk cache and the optimisation level.

The controller kernels are spread over several modules of ``pimsim.timing`` that call one
another. numba's ``cache=True`` checks only the source file of the function it loads, so a cached
kernel would survive a change to a kernel it calls in another module (and silently time with the
old code). :func:`cached_njit` therefore files every kernel's cache under a directory named by a
digest of the source of all ``pimsim/timing/*.py`` and ``pimsim/spec/*.py`` (the command ids the
kernels take as constants, ``SYNC``): any change to any of them selects a new, empty directory,
and the kernels are recompiled.

Where: ``pimsim/timing/__pycache__/numba-<digest>`` next to the sources when that is writable
(an editable install, a source checkout), else ``$XDG_CACHE_HOME/pimsim/numba/<digest>`` (default
``~/.cache/pimsim/numba/<digest>``; an install into a read-only site-packages). A cache directory
set by the user (``NUMBA_CACHE_DIR``, or numba's own config file) is used as it is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numba
from numba import njit
from numba.core.config import _OptLevel

SOURCE_DIR = Path(__file__).resolve().parent
# the sources the compiled kernels depend on: the timing package and the command spec
KERNEL_SOURCE_DIRS = (SOURCE_DIR, SOURCE_DIR.parent / "spec")
_DIGEST_CHARS = 16
_KERNEL_OPT = _OptLevel(1)


def source_digest(directories: tuple[Path, ...] = KERNEL_SOURCE_DIRS) -> str:
    """sha256 (hex, first 16 digits) of the names and contents of ``*.py`` in ``directories``."""
    h = hashlib.sha256()
    for directory in directories:
        for path in sorted(directory.glob("*.py")):
            h.update(f"{directory.name}/{path.name}".encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:_DIGEST_CHARS]


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/pimsim/numba``, else ``~/.cache/pimsim/numba``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pimsim" / "numba"


def kernel_cache_dir(digest: str, source_dir: Path = SOURCE_DIR) -> Path:
    """The cache directory of kernels whose sources have ``digest``: next to the sources if
    writable, else under :func:`user_cache_root`."""
    in_tree = source_dir / "__pycache__" / f"numba-{digest}"
    if _writable(in_tree):
        return in_tree
    return user_cache_root() / digest


@functools.lru_cache(maxsize=1)
def _default_cache_dir() -> str:
    return str(kernel_cache_dir(source_digest()))


@contextlib.contextmanager
def _cache_dir_scope():
    """numba's cache directory set to the kernels' one inside the block (unless the user set
    one). numba fixes a function's cache location when ``cache=True`` is applied, so the
    setting only has to hold while a kernel is decorated; it is restored on exit."""
    if numba.config.CACHE_DIR:
        yield
        return
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _default_cache_dir()
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` with the cache filed under the directory keyed on
    every timing module's source (see the module docstring)."""

    def wrap(fn):
        with _cache_dir_scope():
            return njit(cache=True, **options)(fn)

    return wrap


def cache_path(kernel) -> str:
    """The directory a kernel (a :func:`cached_njit` function) is cached in."""
    return kernel._cache._cache_path


@contextlib.contextmanager
def compile_scope():
    """Compile the kernels first called inside at LLVM optimisation level 1 (unless the user set
    ``NUMBA_OPT``): about a fifth less first-run compilation for a few per cent of simulation
    speed (these are branchy scalar loops, which -O3 barely improves). Only numba compilations
    that happen inside the block see the setting; it is restored on exit."""
    if "NUMBA_OPT" in os.environ or numba.config.OPT == _KERNEL_OPT:
        yield
        return
    saved = numba.config.OPT
    numba.config.OPT = _KERNEL_OPT
    try:
        yield
    finally:
        numba.config.OPT = saved
