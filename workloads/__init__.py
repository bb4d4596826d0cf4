"""GPT workloads: the reference decoder the simulator is checked against and the compiler lowers.

``gpt`` defines the model (``presets`` its shapes and presets, without torch), ``export`` turns
its decode step into ONNX or a ``torch.export`` program, ``hf`` converts Hugging Face GPT-2
checkpoints (optional dependency). The names below are imported on first use, so importing
``workloads`` (the command line) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GPT": "workloads.models.gpt",
    "GPTConfig": "workloads.models.presets",
    "PRESETS": "workloads.models.presets",
    "ROLES": "workloads.models.gpt",
    "WeightMatrix": "workloads.models.gpt",
    "get_config": "workloads.models.presets",
    "named_weight_matrices": "workloads.models.gpt",
    "round_weights_to_bf16": "workloads.models.gpt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workloads' has no attribute {name!r}")
