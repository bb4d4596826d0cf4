"""Content digests: the one way a cache or a results store keys what it depends on.

:func:`canonical_json` spells a mapping one way (sorted keys, no spaces); :func:`digest` is the
sha256 of that spelling. :func:`file_digest` is the sha256 of a file's bytes and
:func:`tree_digest` that of a folder's files (relative names and contents), so a file re-exported
under the same name gets a new key and the same bytes under another name the same key. A file's
digest is kept in this process while its size, modification time and inode stay the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["canonical_json", "digest", "file_digest", "tree_digest"]

_CHUNK_BYTES = 1 << 20
_FILES: dict[tuple, str] = {}  # (absolute path, size, mtime_ns, inode) -> sha256 hex
_LOCK = threading.Lock()


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON spelled one way: sorted keys, no spaces, unknown types as ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, n_chars: int = 32) -> str:
    """The first ``n_chars`` hex digits of the sha256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n_chars]


def file_digest(path: str | Path) -> str:
    """The sha256 (hex) of the file's bytes; OSError when it cannot be read."""
    p = Path(path)
    st = os.stat(p)
    stamp = (os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino)
    with _LOCK:
        got = _FILES.get(stamp)
    if got is not None:
        return got
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    got = h.hexdigest()
    with _LOCK:
        _FILES[stamp] = got
    return got


def tree_digest(folder: str | Path) -> str:
    """The sha256 (hex) of a folder's files: each file's path relative to the folder and its
    :func:`file_digest`, in sorted order (hidden files and folders left out)."""
    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        h.update(rel.as_posix().encode() + b"\0" + file_digest(f).encode() + b"\n")
    return h.hexdigest()
