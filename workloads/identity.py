"""What a weightless compile depends on, as data to key caches and stores by.

* :func:`model_identity`: a preset's (or shapes-only zoo model's) name; an ONNX file's or a
  Hugging Face folder's *content* digest (:mod:`pimsim.digest`: a file re-exported under the same
  name is a new model, the same bytes under another name the same one); a ``module:attribute``
  path's spelling (its code is not read); a path that names nothing (yet) is ``unresolved``.
* :func:`hw_identity`: every hardware value the compiler may read: the whole config but its
  ``[refresh]`` (DRAM refresh is the simulator's alone), its file name and its description.

The sweep workers' in-process compile memo (:mod:`workloads.compiling`), the compiled-program
cache on disk (:mod:`workloads.compile_cache`) and the sweep store's point keys
(:mod:`workloads.sweeps.spec`) key by these, never by a hand-picked list of fields.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from pimsim.digest import digest, file_digest, tree_digest

__all__ = ["compile_identity", "hw_identity", "is_path_model", "model_identity"]

_ATTRIBUTE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _named(model: str) -> dict | None:
    from workloads.models import zoo
    from workloads.models.presets import PRESETS
    from workloads.models.resolve import TRAINED

    if model in PRESETS or model in TRAINED:
        return {"preset": model}
    if model in zoo.NAMES:
        return {"zoo": model}
    if _ATTRIBUTE.fullmatch(model) and not Path(model).exists():
        return {"attribute": model}
    return None


def is_path_model(model: str) -> bool:
    """Whether MODEL ``model`` is a path (an ONNX file or a model folder), not a name."""
    return isinstance(model, str) and bool(model) and _named(model) is None


def model_identity(model: str) -> dict:
    """What identifies ``model`` (see the module docstring); reads a file's bytes once per
    process while its size and modification time stay the same."""
    named = _named(model)
    if named is not None:
        return named
    p = Path(model)
    try:
        if p.is_file():
            return {"file": file_digest(p)}
        if p.is_dir() and (p / "config.json").is_file():
            return {"folder": tree_digest(p)}
    except OSError:
        pass
    return {"unresolved": model}


def hw_identity(cfg: Any) -> dict:
    """Every value of the config ``cfg`` the compiler may read (all but ``refresh``,
    ``source`` and ``description``)."""
    d = dataclasses.asdict(cfg)
    for k in ("refresh", "source", "description"):
        d.pop(k, None)
    for k, default in (("lowering", "pimsim"), ("placement", "dense"),
                       ("ep", 1)):  # the defaults: identities stay
        if d.get("system", {}).get(k) == default:
            d["system"].pop(k)
    ic = d.get("system", {}).get("interconnect", {})
    if ic.get("unicast_bw_factor") == 1.0:
        ic.pop("unicast_bw_factor")
    return d


def compile_identity(model: str, cfg: Any) -> str:
    """A digest of ``model``'s identity and ``cfg``'s (what a weightless compile reads)."""
    return digest({"model": model_identity(model), "hw": hw_identity(cfg)})
