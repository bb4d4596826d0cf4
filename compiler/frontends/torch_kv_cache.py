"""torch.export of a Hugging Face decoder's own forward and KV cache, read as one decode step.

Two layouts of the cache are read (both found from the program itself, no model recognised):

* **static** (``transformers.integrations.executorch.convert_and_export_with_cache``, or
  ``TorchExportableModuleWithStaticCache``): ``forward(input_ids [1, 1], cache_position [1])`` with
  the cache as buffers ``[1, n_kv, max_cache_len, d_head]``; each layer writes its new key and
  value with ``index_copy_(cache, 2, cache_position, new)`` and attends over the whole buffer
  under a mask that hides the rows past the position.
* **dynamic** (``torch.export.export(model, kwargs={"input_ids", "past_key_values":
  DynamicCache, "position_ids"})`` after ``register_dynamic_cache_export_support()``): one input
  ``[1, n_kv, past, d_head]`` per layer for the keys and one for the values, with a dynamic past
  length; each layer attends over ``cat(past, new)`` under a mask of ``past + 1`` rows.

A PIM decode step holds its own cache and reads the ``past + 1`` rows it has, so
:func:`analyse` finds, from the program:

* which layer and which of key / value each cache tensor is (the order of the attention calls
  and the operand each feeds);
* that each static write's index is the position, and that each attention mask keeps exactly
  the rows up to the position (both evaluated with torch at several positions; a sliding window
  or a bias such as ALiBi is refused, naming the node);
* the ops that only compute the masks, the write indices and the cache's own bookkeeping
  (``cumulative_length``), which are dropped.

The importer then reads the cache as slices of stacked ``past_k`` / ``past_v`` inputs
``[n_layer, n_kv, past, d_head]``, a static write as ``concat(past, new)`` (``past_len + 1``
rows, ``max_cache_len`` written as ``past_len+1`` between a write and its attention), and drops
the masks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from pimsim.errors import UserError

_FIX = ("export one decode step of batch 1: transformers' convert_and_export_with_cache(model) "
        "(a static cache), torch.export of the model's forward with input_ids [1, 1], "
        "position_ids [1, 1] and a DynamicCache whose past length is Dim.AUTO, or "
        "workloads.models.hf_decode.decode_step_module(model)")
_WIRING = ("view", "reshape", "_unsafe_view", "expand", "unsqueeze", "slice", "alias", "clone",
           "contiguous", "_to_copy", "to", "detach", "transpose", "permute")
_EVAL_POSITIONS = (1, 2, 5, 17)  # static caches also 0 and max_cache_len - 1
PAST = "past_len"  # the cache-length symbol of a static cache read as a decode step


class CacheLayoutError(UserError):
    """A program with a KV cache that is not one causal decode step over it."""

    default_fix = _FIX

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix or _FIX)


@dataclass
class KVCache:
    """What the importer needs to read a program's own KV cache as a decode step."""

    layout: str                                       # "static" or "dynamic"
    n_layer: int
    n_kv: int
    d_head: int
    max_len: int                                      # static: the buffers' rows; dynamic: 0
    tensors: dict[str, tuple[int, str]]               # cache placeholder -> (layer, k|v)
    writes: dict[str, tuple[int, str, Any]] = field(default_factory=dict)  # static index_copy
    masks: set[str] = field(default_factory=set)      # attention masks dropped
    needed: set[str] = field(default_factory=set)     # fx nodes the logits depend on
    resized: set[str] = field(default_factory=set)    # static: from a write to its attention
    past_symbols: list = field(default_factory=list)  # dynamic: the past-length symbols


def _packet(n: Any) -> str:
    import torch

    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


def _source(x: Any) -> Any:
    """The node ``x`` is wired from (reshapes, repeats, copies)."""
    while x.op == "call_function" and _packet(x) in _WIRING:
        x = x.args[0]
    return x


def _cat_parts(n: Any) -> list | None:
    """The inputs of a ``cat`` node without 1-D empty tensors (which torch.cat skips: a
    DynamicCache layer starts as ``cat(empty, past)``), or None when ``n`` is no ``cat``."""
    if n.op != "call_function" or _packet(n) not in ("cat", "concat"):
        return None
    return [x for x in n.args[0] if _shape(x) != (0,)]


def _past_input(x: Any) -> Any:
    """The first piece of the ``cat`` an attention operand is wired from, itself followed back
    through wiring and one-piece ``cat``s: the past cache input, if it is one."""
    parts = _cat_parts(_source(x))
    if not parts:
        return None
    x = _source(parts[0])
    while (one := _cat_parts(x)) is not None and len(one) == 1:
        x = _source(one[0])
    return x


def _arg_nodes(n: Any) -> list:
    import torch.fx

    found: list = []
    torch.fx.node.map_arg((n.args, n.kwargs), lambda x: found.append(x) or x)
    return found


def _shape(n: Any) -> tuple:
    return tuple(getattr(n.meta.get("val"), "shape", ()))


_ANALYSED: "weakref.WeakKeyDictionary[Any, KVCache | None]" = weakref.WeakKeyDictionary()


def analyse(ep: Any) -> KVCache | None:
    """The KV cache of ``ep`` in one of the two layouts, or None (a pimsim decode step with
    stacked ``past_k`` / ``past_v``, or no cache at all). Analysed once per program (the
    context, the import and the reference all ask)."""
    if ep not in _ANALYSED:
        _ANALYSED[ep] = _analyse(ep)
    return _ANALYSED[ep]


def _analyse(ep: Any) -> KVCache | None:
    from torch.export.graph_signature import InputKind

    g = ep.graph
    attn = [n for n in g.nodes if n.op == "call_function"
            and _packet(n) == "scaled_dot_product_attention"]
    writes = [n for n in g.nodes if n.op == "call_function"
              and _packet(n) in ("index_copy_", "index_copy")]
    kinds = {s.arg.name: s.kind for s in ep.graph_signature.input_specs}
    ph = {n.name: n for n in g.nodes if n.op == "placeholder"}
    users = [ph[s.arg.name] for s in ep.graph_signature.input_specs
             if s.kind == InputKind.USER_INPUT]
    rank4 = [p for p in users if len(_shape(p)) == 4 and p.meta["val"].is_floating_point()]
    masks = {a.args[3].name for a in attn if len(a.args) > 3 and a.args[3] is not None}
    masks |= {a.kwargs["attn_mask"].name for a in attn if a.kwargs.get("attn_mask") is not None}
    if writes:
        kv = _static(ep, attn, writes, kinds, users)
    elif attn and len(rank4) == 2 * len(attn) and (len(rank4) > 2 or masks):
        kv = _dynamic(ep, attn, rank4, users)
    else:
        return None
    kv.masks = masks
    _needed(ep, kv)
    _check_masks(ep, kv, attn, writes)
    return kv


def _tokens_input(users: list, layout: str) -> Any:
    ids = [p for p in users if len(_shape(p)) == 2 and not p.meta["val"].is_floating_point()]
    named = [p for p in ids if p.name == "input_ids"]
    ids = named or [p for p in ids if p.name not in ("position_ids", "cache_position")]
    if len(ids) != 1:
        raise CacheLayoutError(f"a {layout}-cache program with inputs "
                               f"{[(p.name, list(_shape(p))) for p in users]}: expected one "
                               f"input_ids [1, 1]")
    if _shape(ids[0]) != (1, 1):
        raise CacheLayoutError(
            f"input_ids has shape {list(_shape(ids[0]))}: a {layout}-cache program of more "
            f"than one new token (prefill) or sequence, which is not one decode step")
    return ids[0]


def _static(ep: Any, attn: list, writes: list, kinds: dict, users: list) -> KVCache:
    from torch.export.graph_signature import InputKind

    ids = _tokens_input(users, "static")
    pos = [p for p in users if _shape(p) == (1,) and not p.meta["val"].is_floating_point()]
    if len(pos) != 1 or len(users) != 2:
        raise CacheLayoutError(
            f"a static-cache program with inputs {[(p.name, list(_shape(p))) for p in users]}: "
            f"expected {ids.name} [1, 1] and cache_position [1]")
    tensors: dict[str, tuple[int, str]] = {}
    wr: dict[str, tuple[int, str, Any]] = {}
    for layer, a in enumerate(attn):
        for kind, arg in (("k", a.args[1]), ("v", a.args[2])):
            w = _source(arg)
            if w not in writes:
                raise CacheLayoutError(f"attention node {a.name!r}: its {kind} operand is not a "
                                       f"cache written by index_copy")
            buf = w.args[0]
            if buf.op != "placeholder" or kinds[buf.name] != InputKind.BUFFER:
                raise CacheLayoutError(f"node {w.name!r} writes {buf.name!r}, not a cache buffer")
            if int(w.args[1]) % 4 != 2 or len(_shape(buf)) != 4:
                raise CacheLayoutError(f"node {w.name!r} writes axis {w.args[1]} of a rank "
                                       f"{len(_shape(buf))} buffer: expected the sequence axis "
                                       f"2 of [1, n_kv, max_len, d_head]")
            tensors[buf.name] = (layer, kind)
            wr[w.name] = (layer, kind, w.args[3])
    if len(wr) != len(writes):
        left = sorted({w.name for w in writes} - set(wr))
        raise CacheLayoutError(f"cache writes {left} are read by no attention")
    one, n_kv, max_len, d_head = _one_shape(ep, tensors, "buffers")
    return KVCache("static", len(attn), n_kv, d_head, max_len, tensors, wr)


def _dynamic(ep: Any, attn: list, rank4: list, users: list) -> KVCache:
    import torch

    _tokens_input(users, "dynamic")
    if not any(p.name in ("position_ids", "cache_position") for p in users):
        raise CacheLayoutError(
            "a dynamic-cache program without position_ids or cache_position: the position "
            "would come from the cache's length", "export the forward with position_ids [1, 1]")
    tensors: dict[str, tuple[int, str]] = {}
    for layer, a in enumerate(attn):
        for kind, arg in (("k", a.args[1]), ("v", a.args[2])):
            past = _past_input(arg)
            if past is None or past not in rank4:
                raise CacheLayoutError(f"attention node {a.name!r}: its {kind} operand is not "
                                       f"the concatenation of a past-cache input and the new one")
            tensors[past.name] = (layer, kind)
    ph = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    lengths = [_shape(ph[t])[2] for t in tensors]
    static = [d for d in lengths if not isinstance(d, torch.SymInt)
              or not getattr(d.node.expr, "is_Symbol", False)]
    if static:
        raise CacheLayoutError(
            f"the past cache inputs have a length {static[0]} that is not a dynamic dimension: "
            f"the program serves one position only", "export with dynamic_shapes giving axis 2 "
            "of every cache tensor a torch.export.Dim (or Dim.AUTO)")
    one, n_kv, _, d_head = _one_shape(ep, tensors, "inputs")
    kv = KVCache("dynamic", len(attn), n_kv, d_head, 0, tensors)
    # every layer holds the same past: one length, whatever symbols the export gave each
    kv.past_symbols = sorted({d.node.expr for d in lengths}, key=str)
    return kv


def _one_shape(ep: Any, tensors: dict, what: str) -> tuple:
    import torch

    ph = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    shapes = {tuple("past" if isinstance(d, torch.SymInt) else int(d) for d in _shape(ph[t]))
              for t in tensors}
    if len(shapes) != 1:
        raise CacheLayoutError(f"cache {what} of several shapes {sorted(shapes, key=str)}: every "
                               f"layer's keys and values must have one shape")
    shape = _shape(ph[next(iter(tensors))])
    one, n_kv, n_rows, d_head = shape
    if int(one) != 1:
        raise CacheLayoutError(f"a KV cache of batch {one}: expected one sequence")
    return 1, int(n_kv), (n_rows if isinstance(n_rows, torch.SymInt) else int(n_rows)), \
        int(d_head)


def _needed(ep: Any, kv: KVCache) -> None:
    """The nodes the output depends on, cutting each write's buffer and index and each mask;
    the nodes from a static write up to its attention (``resized``)."""
    out = next(n for n in ep.graph.nodes if n.op == "output")
    todo, seen = [out], set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.name in kv.writes:
            args = [n.args[3]]
        elif n.op == "call_function" and _packet(n) == "scaled_dot_product_attention":
            args = list(n.args[:3])
        else:
            args = _arg_nodes(n)
        todo.extend(a for a in args if a.name not in seen)
    kv.needed = seen
    todo = [n for n in ep.graph.nodes if n.name in kv.writes]
    while todo:
        n = todo.pop()
        for u in n.users:
            if _packet(u) == "scaled_dot_product_attention" or u.name in kv.resized:
                continue
            kv.resized.add(u.name)
            todo.append(u)


def _check_masks(ep: Any, kv: KVCache, attn: list, writes: list) -> None:
    """Each static write's index is the position, and each mask keeps "every row up to the
    position", evaluated with torch at several positions."""
    import torch

    nodes = {n.name: n for n in ep.graph.nodes}
    positions = _EVAL_POSITIONS if kv.layout == "dynamic" else \
        (0,) + _EVAL_POSITIONS + (kv.max_len - 1,)
    for p in positions:
        if kv.layout == "static" and p >= kv.max_len:
            continue
        ev = _Evaluator(ep, kv, p)
        for w in writes:
            idx = ev.value(w.args[2])
            if idx is None or idx.numel() != 1 or int(idx.reshape(-1)[0]) != p:
                raise CacheLayoutError(
                    f"node {w.name!r} writes the cache at "
                    f"{None if idx is None else idx.reshape(-1).tolist()} at position {p}: "
                    f"expected the position itself")
        rows = kv.max_len if kv.layout == "static" else p + 1
        for name in sorted(kv.masks):
            m = ev.value(nodes[name])
            if m is None:
                raise CacheLayoutError(f"attention mask {name!r} depends on more than the "
                                       f"position: not a causal mask over the cache")
            keep = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
            if m.dtype != torch.bool and bool((m[keep] != 0).any()):
                raise CacheLayoutError(f"attention mask {name!r} adds a bias (ALiBi?) besides "
                                       f"hiding rows: not supported")
            want = torch.arange(rows) <= p
            if keep.shape[-1] != rows or not bool((keep == want).all()):
                kept = torch.nonzero(keep.reshape(-1, keep.shape[-1])[0]).reshape(-1).tolist()
                raise CacheLayoutError(
                    f"attention mask {name!r} at position {p} keeps rows {kept[:8]}"
                    f"{'...' if len(kept) > 8 else ''} of {keep.shape[-1]}: not 'every row up "
                    f"to the position' (a sliding window?)")


class _Evaluator:
    """The values of the nodes that depend only on the position, the cache's length and
    buffers that are not the cache, at one position: torch runs them in graph order (in-place
    ops on copies; a dynamic cache's inputs are zeros of that length)."""

    def __init__(self, ep: Any, kv: KVCache, position: int) -> None:
        import torch
        import torch.fx
        from torch.export.graph_signature import InputKind

        env: dict[str, Any] = {}
        ph = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        for s in ep.graph_signature.input_specs:
            name = s.arg.name
            if s.kind == InputKind.USER_INPUT:
                shape = _shape(ph[name])
                val = ph[name].meta.get("val")
                if name in kv.tensors:
                    env[name] = torch.zeros(1, kv.n_kv, position, kv.d_head, dtype=val.dtype)
                elif isinstance(val, torch.Tensor) and not val.is_floating_point():
                    env[name] = torch.full(tuple(int(d) for d in shape), position,
                                           dtype=val.dtype)  # positions (token ids unused)
            elif s.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and \
                    name not in kv.tensors:
                t = ep.state_dict.get(s.target)
                t = ep.constants.get(s.target) if t is None else t
                if t is not None and t.numel() <= 1 << 16:
                    env[name] = t.detach().clone()
        for n in ep.graph.nodes:
            if n.op != "call_function" or not all(a.name in env for a in _arg_nodes(n)):
                continue
            a, kw = torch.fx.node.map_arg((n.args, n.kwargs), lambda x: env[x.name])
            try:
                env[n.name] = n.target(*a, **kw)
            except Exception:  # noqa: BLE001 - a node that cannot run alone: not evaluable
                continue
        self.env = env

    def value(self, n: Any) -> Any:
        return self.env.get(n.name)
