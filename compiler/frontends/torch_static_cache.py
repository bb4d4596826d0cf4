"""torch.export of a Hugging Face decoder with a static KV cache, read as one decode step.

``transformers.integrations.executorch.convert_and_export_with_cache(model)`` (and
``TorchExportableModuleWithStaticCache``) export ``forward(input_ids [1, 1], cache_position [1])``
with the cache as buffers ``[1, n_kv, max_cache_len, d_head]``: each layer writes its new key and
value with ``index_copy_(cache, 2, cache_position, new)`` and attends over the whole buffer under a
mask that hides the rows past the position. A PIM decode step holds its own cache and reads the
``past + 1`` rows it has, so :func:`analyse` finds, from the program itself:

* the cache buffers and which layer and which of key / value each is (the order of the
  attention calls and the operand each buffer feeds);
* that each write's index is the position, and each attention mask is exactly "row <= position"
  (both evaluated with torch at several positions; a sliding window or any other mask is
  refused, naming the node);
* the ops that only compute the masks, the write indices and the cache's own bookkeeping
  (``cumulative_length``), which are dropped.

The importer then reads each buffer as a slice of stacked ``past_k`` / ``past_v`` inputs
``[n_layer, n_kv, past_len, d_head]``, each write as ``concat(past, new)`` (``past_len + 1`` rows),
drops the masks, and writes ``max_cache_len`` as ``past_len+1`` in the shapes of the ops between a
write and its attention (the grouped-query repeat of the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pimsim.errors import UserError

_FIX = ("export with transformers' convert_and_export_with_cache(model) (a static cache, batch 1, "
        "input_ids [1, 1] and cache_position [1]), or as one decode step with "
        "workloads.hf_decode.decode_step_module")
_WIRING = ("view", "reshape", "_unsafe_view", "expand", "unsqueeze", "slice", "alias", "clone",
           "contiguous", "_to_copy", "to", "detach", "transpose", "permute")
_EVAL_POSITIONS = (0, 1, 2, 5)  # and max_cache_len - 1


class StaticCacheError(UserError):
    """A static-cache program that is not one causal decode step over its cache."""

    default_fix = _FIX

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix or _FIX)


@dataclass
class StaticCache:
    """What the importer needs to read a static-cache program as a decode step."""

    n_layer: int
    n_kv: int
    d_head: int
    max_len: int
    position: str                                     # the cache_position placeholder
    buffers: dict[str, tuple[int, str]]               # cache buffer placeholder -> (layer, k|v)
    writes: dict[str, tuple[int, str, Any]]           # index_copy node -> (layer, k|v, new value)
    masks: set[str] = field(default_factory=set)      # attention masks dropped
    needed: set[str] = field(default_factory=set)     # fx nodes the logits depend on
    resized: set[str] = field(default_factory=set)    # nodes between a write and its attention
    dropped_buffers: set[str] = field(default_factory=set)  # bookkeeping buffers (mutated)


def _packet(n: Any) -> str:
    import torch

    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


def analyse(ep: Any) -> StaticCache | None:
    """The static cache of ``ep``, or None when the program has none (no ``index_copy``)."""
    from torch.export.graph_signature import InputKind

    g = ep.graph
    writes = [n for n in g.nodes if n.op == "call_function"
              and _packet(n) in ("index_copy_", "index_copy")]
    if not writes:
        return None
    sig = ep.graph_signature
    kinds = {s.arg.name: s for s in sig.input_specs}
    ph = {n.name: n for n in g.nodes if n.op == "placeholder"}
    users_in = [ph[s.arg.name] for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    pos = [p for p in users_in if tuple(p.meta["val"].shape) == (1,)
           and not p.meta["val"].is_floating_point()]
    ids = [p for p in users_in if len(p.meta["val"].shape) == 2
           and not p.meta["val"].is_floating_point()]
    if len(pos) != 1 or len(ids) != 1 or len(users_in) != 2:
        raise StaticCacheError(
            f"a static-cache program with inputs "
            f"{[(p.name, list(p.meta['val'].shape)) for p in users_in]}: expected input_ids "
            f"[1, 1] and cache_position [1]")
    if tuple(ids[0].meta["val"].shape) != (1, 1):
        raise StaticCacheError(
            f"input_ids has shape {list(ids[0].meta['val'].shape)}: a static-cache program of "
            f"more than one new token (prefill) or sequence, which is not one decode step")
    position = pos[0]

    def source(x: Any) -> Any:
        """The node ``x`` is wired from (reshapes, repeats, copies)."""
        while x.op == "call_function" and _packet(x) in _WIRING:
            x = x.args[0]
        return x

    bufs: dict[str, tuple[int, str]] = {}
    wr: dict[str, tuple[int, str, Any]] = {}
    attn = [n for n in g.nodes if n.op == "call_function"
            and _packet(n) == "scaled_dot_product_attention"]
    for layer, a in enumerate(attn):
        for kind, arg in (("k", a.args[1]), ("v", a.args[2])):
            w = source(arg)
            if w not in writes:
                raise StaticCacheError(f"attention node {a.name!r}: its {kind} operand is not a "
                                       f"cache written by index_copy")
            buf = w.args[0]
            if buf.op != "placeholder" or kinds[buf.name].kind != InputKind.BUFFER:
                raise StaticCacheError(f"node {w.name!r} writes {buf.name!r}, not a cache buffer")
            if int(w.args[1]) % 4 != 2 or len(buf.meta["val"].shape) != 4:
                raise StaticCacheError(f"node {w.name!r} writes axis {w.args[1]} of a rank "
                                       f"{len(buf.meta['val'].shape)} buffer: expected the "
                                       f"sequence axis 2 of [1, n_kv, max_len, d_head]")
            bufs[buf.name] = (layer, kind)
            wr[w.name] = (layer, kind, w.args[3])
    if len(wr) != len(writes):
        left = sorted({w.name for w in writes} - set(wr))
        raise StaticCacheError(f"cache writes {left} are read by no attention")
    shapes = {tuple(ph[b].meta["val"].shape) for b in bufs}
    if len(shapes) != 1:
        raise StaticCacheError(f"cache buffers of several shapes {sorted(shapes)}: every layer's "
                               f"keys and values must have one shape")
    (one, n_kv, max_len, d_head), = shapes
    if one != 1:
        raise StaticCacheError(f"a static cache of batch {one}: expected one sequence")
    sc = StaticCache(len(attn), int(n_kv), int(d_head), int(max_len), position.name, bufs, wr)
    sc.masks = {a.args[3].name for a in attn if len(a.args) > 3 and a.args[3] is not None}
    sc.masks |= {a.kwargs["attn_mask"].name for a in attn
                 if a.kwargs.get("attn_mask") is not None}
    _needed(ep, sc)
    _check_values(ep, sc, attn, writes)
    return sc


def _needed(ep: Any, sc: StaticCache) -> None:
    """The nodes the output depends on, cutting each write's buffer and index and each mask;
    the nodes from a write up to its attention (``resized``)."""
    out = next(n for n in ep.graph.nodes if n.op == "output")
    todo, seen = [out], set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.name in sc.writes:
            args = [n.args[3]]
        elif n.op == "call_function" and _packet(n) == "scaled_dot_product_attention":
            args = list(n.args[:3])
        else:
            args = _arg_nodes(n)
        todo.extend(a for a in args if a.name not in seen)
    sc.needed = seen
    todo = [n for n in ep.graph.nodes if n.name in sc.writes]
    while todo:
        n = todo.pop()
        for u in n.users:
            if _packet(u) == "scaled_dot_product_attention" or u.name in sc.resized:
                continue
            sc.resized.add(u.name)
            todo.append(u)


def _arg_nodes(n: Any) -> list:
    import torch.fx

    found: list = []
    torch.fx.node.map_arg((n.args, n.kwargs), lambda x: found.append(x) or x)
    return found


def _check_values(ep: Any, sc: StaticCache, attn: list, writes: list) -> None:
    """Each write's index is the position and each mask is "row <= position", evaluated with
    torch at several positions."""
    import torch

    for p in _EVAL_POSITIONS + (sc.max_len - 1,):
        if p >= sc.max_len:
            continue
        ev = _Evaluator(ep, sc, p)
        for w in writes:
            idx = ev.value(w.args[2])
            if idx is None or idx.numel() != 1 or int(idx.reshape(-1)[0]) != p:
                raise StaticCacheError(
                    f"node {w.name!r} writes the cache at "
                    f"{None if idx is None else idx.reshape(-1).tolist()} at position {p}: "
                    f"expected the position itself")
        for name in sc.masks:
            node = next(n for n in ep.graph.nodes if n.name == name)
            m = ev.value(node)
            if m is None:
                raise StaticCacheError(f"attention mask {name!r} depends on more than the "
                                       f"position: not a causal mask over the cache")
            keep = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
            if m.dtype != torch.bool and bool((m[keep] != 0).any()):
                raise StaticCacheError(f"attention mask {name!r} adds a bias (ALiBi?) besides "
                                       f"hiding rows: not supported with a static cache")
            want = torch.arange(sc.max_len) <= p
            if keep.shape[-1] != sc.max_len or not bool((keep == want).all()):
                raise StaticCacheError(
                    f"attention mask {name!r} at position {p} keeps rows "
                    f"{torch.nonzero(keep.reshape(-1, keep.shape[-1])[0]).reshape(-1).tolist()[:8]}"
                    f"...: not 'every row up to the position' (a sliding window?)")


class _Evaluator:
    """The values of the nodes that depend only on the position and on buffers that are not
    the cache, at one position: torch runs them in graph order (in-place ops on copies)."""

    def __init__(self, ep: Any, sc: StaticCache, position: int) -> None:
        import torch
        import torch.fx
        from torch.export.graph_signature import InputKind

        env: dict[str, Any] = {sc.position: torch.tensor([position], dtype=torch.long)}
        for s in ep.graph_signature.input_specs:
            if s.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and \
                    s.arg.name not in sc.buffers:
                t = ep.state_dict.get(s.target)
                t = ep.constants.get(s.target) if t is None else t
                if t is not None and t.numel() <= 1 << 16:
                    env[s.arg.name] = t.detach().clone()
        for n in ep.graph.nodes:
            if n.op != "call_function":
                continue
            args = _arg_nodes(n)
            if not all(a.name in env for a in args):
                continue
            a, kw = torch.fx.node.map_arg((n.args, n.kwargs), lambda x: env[x.name])
            try:
                env[n.name] = n.target(*a, **kw)
            except Exception:  # noqa: BLE001 - a node that cannot run alone: not evaluable
                continue
        self.env = env

    def value(self, n: Any) -> Any:
        return self.env.get(n.name)
