"""Resolve a MODEL argument of the command line: a preset name, an ``.onnx`` file, or a Python
``module:attribute`` path to a torch module (or a function returning one)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from workloads.gpt import GPT, PRESETS, get_config, round_weights_to_bf16


class ModelError(ValueError):
    """A MODEL argument that names nothing usable."""


TRAINED = {"tiny-counter": "tiny"}  # trained variants of presets (workloads.train)


def build_model(name: str, *, seed: int = 0) -> GPT:
    """The reference module of a preset or trained variant, weights rounded to bf16 (a preset's
    in place, one parameter at a time: no second copy of a large model's weights; a trained
    variant's on a copy, as the trained module is cached)."""
    if name in TRAINED:
        from workloads.train import counting_model

        return counting_model(TRAINED[name], seed=seed).bf16_rounded()
    return round_weights_to_bf16(GPT.from_seed(get_config(name), seed=seed)).eval()


def resolve_model(spec: str, *, weights: bool = True, seed: int = 0) -> tuple[Any, str]:
    """(source for the compiler, display name).

    Presets become a :class:`GPT` with deterministic random weights from ``seed`` rounded to
    bf16 (or, with ``weights=False``, a weightless ``meta``-device module: shapes only, for
    timing runs of large models).
    """
    if spec in PRESETS or spec in TRAINED:
        if weights:
            return build_model(spec, seed=seed), spec
        return GPT(get_config(TRAINED.get(spec, spec)), device="meta").eval(), spec
    if spec.endswith(".onnx"):
        if not Path(spec).exists():
            raise ModelError(f"ONNX file {spec!r} not found")
        return spec, Path(spec).stem
    if ":" in spec:
        mod_name, attr = spec.split(":", 1)
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ModelError(f"cannot import module {mod_name!r} for MODEL {spec!r}: {e}") from None
        if not hasattr(mod, attr):
            raise ModelError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(mod, attr)
        if callable(obj) and not hasattr(obj, "decode_step") and not _is_hf_gpt2(obj):
            obj = obj()
        if _is_hf_gpt2(obj):  # a Hugging Face GPT2LMHeadModel: same maths, our module
            from workloads.hf import from_hf_gpt2

            obj = from_hf_gpt2(obj, name=attr)
        return obj, attr
    raise ModelError(
        f"unknown MODEL {spec!r}: give a preset ({', '.join(list(PRESETS) + list(TRAINED))}), an "
        f".onnx file, or a "
        f"module:attribute path to a torch module"
    )


def _is_hf_gpt2(obj: Any) -> bool:
    return any(c.__name__ == "GPT2LMHeadModel" for c in type(obj).__mro__)
