"""The workloads the simulator runs, and the library API over them.

``session`` is the API the ``pimsim`` command line, the notebooks and the tests call:
:func:`compile_model`, :func:`simulate`, :func:`validate`, :func:`compare`, :func:`sweep`
(re-exported here). ``models`` holds the models (GPT presets, the zoo, Hugging Face and ONNX
export), ``reference`` the PyTorch and onnxruntime references, ``sweeps`` the design-space
sweeps, ``comparison`` the PIM-vs-GPU comparison, ``plots`` their charts, ``validation`` the
functional validation, ``compile_cache`` the compiled-program cache. The names below are
imported on first use, so importing ``workloads`` (the command line) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GPT": "workloads.models.gpt",
    "DecoderShape": "workloads.models.shape",
    "PRESETS": "workloads.models.presets",
    "ROLES": "workloads.models.gpt",
    "WeightMatrix": "workloads.models.gpt",
    "get_config": "workloads.models.presets",
    "named_weight_matrices": "workloads.models.gpt",
    "round_weights_to_bf16": "workloads.models.gpt",
    "CompareResult": "workloads.session",
    "ServeResult": "workloads.session",
    "SimResult": "workloads.session",
    "SweepResult": "workloads.session",
    "ValidationResult": "workloads.session",
    "compare": "workloads.session",
    "compile_model": "workloads.session",
    "hw_config": "workloads.session",
    "serve": "workloads.session",
    "simulate": "workloads.session",
    "sweep": "workloads.session",
    "validate": "workloads.session",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workloads' has no attribute {name!r}")
