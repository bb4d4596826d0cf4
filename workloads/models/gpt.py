"""GPT decoder reference model: the workload the PIM simulator runs and the compiler lowers.

Models a GPT-2/GPT-3 style decoder-only transformer at batch 1:

    h = wte[token] + wpe[pos]
    per block (pre-LayerNorm, GPT-2 style):
        a = ln_1(h);  q, k, v = a @ Wq.T + bq, ...        (d_model -> n_head*d_head each)
        attn = softmax(q k^T / sqrt(d_head), causal) v     (per head)
        h = h + attn @ Wo.T + bo                           (n_head*d_head -> d_model)
        m = ln_2(h);  h = h + gelu_tanh(m @ Wup.T + bup) @ Wdown.T + bdown
    logits = ln_f(h) @ wte.T                               (tied LM head, no bias)

``n_head * d_head`` need not equal ``d_model`` (GPT-3 XL: 24 x 128 = 3072 vs 2048); the model
never assumes it does.

KV cache layout (batch 1 implied): ``[n_layer, n_head, seq_len, d_head]`` for K and for V.
Linear weights use the ``nn.Linear`` layout ``[out_features, in_features]``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.presets import BF16_BYTES, PRESETS, get_config  # noqa: F401
from workloads.models.shape import DecoderShape

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

INIT_STD = 0.02


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections and a KV cache."""

    def __init__(self, cfg: DecoderShape, **factory: object) -> None:
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.q = nn.Linear(cfg.d_model, cfg.d_attn, **factory)
        self.k = nn.Linear(cfg.d_model, cfg.d_attn, **factory)
        self.v = nn.Linear(cfg.d_model, cfg.d_attn, **factory)
        self.out = nn.Linear(cfg.d_attn, cfg.d_model, **factory)

    def forward(self, x_td: torch.Tensor, past_k_hpd: torch.Tensor, past_v_hpd: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [T, d_model]; past: [n_head, P, d_head] -> (y [T, d_model], present k, v [n_head, P+T, d_head])."""
        T = x_td.shape[0]
        q_htd = self.q(x_td).view(T, self.n_head, self.d_head).transpose(0, 1)
        k_htd = self.k(x_td).view(T, self.n_head, self.d_head).transpose(0, 1)
        v_htd = self.v(x_td).view(T, self.n_head, self.d_head).transpose(0, 1)
        k_hsd = torch.cat([past_k_hpd, k_htd], dim=1)
        v_hsd = torch.cat([past_v_hpd, v_htd], dim=1)
        scores_hts = torch.matmul(q_htd, k_hsd.transpose(1, 2)) * (1.0 / math.sqrt(self.d_head))
        if T > 1:  # a single new token may attend to every cached position: no mask needed
            S = k_hsd.shape[1]
            past_len = S - T
            allowed_ts = torch.ones(T, S, dtype=torch.bool, device=x_td.device).tril(diagonal=past_len)
            scores_hts = scores_hts.masked_fill(~allowed_ts, float("-inf"))
        probs_hts = torch.softmax(scores_hts, dim=-1)
        ctx_htd = torch.matmul(probs_hts, v_hsd)
        ctx_ta = ctx_htd.transpose(0, 1).reshape(T, self.n_head * self.d_head)
        return self.out(ctx_ta), k_hsd, v_hsd


class MLP(nn.Module):
    """Feed-forward: up (d_model -> d_ff), tanh-approximated GELU, down (d_ff -> d_model)."""

    def __init__(self, cfg: DecoderShape, **factory: object) -> None:
        super().__init__()
        assert cfg.d_ff is not None
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, **factory)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, **factory)

    def forward(self, x_td: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x_td), approximate="tanh"))


class Block(nn.Module):
    """One pre-LayerNorm transformer block."""

    def __init__(self, cfg: DecoderShape, **factory: object) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, **factory)
        self.attn = Attention(cfg, **factory)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, **factory)
        self.mlp = MLP(cfg, **factory)

    def forward(self, h_td: torch.Tensor, past_k_hpd: torch.Tensor, past_v_hpd: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a_td, k_hsd, v_hsd = self.attn(self.ln_1(h_td), past_k_hpd, past_v_hpd)
        h_td = h_td + a_td
        h_td = h_td + self.mlp(self.ln_2(h_td))
        return h_td, k_hsd, v_hsd


class GPT(nn.Module):
    """GPT decoder at batch 1. See the module docstring for the maths and the KV-cache layout."""

    def __init__(self, cfg: DecoderShape, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not cfg.is_gpt_layout:
            from pimsim.errors import UserError

            raise UserError(f"{cfg.name!r} is not a GPT-2 layout shape (learned positions, "
                            f"LayerNorm, biased projections, plain MLP, tied head)",
                            "build it through its Hugging Face family (workloads.models.zoo)")
        factory = {"device": device, "dtype": dtype}
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model, **factory)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model, **factory)
        self.h = nn.ModuleList(Block(cfg, **factory) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, **factory)

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_seed(cls, cfg: DecoderShape, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
        """Deterministic random weights, independent of the global RNG state.

        Every weight and bias ~ N(0, 0.02); LayerNorm weight ~ 1 + N(0, 0.02). Each parameter is
        filled from its own ``torch.Generator`` seeded from ``(seed, parameter name)``, so the
        result does not depend on thread scheduling; parameters are filled by a thread pool
        (``normal_`` releases the GIL), which keeps gpt2-xl construction to tens of seconds.
        The model is returned in eval mode with ``requires_grad`` off (a reference for inference).
        """
        with torch.device("meta"):
            model = cls(cfg, dtype=dtype)
        model = model.to_empty(device="cpu")

        def fill(item: tuple[str, nn.Parameter]) -> None:
            name, param = item
            gen = torch.Generator(device="cpu").manual_seed(_param_seed(seed, name))
            with torch.no_grad():
                param.normal_(0.0, INIT_STD, generator=gen)
                if _is_layernorm_weight(name):
                    param.add_(1.0)

        n_workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            list(pool.map(fill, model.named_parameters()))
        return model.requires_grad_(False).eval()

    def empty_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty KV cache ``[n_layer, n_head, 0, d_head]`` (K, V) matching the model dtype."""
        c = self.cfg
        shape = (c.n_layer, c.n_head, 0, c.d_head)
        dtype, device = self.wte.weight.dtype, self.wte.weight.device
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)

    def bf16_rounded(self) -> GPT:
        """A copy whose parameters are rounded to bf16 and stored back in float32."""
        clone = copy.deepcopy(self).to(torch.float32)
        round_weights_to_bf16(clone)
        return clone.eval()

    # ---- inference -----------------------------------------------------------------------

    def _run(self, ids_t: torch.Tensor, pos_t: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, pos: [T]; past: [n_layer, n_head, P, d_head] -> (logits [T, vocab], present k, v)."""
        h_td = self.wte(ids_t) + self.wpe(pos_t)
        presents_k, presents_v = [], []
        for layer, block in enumerate(self.h):
            h_td, k_hsd, v_hsd = block(h_td, past_k[layer], past_v[layer])
            presents_k.append(k_hsd)
            presents_v.append(v_hsd)
        logits_tv = F.linear(self.ln_f(h_td), self.wte.weight)  # tied head: h @ wte.T
        return logits_tv, torch.stack(presents_k), torch.stack(presents_v)

    def decode_step(self, token_ids: torch.Tensor, pos: int | torch.Tensor,
                    past_k: torch.Tensor, past_v: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step.

        token_ids: int64 [1, 1]; pos: the new token's position (normally ``past_len``), an int or
        an int64 tensor of one element; past_k, past_v: [n_layer, n_head, past_len, d_head].
        Returns (logits [1, vocab], present_k, present_v [n_layer, n_head, past_len+1, d_head]).
        """
        if isinstance(pos, int):
            if not 0 <= pos < self.cfg.n_ctx:
                raise ValueError(f"position {pos} outside [0, {self.cfg.n_ctx})")
            pos_t = torch.tensor([pos], dtype=torch.long, device=token_ids.device)
        else:
            pos_t = pos.reshape(1)
        return self._run(token_ids.reshape(1), pos_t, past_k, past_v)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full causal pass over a prompt idx [1, T] (int64).

        Returns (logits [1, T, vocab], k, v [n_layer, n_head, T, d_head]).
        """
        if idx.dim() != 2 or idx.shape[0] != 1:
            raise ValueError(f"idx must be [1, T], got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds n_ctx {self.cfg.n_ctx}")
        past_k, past_v = self.empty_kv()
        pos_t = torch.arange(T, dtype=torch.long, device=idx.device)
        logits_tv, k, v = self._run(idx[0], pos_t, past_k, past_v)
        return logits_tv.unsqueeze(0), k, v

    @torch.no_grad()
    def generate_greedy(self, prompt_ids: Sequence[int] | torch.Tensor, n_tokens: int
                        ) -> tuple[list[int], torch.Tensor]:
        """Greedy decoding, one ``decode_step`` per token (the prompt is fed token by token too).

        Returns (the ``n_tokens`` generated token ids, logits [n_tokens, vocab] that chose each).
        """
        prompt = [int(t) for t in torch.as_tensor(prompt_ids).reshape(-1).tolist()]
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        if len(prompt) + n_tokens - 1 > self.cfg.n_ctx:
            raise ValueError(f"prompt {len(prompt)} + {n_tokens} tokens exceeds n_ctx {self.cfg.n_ctx}")
        device = self.wte.weight.device
        past_k, past_v = self.empty_kv()
        logits: torch.Tensor | None = None
        for pos, tok in enumerate(prompt):
            tok_t = torch.tensor([[tok]], dtype=torch.long, device=device)
            logits, past_k, past_v = self.decode_step(tok_t, pos, past_k, past_v)
        generated: list[int] = []
        step_logits: list[torch.Tensor] = []
        for step in range(n_tokens):
            assert logits is not None
            nxt = int(torch.argmax(logits[0]))
            generated.append(nxt)
            step_logits.append(logits[0])
            if step + 1 < n_tokens:
                tok_t = torch.tensor([[nxt]], dtype=torch.long, device=device)
                logits, past_k, past_v = self.decode_step(tok_t, len(prompt) + step, past_k, past_v)
        empty = torch.empty(0, self.cfg.vocab, dtype=self.wte.weight.dtype, device=device)
        return generated, (torch.stack(step_logits) if step_logits else empty)


def _param_seed(seed: int, param_name: str) -> int:
    """A stable 63-bit seed for one parameter (same on every machine and Python run)."""
    digest = hashlib.sha256(f"{seed}/{param_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _is_layernorm_weight(param_name: str) -> bool:
    module_name, _, leaf = param_name.rpartition(".")
    return leaf == "weight" and module_name.rpartition(".")[2] in ("ln_1", "ln_2", "ln_f")


# --------------------------------------------------------------------------------------------
# Helpers for the simulator and compiler
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def round_weights_to_bf16(model: ModuleT) -> ModuleT:
    """Round every parameter to bf16 and back to float32, in place (the simulator stores bf16)."""
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16).to(torch.float32)
    return model


class WeightMatrix(NamedTuple):
    """A matrix the PIM multiplies by: ``weight`` is ``[out_features, in_features]``."""

    name: str
    role: str
    weight: torch.Tensor


ROLES = ("qkv_q", "qkv_k", "qkv_v", "out_proj", "ffn_up", "ffn_down", "lm_head")


def named_weight_matrices(model: GPT) -> Iterator[WeightMatrix]:
    """Yield (name, role, weight) for every matrix-vector product of a decode step, in order.

    Names are module paths (``h.3.attn.q``, ``h.3.mlp.down``); the tied LM head is ``lm_head``
    and its weight is ``wte.weight`` (``[vocab, d_model]``).
    """
    for layer, block in enumerate(model.h):
        prefix = f"h.{layer}"
        yield WeightMatrix(f"{prefix}.attn.q", "qkv_q", block.attn.q.weight)
        yield WeightMatrix(f"{prefix}.attn.k", "qkv_k", block.attn.k.weight)
        yield WeightMatrix(f"{prefix}.attn.v", "qkv_v", block.attn.v.weight)
        yield WeightMatrix(f"{prefix}.attn.out", "out_proj", block.attn.out.weight)
        yield WeightMatrix(f"{prefix}.mlp.up", "ffn_up", block.mlp.up.weight)
        yield WeightMatrix(f"{prefix}.mlp.down", "ffn_down", block.mlp.down.weight)
    yield WeightMatrix("lm_head", "lm_head", model.wte.weight)
