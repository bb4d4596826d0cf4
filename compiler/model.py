"""The decoder a front end recognised in a graph: shapes, and weights where they are known.

This is what PIM-GPT's path (``compile_model(..., lowering="pim-gpt")``: recognise, map, emit)
works from, whichever front end (ONNX, torch.export, Hugging Face) produced it; the default
graph lowering (:mod:`compiler.passes.lower`) needs no recognised structure. Weight matrices follow the ``[out, in]`` convention of ``nn.Linear``: row ``n``
of a matrix holds output neuron ``n``'s weights. Arrays are float32 numpy; ``None`` where the model
was imported for shapes only (e.g. a ``meta``-device module for timing runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# PIM matrix roles in the order a layer uses them, and the vector (ASIC-side) parameters
MATRIX_ROLES = ("q", "k", "v", "out_proj", "ffn_up", "ffn_down")
VECTOR_ROLES = ("ln1_w", "ln1_b", "q_b", "k_b", "v_b", "out_proj_b", "ln2_w", "ln2_b",
                "ffn_up_b", "ffn_down_b")


@dataclass
class LayerSpec:
    """One decoder block (pre-LayerNorm, GELU MLP)."""

    weights: dict[str, np.ndarray | None] = field(default_factory=dict)  # MATRIX_ROLES + VECTOR_ROLES


@dataclass
class DecoderSpec:
    """A GPT-style decoder: embeddings, ``n_layer`` blocks, final LayerNorm, tied LM head."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    d_ff: int
    vocab: int
    n_ctx: int
    eps: float = 1e-5
    layers: list[LayerSpec] = field(default_factory=list)
    wte: np.ndarray | None = None  # [vocab, d_model]; also the LM head
    wpe: np.ndarray | None = None  # [n_ctx, d_model]
    lnf_w: np.ndarray | None = None
    lnf_b: np.ndarray | None = None

    @property
    def d_attn(self) -> int:
        return self.n_head * self.d_head

    @property
    def has_weights(self) -> bool:
        return self.wte is not None

    def matrix_shape(self, role: str) -> tuple[int, int]:
        """``(out, in)`` of a layer matrix role, or of ``lm_head``."""
        d, a, f = self.d_model, self.d_attn, self.d_ff
        return {
            "q": (a, d), "k": (a, d), "v": (a, d), "out_proj": (d, a),
            "ffn_up": (f, d), "ffn_down": (d, f), "lm_head": (self.vocab, d),
        }[role]

    @property
    def n_params(self) -> int:
        per_layer = sum(o * i + o for o, i in (self.matrix_shape(r) for r in MATRIX_ROLES))
        per_layer += 4 * self.d_model
        return (self.n_layer * per_layer + self.vocab * self.d_model + self.n_ctx * self.d_model
                + 2 * self.d_model)

    def weight_bytes(self, bytes_per_elem: int = 2) -> int:
        return self.n_params * bytes_per_elem

    def check(self) -> None:
        """Shapes of every known weight agree with the dimensions; raises ValueError if not."""
        want = {r: self.matrix_shape(r) for r in MATRIX_ROLES}
        vec = {"ln1_w": self.d_model, "ln1_b": self.d_model, "ln2_w": self.d_model,
               "ln2_b": self.d_model, "q_b": self.d_attn, "k_b": self.d_attn,
               "v_b": self.d_attn, "out_proj_b": self.d_model, "ffn_up_b": self.d_ff,
               "ffn_down_b": self.d_model}
        if len(self.layers) != self.n_layer:
            raise ValueError(f"{self.name}: {len(self.layers)} layers found, n_layer = {self.n_layer}")
        for i, layer in enumerate(self.layers):
            for role, arr in layer.weights.items():
                if arr is None:
                    continue
                shape = want[role] if role in want else (vec[role],)
                if tuple(arr.shape) != shape:
                    raise ValueError(f"{self.name}: layer {i} {role} has shape {tuple(arr.shape)}, "
                                     f"expected {shape}")
        for name, arr, shape in (("wte", self.wte, (self.vocab, self.d_model)),
                                 ("wpe", self.wpe, (self.n_ctx, self.d_model))):
            if arr is not None and tuple(arr.shape) != shape:
                raise ValueError(f"{self.name}: {name} has shape {tuple(arr.shape)}, expected {shape}")
