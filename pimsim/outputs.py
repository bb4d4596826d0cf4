"""The files a command writes: one check of every output path of an invocation, and atomic writes.

:func:`check_paths` runs before a command starts its work. Every output (a file such as
``-o``, ``--csv``, ``--timeline``; or a directory such as ``--plot``) must be writable where it
points, and must name neither an input of the same invocation (the model file, the hardware
config, the sweep spec, a measured GPU baseline, ...) nor another output. Paths are compared
resolved (``..``, symbolic links) and, where both exist, with :func:`os.path.samefile` (hard
links). An output file whose folder does not exist, or that is a folder, is refused too: the
folder is not created behind the user's back.

:func:`atomic_write` is how an output file is written: into a temporary file in the same folder,
then :func:`os.replace` over the target, so an interrupted or failed write leaves the old file
(or none) and never half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pimsim.errors import UserError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class PathArg:
    """One path of an invocation: ``what`` names it in messages, e.g. ``"CSV file (--csv)"``;
    ``directory``: an output directory files are written into (``--plot``)."""

    path: PathLike
    what: str
    directory: bool = False


def _name(a: PathArg) -> str:
    return f"{a.what} {os.fspath(a.path)!r}"


def _resolved(path: PathLike) -> str:
    try:
        return os.path.realpath(os.path.abspath(os.fspath(path)))
    except (OSError, ValueError):
        return os.path.abspath(os.fspath(path))


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long, an embedded NUL byte
        return False


def _same(a: PathLike, b: PathLike) -> bool:
    """``a`` and ``b`` are the same file or folder: one resolved path, or (both existing) one
    inode, as a hard link is."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _inside(out: PathLike, folder: PathLike) -> bool:
    """``out`` is an existing file directly in the input folder ``folder`` (a model folder's
    config.json, say)."""
    p = Path(out)
    try:
        return p.is_file() and Path(folder).is_dir() and _same(p.parent, folder)
    except (OSError, ValueError):
        return False


def check_output(a: PathArg) -> None:
    """A UserError now if ``a`` cannot be written later: a file path that is a folder, in a
    missing folder or under a file, or without write permission; a directory path that is a file
    or whose parent folder is missing."""
    p = Path(a.path)
    if not os.fspath(a.path).strip():
        raise UserError(f"{a.what} is an empty path", "give a path")
    if a.directory:
        if _exists(p) and not p.is_dir():
            raise UserError(f"{_name(a)} exists and is not a directory", "give a directory path")
        folder = p if _exists(p) else p.parent
    else:
        if p.is_dir():
            raise UserError(f"{_name(a)} is a directory", "give a file path")
        folder = p.parent
    anc = folder
    while not _exists(anc) and anc.parent != anc:
        anc = anc.parent
    if _exists(anc) and not anc.is_dir():
        raise UserError(f"{_name(a)} cannot be created: {str(anc)!r} is a file",
                        "choose another path")
    if not _exists(folder):
        raise UserError(f"{_name(a)} cannot be created: the folder {str(folder)!r} does not exist",
                        "create the folder first or correct the path")
    try:
        if not a.directory and _exists(p):
            with open(p, "ab"):  # appends nothing: the file is left as it is
                pass
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        where = p if not a.directory and _exists(p) else folder
        raise UserError(f"{_name(a)} cannot be written ({e.strerror or e} in {str(where)!r})",
                        "choose a writable location") from None


def check_paths(outputs: Iterable[PathArg], inputs: Iterable[PathArg] = ()) -> None:
    """The one check of an invocation's paths (see the module docstring): each output writable,
    none the same file as an input or as another output. ``None`` paths are left out."""
    outs = [a for a in outputs if a.path is not None]
    ins = [a for a in inputs if a.path is not None]
    for i, a in enumerate(outs):
        for b in ins:
            if _same(a.path, b.path) or (not a.directory and _inside(a.path, b.path)):
                what = "is" if _same(a.path, b.path) else "is a file of"
                raise UserError(f"{_name(a)} {what} the {_name(b)}: writing it would overwrite "
                                f"that input", f"give the {a.what.split(' (')[0]} another path")
        for b in outs[:i]:
            if _same(a.path, b.path):
                raise UserError(f"{_name(a)} is also the {_name(b)}: one would overwrite the "
                                f"other", "give each output its own path")
    for a in outs:
        check_output(a)


@contextlib.contextmanager
def atomic_write(path: PathLike, what: str = "output file", mode: str = "w",
                 **open_kw) -> Iterator[IO]:
    """``with atomic_write(path, what) as f: ...`` writes ``f`` to a temporary file beside
    ``path`` and moves it over ``path`` once the block ends without an exception (the temporary
    file is removed otherwise); a symbolic link is written through (the link stays). A missing
    parent folder is created (a library call; the command
    line refuses one first, :func:`check_output`). An OSError becomes a UserError naming
    ``what`` and the file."""
    p = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # write through
    tmp = None
    try:
        if str(p.parent):
            p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".",
                                   prefix=f".{p.name[:64]}.", suffix=".tmp")
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # a new file's usual permissions, not mkstemp's 0600
        except OSError:
            pass
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise UserError(f"{what} {os.fspath(path)!r} cannot be written ({e.strerror or e})",
                        "choose a writable path") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: PathLike | None, what: str = "output file", *,
                   directory: bool = False) -> None:
    """:func:`check_output` of one path (``None``: nothing to check)."""
    if path is not None:
        check_output(PathArg(path, what, directory))


def write_text(path: PathLike, text: str, what: str = "output file") -> None:
    """Write ``text`` to ``path`` atomically; a UserError naming the file on failure."""
    with atomic_write(path, what) as f:
        f.write(text)
