"""Test helper: a hardware config with some of its values replaced."""

from __future__ import annotations

import dataclasses


def with_(cfg, **kw):
    """``cfg`` with ``section__field`` values replaced."""
    parts: dict[str, dict] = {}
    for k, v in kw.items():
        sec, name = k.split("__")
        parts.setdefault(sec, {})[name] = v
    return cfg.replace(**{sec: dataclasses.replace(getattr(cfg, sec), **vals)
                          for sec, vals in parts.items()})
