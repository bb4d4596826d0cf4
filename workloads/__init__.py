"""GPT workloads: the reference decoder the simulator is checked against and the compiler lowers.

``gpt`` defines the model and its presets, ``export`` turns its decode step into ONNX or a
``torch.export`` program, ``hf`` converts Hugging Face GPT-2 checkpoints (optional dependency).
"""

from workloads.gpt import (
    GPT,
    PRESETS,
    ROLES,
    GPTConfig,
    WeightMatrix,
    get_config,
    named_weight_matrices,
    round_weights_to_bf16,
)

__all__ = [
    "GPT",
    "GPTConfig",
    "PRESETS",
    "ROLES",
    "WeightMatrix",
    "get_config",
    "named_weight_matrices",
    "round_weights_to_bf16",
]
