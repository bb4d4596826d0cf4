"""Where a path written inside an input file points: the one resolver for relative paths.

A file that names another file (a system config's ``[system] device``, a sweep spec's ``hw`` and
its models) means a path relative to the folder of the file that names it, not to the working
directory of whoever runs it; a mapping built in code (no file) reads it against the working
directory. Absolute paths and ``~`` stay as they are.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["folder_of", "resolve_relative"]


def folder_of(path: str | Path | None) -> Path | None:
    """The folder of the file ``path`` (None: no file, the working directory applies)."""
    if path is None or str(path) == "":
        return None
    return Path(path).expanduser().parent


def resolve_relative(ref: str | Path, folder: str | Path | None) -> Path:
    """``ref`` read against ``folder`` (the folder of the file that names it): an absolute path
    or ``~`` stays as it is; a relative one joins ``folder``; without a folder it stays relative
    (to the working directory)."""
    p = Path(ref).expanduser()
    if p.is_absolute() or folder is None:
        return p
    return Path(folder) / p
