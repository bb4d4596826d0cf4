"""The compiled-program cache: a repeated timing run of the same model on the same hardware skips
torch.export and the compiler passes (and does not import torch at all).

An entry is a pickled :class:`~compiler.pipeline.Compiled` of a *weightless* compile (shapes
only: timing runs, ``compile``, ``compare``), keyed by a hash of

* the model's identity: a preset's name and shape
  (:class:`~workloads.models.shape.DecoderShape`), or an ONNX file's content digest
  (:mod:`workloads.identity`; ``module:attribute`` models are never cached: their code may
  change without a trace);
* the hardware values the compiler reads (:func:`workloads.identity.hw_identity`: every config
  value but ``[refresh]``, the file name and the description);
* the context the KV caches are reserved for, where it is not the model's own (``--context``);
* the simulator version: ``pimsim.__version__``, a digest of the compiler's and the ISA's source
  files and the installed torch version.

Where: ``$PIMSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pimsim``, else ``~/.cache/pimsim``; files
``programs/<key>.pkl``. Safe to delete at any time (``rm -r ~/.cache/pimsim``). ``--no-cache``
(or ``PIMSIM_CACHE_DIR=""``) turns it off. The entries are pickles, read back only from the
user's own cache directory.

Integrity: an entry is one header line, ``pimsim-program-cache <sha256 of the payload>``, then
the pickle (the payload). An entry whose payload does not match its checksum (a flipped bit
that would still unpickle into a different program), whose header is missing, or that does not
unpickle is a miss: one warning line on stderr, the model is compiled again and the entry
rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from pimsim import __version__
from workloads import identity

_ROOT = Path(__file__).resolve().parent.parent
# source files whose change may change a compiled program
_SOURCES = ("compiler", "pimsim/isa.py", "pimsim/config.py", "pimsim/spec",
            "workloads/models/gpt.py", "workloads/models/presets.py",
            "workloads/models/resolve.py", "workloads/models/hf.py")


def cache_dir() -> Path | None:
    """The cache directory (None: caching turned off by an empty ``PIMSIM_CACHE_DIR``)."""
    env = os.environ.get("PIMSIM_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pimsim"


@lru_cache(maxsize=1)
def simulator_version() -> str:
    """``__version__`` + a digest of the compiler's sources + the torch version."""
    h = hashlib.sha256(__version__.encode())
    for rel in _SOURCES:
        p = _ROOT / rel
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            try:
                h.update(str(f.relative_to(_ROOT)).encode())
                h.update(f.read_bytes())
            except OSError:
                h.update(b"?")
    try:
        from importlib.metadata import version

        h.update(version("torch").encode())
    except Exception:  # noqa: BLE001 - no torch metadata: keyed without it
        pass
    return f"{__version__}+{h.hexdigest()[:16]}"


def model_identity(model: str) -> dict | None:
    """What identifies ``model``'s weightless compile, or None when it must not be cached."""
    from workloads.models.presets import PRESETS
    from workloads.models.resolve import TRAINED

    if model in PRESETS or model in TRAINED:
        cfg = PRESETS[TRAINED.get(model, model)]
        return {"preset": model, "shape": dataclasses.asdict(cfg)}
    from workloads.models import zoo

    if model in zoo.NAMES:
        from importlib.metadata import PackageNotFoundError, version

        try:
            tv = version("transformers") if model in zoo.HF_SHAPES else ""
        except PackageNotFoundError:
            tv = ""
        shape = zoo.HF_SHAPES.get(model) or dataclasses.asdict(zoo.GPT_SHAPES[model])
        key = {"zoo": model, "shape": repr(shape), "transformers": tv}
        if model in zoo.MLA_FORM:  # the KV cache of its multi-head latent attention
            key["mla"] = zoo.MLA_FORM[model]
        return key
    if model.lower().endswith(".onnx"):
        ident = identity.model_identity(model)
        return {"onnx": ident["file"]} if "file" in ident else None
    return None


hw_identity = identity.hw_identity  # every config value but [refresh], source, description


def cache_key(model: str, cfg: Any, context: int | None = None) -> str | None:
    ident = model_identity(model)
    if ident is None:
        return None
    doc = {"model": ident, "hw": hw_identity(cfg), "version": simulator_version()}
    if context is not None:  # the KV caches reserved for this many tokens, not the model's own
        doc["context"] = int(context)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _entry(key: str) -> Path | None:
    d = cache_dir()
    return None if d is None else d / "programs" / f"{key}.pkl"


MAGIC = b"pimsim-program-cache"


def _pack(payload: bytes) -> bytes:
    """An entry: the header line with the payload's sha256, then the payload."""
    return MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _unpack(data: bytes) -> bytes | None:
    """The payload of an entry, or None when its header is missing or its checksum differs."""
    head, sep, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 2 or parts[0] != MAGIC:
        return None
    if hashlib.sha256(payload).hexdigest().encode() != parts[1]:
        return None
    return payload


def _warn(path: Path, why: str) -> None:
    print(f"pimsim: warning: compiled-program cache entry {str(path)!r} {why}; compiling again "
          "and rewriting it", file=sys.stderr)


def load(model: str, cfg: Any, context: int | None = None) -> Any | None:
    """The cached Compiled of ``model`` on ``cfg`` (its KV caches reserved for ``context``
    tokens, None: the model's own), or None (a miss: absent, or damaged, which warns on stderr
    and removes the entry)."""
    key = cache_key(model, cfg, context)
    path = _entry(key) if key else None
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:  # absent (or unreadable): a miss
        return None
    payload = _unpack(data)
    obj = None
    if payload is None:
        _warn(path, "fails its checksum (damaged)")
    else:
        try:
            obj = pickle.loads(payload)
        except Exception:  # noqa: BLE001 - a stale entry (a class that changed): a miss
            _warn(path, "cannot be read back")
    if getattr(obj, "program", None) is None:
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return obj


def store(model: str, cfg: Any, compiled: Any, context: int | None = None) -> Path | None:
    """Save ``compiled`` (compiled for ``context``); quietly does nothing where the cache cannot
    be written."""
    key = cache_key(model, cfg, context)
    path = _entry(key) if key else None
    if path is None or getattr(compiled.spec, "has_weights", False):
        return None
    try:
        payload = pickle.dumps(compiled, protocol=pickle.HIGHEST_PROTOCOL)
        with atomic_file(path) as f:
            f.write(_pack(payload))
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return None
    return path


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file written beside ``path`` and moved onto it when the block ends without an
    error (atomic: a reader sees the old entry or the whole new one), else removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
