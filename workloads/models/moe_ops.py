"""Mixture-of-experts layers of Hugging Face models as a decode step the PIM program can run.

A ``transformers`` MoE block routes each token through a router (a gate GEMV, softmax or
sigmoid scores, top-k, normalisation) to k of E experts, in code that loops over the experts a
batch chose (data-dependent control flow that ``torch.export`` cannot trace). For the export the
router and the experts are swapped (:func:`decode_moe`, in place while the decode step runs) for
three ``pimsim::`` custom ops that the compiler lowers (``compiler.frontends.torch_frontend``):

* ``moe_route(logits, bias, k, score, norm, n_group, topk_group, scale)``: the routing weights
  as a dense ``[tokens, E]`` vector, zero for the experts not chosen (an ASIC op);
* ``expert_in(x, weights, e)``: ``x``, marking the input of expert ``e`` (wiring; it gives each
  expert a GEMV of its own and tells the program which steps are expert ``e``'s);
* ``expert_out(y, weights, e)``: ``y * weights[:, e]`` (an ASIC op; an expert not chosen adds 0).

Every expert's FFN is then plain GEMVs in the graph; the program runs only the chosen experts'
steps (``pimsim.moe``). The router's arithmetic follows each model's own code (transformers
5.x): Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE softmax -> top-k -> optional renormalisation;
gpt-oss top-k of the logits (its router has a bias) -> softmax over the k, and experts with
biases and a clamped SwiGLU (:func:`_gpt_oss_experts_forward`); DeepSeek-V3 sigmoid ->
group-limited top-k -> renormalisation -> scale.

Two attention ops mark what the decode step's attention (:mod:`workloads.models.hf_decode`)
does beyond ``q.K^T``, softmax, ``p.V``: ``attn_window`` (a sliding window) and
``softmax_sink`` (gpt-oss's attention sinks: a learned logit per head in the softmax's
denominator).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_LIB = "pimsim"


def route_reference(logits: torch.Tensor, bias: torch.Tensor | None, k: int, score: str, norm: bool,
                    n_group: int, topk_group: int, scale: float) -> torch.Tensor:
    """Dense routing weights [tokens, E] (see :func:`pimsim.moe.route` for the ASIC's)."""
    x = logits.float()
    if score == "softmax":
        s = torch.softmax(x, dim=-1)
    elif score == "sigmoid":
        s = torch.sigmoid(x)
    else:  # "topk_softmax": top-k of the logits, softmax over the k (gpt-oss)
        s = x
    choice = s + bias.float() if bias is not None else s
    if n_group > 1:
        t, e = choice.shape
        g = choice.view(t, n_group, e // n_group).topk(2, dim=-1)[0].sum(-1)
        keep = torch.zeros_like(g).scatter_(1, g.topk(topk_group, dim=-1)[1], 1.0)
        mask = keep.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
        choice = choice.masked_fill(mask == 0, float("-inf"))
    idx = torch.topk(choice, k, dim=-1)[1]
    w = s.gather(1, idx)
    if score == "topk_softmax":
        w = torch.softmax(w, dim=-1)
    if norm:
        w = w / (w.sum(-1, keepdim=True) + (1e-20 if score == "sigmoid" else 0.0))
    w = w * scale
    return torch.zeros_like(s).scatter_(1, idx, w).to(logits.dtype)


@torch.library.custom_op(f"{_LIB}::moe_route", mutates_args=())
def moe_route(logits: torch.Tensor, bias: torch.Tensor | None, k: int, score: str, norm: bool,
              n_group: int, topk_group: int, scale: float) -> torch.Tensor:
    return route_reference(logits, bias, k, score, norm, n_group, topk_group, scale)


@moe_route.register_fake
def _(logits, bias, k, score, norm, n_group, topk_group, scale):
    return torch.empty_like(logits)


@torch.library.custom_op(f"{_LIB}::expert_in", mutates_args=())
def expert_in(x: torch.Tensor, weights: torch.Tensor, e: int) -> torch.Tensor:
    return x.clone()


@expert_in.register_fake
def _(x, weights, e):
    return torch.empty_like(x)


@torch.library.custom_op(f"{_LIB}::expert_out", mutates_args=())
def expert_out(y: torch.Tensor, weights: torch.Tensor, e: int) -> torch.Tensor:
    return y * weights[:, e:e + 1].to(y.dtype)


@expert_out.register_fake
def _(y, weights, e):
    return torch.empty_like(y)


@torch.library.custom_op(f"{_LIB}::attn_window", mutates_args=())
def attn_window(q: torch.Tensor, window: int) -> torch.Tensor:
    """``q``, marking an attention whose keys are the last ``window`` tokens (sliding window:
    the KV cache is a ring of ``window`` slots, pimsim.isa)."""
    return q.clone()


@attn_window.register_fake
def _(q, window):
    return torch.empty_like(q)


def softmax_sink_reference(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """:func:`softmax_sink` in torch, as transformers' gpt-oss eager attention computes it."""
    x = torch.cat([scores, sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)], dim=-1)
    x = x - x.max(dim=-1, keepdim=True).values  # as gpt-oss's eager attention
    return torch.softmax(x, dim=-1)[..., :-1]


@torch.library.custom_op(f"{_LIB}::softmax_sink", mutates_args=())
def softmax_sink(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` along the last axis with one more logit per row, ``sinks``
    (broadcast to ``[..., 1]``), in the denominator and no output of its own (an ASIC softmax of
    one more element a row, pimsim.asic_ops)."""
    return softmax_sink_reference(scores, sinks)


@softmax_sink.register_fake
def _(scores, sinks):
    return torch.empty_like(scores)


def _router_forward(self: Any, hidden: torch.Tensor) -> tuple:
    hidden = hidden.reshape(-1, self.hidden_dim)
    logits = torch.nn.functional.linear(hidden, self.weight, getattr(self, "bias", None))
    p = self._pimsim_route
    w = torch.ops.pimsim.moe_route(logits, p["bias"], p["k"], p["score"], p["norm"],
                                   p["n_group"], p["topk_group"], p["scale"])
    return logits, w, None


def _experts_forward(self: Any, hidden: torch.Tensor, top_k_index: Any,
                     weights: torch.Tensor) -> torch.Tensor:
    out = None
    act = self.act_fn
    for e in range(self.num_experts):
        x = torch.ops.pimsim.expert_in(hidden, weights, e)
        w_gate, w_up = self.gate_up_proj[e].chunk(2, dim=0)  # two products, as Llama's gate
        gate = torch.nn.functional.linear(x, w_gate)  # and up: split alike over devices
        up = torch.nn.functional.linear(x, w_up)
        y = torch.nn.functional.linear(act(gate) * up, self.down_proj[e])
        y = torch.ops.pimsim.expert_out(y, weights, e)
        out = y if out is None else out + y
    return out


def _gpt_oss_experts_forward(self: Any, hidden: torch.Tensor, top_k_index: Any,
                             weights: torch.Tensor) -> torch.Tensor:
    """gpt-oss's experts (transformers' GptOssExperts): ``gate_up_proj`` [E, d, 2I] holds the
    gate and up columns interleaved (gate even, up odd) with a bias each, then
    ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)``, ``g = clamp(gate, max=limit)``,
    and ``down_proj`` [E, I, d] with a bias."""
    out = None
    for e in range(self.num_experts):
        x = torch.ops.pimsim.expert_in(hidden, weights, e)
        w, b = self.gate_up_proj[e], self.gate_up_proj_bias[e]
        gate = torch.nn.functional.linear(x, w[:, ::2].t(), b[::2])  # two products, split
        up = torch.nn.functional.linear(x, w[:, 1::2].t(), b[1::2])  # alike over devices
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        y = torch.nn.functional.linear((up + 1) * glu, self.down_proj[e].t(),
                                       self.down_proj_bias[e])
        y = torch.ops.pimsim.expert_out(y, weights, e)
        out = y if out is None else out + y
    return out


def _is_gpt_oss(experts: Any) -> bool:
    return hasattr(experts, "gate_up_proj_bias") and hasattr(experts, "limit")


def route_params(router: Any, config: Any) -> dict:
    """The routing arithmetic of a transformers router module (softmax -> top-k -> optional
    renormalisation; Mixtral always renormalises; gpt-oss: top-k of the logits -> softmax over
    the k, its ``GptOssTopKRouter`` having no softmax over all experts). DeepSeek-V3's
    ``DeepseekV3TopkRouter``: sigmoid scores, the ``e_score_correction_bias`` added for the
    choice only, the experts of the ``topk_group`` best of ``n_group`` groups (a group's score:
    its two best), the chosen scores renormalised and scaled by ``routed_scaling_factor``."""
    if type(router).__name__ == "GptOssTopKRouter":
        return {"k": int(router.top_k), "score": "topk_softmax", "norm": False, "n_group": 1,
                "topk_group": 1, "scale": 1.0, "bias": None}
    bias = getattr(router, "e_score_correction_bias", None)
    if bias is not None:
        return {"k": int(router.top_k), "score": "sigmoid", "norm": bool(router.norm_topk_prob),
                "n_group": int(router.num_group), "topk_group": int(router.topk_group),
                "scale": float(router.routed_scaling_factor), "bias": bias}
    return {"k": int(router.top_k), "score": "softmax",
            "norm": bool(getattr(router, "norm_topk_prob", True)), "n_group": 1,
            "topk_group": 1, "scale": 1.0, "bias": None}


def moe_blocks(model: Any) -> list[tuple[Any, Any]]:
    """(router, experts) of every MoE block of a transformers model: a module with a ``gate``
    (gpt-oss: ``router``) holding ``top_k`` and ``weight`` [E, d] and ``experts`` holding
    ``gate_up_proj`` [E, 2I, d] (gpt-oss: [E, d, 2I]) and ``down_proj``."""
    out = []
    for m in model.modules():
        gate, experts = getattr(m, "gate", None), getattr(m, "experts", None)
        if gate is None:
            gate = getattr(m, "router", None)
        if gate is not None and experts is not None and hasattr(gate, "top_k") and \
                hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj"):
            out.append((gate, experts))
    return out


@contextmanager
def decode_moe(model: Any) -> Iterator[None]:
    """The model's MoE blocks (if any) routed through the ``pimsim::`` ops while in the block."""
    blocks = moe_blocks(model)
    for router, experts in blocks:
        router._pimsim_route = route_params(router, model.config)
        router.forward = types.MethodType(_router_forward, router)
        experts.forward = types.MethodType(
            _gpt_oss_experts_forward if _is_gpt_oss(experts) else _experts_forward, experts)
    try:
        yield
    finally:
        for router, experts in blocks:
            for m in (router, experts):
                m.__dict__.pop("forward", None)
            router.__dict__.pop("_pimsim_route", None)
