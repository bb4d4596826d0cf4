"""The functional-run cache: a repeated functional run of a preset with seeded weights skips
building the weights, torch.export, the compiler passes and the DRAM image (and does not import
torch at all), as the compiled-program cache (:mod:`workloads.compile_cache`) does for timing
runs.

An entry holds what a functional run prepares: the compiled program of the model *with* its
weights, the weight arrays themselves left out (they are in the image), and the DRAM image of
every device (:class:`pimsim.functional.MemoryImage`: the 16-bit patterns of every bank, as
the mapping placed them). Keyed by a hash of

* the model's identity (:func:`workloads.compile_cache.model_identity`): only presets and
  their trained variants, whose weights are a function of the seed; never ``module:attribute``
  models, files or folders;
* the seed of the weights;
* the hardware values the compiler reads (:func:`workloads.identity.hw_identity`);
* the context the KV caches are reserved for, where it is not the model's own;
* the simulator version (:func:`workloads.compile_cache.simulator_version`) and a digest of the
  sources that make the weights and the image (:data:`_SOURCES`).

Where: the program cache's directory (:func:`workloads.compile_cache.cache_dir`), files
``functional/<key>.bin``; ``--no-cache`` (or ``PIMSIM_CACHE_DIR=""``) turns it off. An entry
is about the size of the image: gpt2-small on pim-gpt 357 MB (the bf16 weights, the KV-cache
rows and the row padding); images above :data:`MAX_IMAGE_BYTES` are not kept.

Size: the entries together stay within ``$PIMSIM_FUNCTIONAL_CACHE_GB`` GiB (default
:data:`DEFAULT_TOTAL_GB`). Each entry written removes the least recently used others (a hit
marks its entry used) until the rest fit beside it, and half-written files that a killed run left
behind more than an hour ago (:func:`prune`). A new simulator version keys every entry anew, so
the old ones are only ever removed this way.

Integrity, as the program cache: one header line, ``pimsim-functional-cache <sha256 of the
payload>``, then the payload: the pickle's length (8 bytes, little-endian), the pickle (the
program and where each image lies), then the images' raw bytes. An entry that fails its
checksum, lacks its header or does not unpickle is a miss: one warning line on stderr, the
run prepares everything again and rewrites the entry.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import struct
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from workloads import compile_cache

MAGIC = b"pimsim-functional-cache"
_HEAD_BYTES = len(MAGIC) + 1 + 64 + 1  # magic, space, sha256 in hex, newline
_ALIGN = 4096  # every image starts page-aligned in the file and in memory when read back, as
# pimsim.functional.aligned_zeros places a built one (the MAC kernels read aligned rows faster)
# sources that make the seeded weights and the image, beyond the compiler's
_SOURCES = ("pimsim/functional.py", "workloads/models/train.py")
MAX_IMAGE_BYTES = 4 << 30  # [assumed] a larger model's images are rebuilt, not kept on disk
DEFAULT_TOTAL_GB = 8.0  # [assumed] all entries together (two of the largest, 22 of gpt2-small's)
STALE_TMP_S = 3600  # a half-written entry this old belongs to a run that did not finish


@lru_cache(maxsize=1)
def version() -> str:
    """The program cache's simulator version + a digest of :data:`_SOURCES`."""
    h = hashlib.sha256(compile_cache.simulator_version().encode())
    for rel in _SOURCES:
        try:
            h.update(rel.encode() + (compile_cache._ROOT / rel).read_bytes())
        except OSError:
            h.update(b"?")
    return h.hexdigest()[:24]


def cache_key(model: str, cfg: Any, seed: int, context: int | None = None) -> str | None:
    """The key of ``model``'s functional entry, or None where it must not be cached."""
    from workloads.models.presets import PRESETS
    from workloads.models.resolve import TRAINED

    if not isinstance(model, str) or (model not in PRESETS and model not in TRAINED):
        return None
    doc = {"model": compile_cache.model_identity(model), "seed": int(seed),
           "hw": compile_cache.hw_identity(cfg), "version": version()}
    if context is not None:
        doc["context"] = int(context)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _entry(key: str | None) -> Path | None:
    d = compile_cache.cache_dir()
    return None if d is None or key is None else d / "functional" / f"{key}.bin"


def _warn(path: Path, why: str) -> None:
    print(f"pimsim: warning: functional-run cache entry {str(path)!r} {why}; preparing the "
          "run again and rewriting it", file=sys.stderr)


def _without_weights(c: Any) -> Any:
    """A shallow copy of Compiled ``c`` whose mappings leave the weight arrays out."""
    def strip(mp):
        mp = copy.copy(mp)
        mp.weights, mp.vector_values = {}, {}
        return mp

    out = copy.copy(c)
    out.mapping = strip(c.mapping)
    out.stage_mappings = [out.mapping if m is c.mapping else strip(m) for m in c.stage_mappings]
    return out


def load(model: str, cfg: Any, seed: int, context: int | None = None):
    """(Compiled, images ``[stage][rank]``) of ``model``'s cached functional run, or None (a
    miss: absent, or damaged, which warns on stderr and removes the entry). The Compiled holds
    no weight arrays: its images are the only copy of the weights."""
    from pimsim.functional import MemoryImage

    path = _entry(cache_key(model, cfg, seed, context))
    if path is None:
        return None
    total_budget_bytes()  # a bad budget is named before the run, not after it
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            raw = np.empty(size + _ALIGN, np.uint8)
            start = (-raw.ctypes.data) % _ALIGN
            buf = raw[start:start + size]
            mv, got = memoryview(buf), 0
            while got < size:
                n = f.readinto(mv[got:])
                if not n:
                    break
                got += n
    except OSError:  # absent (or unreadable): a miss
        return None
    result, why = None, "fails its checksum (damaged)"
    head = bytes(mv[:_HEAD_BYTES])
    if got == size and size > _HEAD_BYTES + 8 and head[-1:] == b"\n" and \
            head[:-1].split(b" ") == [MAGIC, hashlib.sha256(mv[_HEAD_BYTES:]).hexdigest().encode()]:
        try:
            (n,) = struct.unpack("<Q", mv[_HEAD_BYTES:_HEAD_BYTES + 8])
            meta = pickle.loads(mv[_HEAD_BYTES + 8:_HEAD_BYTES + 8 + n])
            images = [[MemoryImage.from_bits(
                buf[off:off + 2 * int(np.prod(shape))].view(np.uint16).reshape(shape),
                rows, dtype) for off, shape, rows, dtype in stage] for stage in meta["images"]]
            if getattr(meta["compiled"], "program", None) is not None and images:
                result = meta["compiled"], images
        except Exception:  # noqa: BLE001 - a stale entry (a class that changed): a miss
            why = "cannot be read back"
    if result is None:
        _warn(path, why)
        try:
            path.unlink()
        except OSError:
            pass
    else:
        with contextlib.suppress(OSError):  # used now: the last to go (prune)
            os.utime(path)
    return result


def total_budget_bytes() -> int:
    """The bytes all entries may take together: ``$PIMSIM_FUNCTIONAL_CACHE_GB`` GiB, else
    :data:`DEFAULT_TOTAL_GB`."""
    from pimsim.errors import UserError

    raw = os.environ.get("PIMSIM_FUNCTIONAL_CACHE_GB", "").strip()
    if not raw:
        return int(DEFAULT_TOTAL_GB * (1 << 30))
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not gb >= 0 or gb == float("inf"):
        raise UserError(f"PIMSIM_FUNCTIONAL_CACHE_GB={raw!r} is not a size in GiB",
                        "set it to a number of GiB such as 8 (0 keeps no functional entries), "
                        "or unset it for the default")
    return int(gb * (1 << 30))


def prune(directory: Path, budget_bytes: int, keep: Path | None = None,
          now: float | None = None) -> list[Path]:
    """Remove the least recently used entries (``*.bin``, oldest modification time first) of
    ``directory`` until those left take at most ``budget_bytes`` (``keep``, the entry just
    written, stays and counts), and half-written files older than :data:`STALE_TMP_S`.
    Returns the paths removed; a file that vanishes meanwhile (another run pruning) is skipped."""
    now = time.time() if now is None else now
    removed, entries = [], []
    for p in directory.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name.startswith(".tmp-"):
            if now - st.st_mtime > STALE_TMP_S:
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        elif p.suffix == ".bin":
            entries.append((p != keep, st.st_mtime, p.name, st.st_size, p))
    total = sum(e[3] for e in entries)
    for is_other, _, _, size, p in sorted(entries, key=lambda e: (not e[0], e[1], e[2])):
        if total <= budget_bytes or not is_other:
            break
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
        total -= size
    return removed


def store(model: str, cfg: Any, seed: int, context: int | None, compiled: Any,
          images: list[list[Any]]) -> Path | None:
    """Save ``compiled`` (weights left out) and its pristine ``images`` ``[stage][rank]``, then
    :func:`prune` the others to the total budget (:func:`total_budget_bytes`); quietly does
    nothing where the cache cannot be written or the images exceed :data:`MAX_IMAGE_BYTES` or
    the budget."""
    path = _entry(cache_key(model, cfg, seed, context))
    total = sum(im.bits.nbytes for stage in images for im in stage)
    budget = total_budget_bytes()
    if path is None or total > min(MAX_IMAGE_BYTES, budget):
        return None
    try:
        # where each image lies in the file: after the header, the length, the pickle, aligned
        def layout(pickle_len: int) -> list[list[tuple]]:
            off, out = _HEAD_BYTES + 8 + pickle_len, []
            for stage in images:
                row = []
                for im in stage:
                    off += (-off) % _ALIGN
                    row.append((off, im.bits.shape, im.rows_used, im.dtype))
                    off += im.bits.nbytes
                out.append(row)
            return out

        lean = _without_weights(compiled)
        n = len(pickle.dumps({"compiled": lean, "images": layout(0)}, pickle.HIGHEST_PROTOCOL))
        for _ in range(4):  # the offsets' digits may change the pickle's length: settle it
            meta = pickle.dumps({"compiled": lean, "images": layout(n)}, pickle.HIGHEST_PROTOCOL)
            if len(meta) == n:
                break
            n = len(meta)
        else:
            return None
        with compile_cache.atomic_file(path) as f:
            h = hashlib.sha256()
            f.write(b"\0" * _HEAD_BYTES)  # the header, once the checksum is known
            pos = _HEAD_BYTES
            for part in [struct.pack("<Q", n), meta]:
                f.write(part)
                h.update(part)
                pos += len(part)
            for stage, where in zip(images, layout(n)):
                for im, (off, *_) in zip(stage, where):
                    pad = b"\0" * (off - pos)
                    data = memoryview(np.ascontiguousarray(im.bits)).cast("B")
                    for part in (pad, data):
                        f.write(part)
                        h.update(part)
                    pos = off + im.bits.nbytes
            f.seek(0)
            f.write(MAGIC + b" " + h.hexdigest().encode() + b"\n")
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return None
    with contextlib.suppress(OSError):
        prune(path.parent, budget, keep=path)
    return path
