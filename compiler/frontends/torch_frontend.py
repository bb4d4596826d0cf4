"""torch.export -> IR: one IR node per aten call, parameters as constants.

``import_exported(ep)`` walks an ``ExportedProgram`` (either the default export IR with
``aten.linear`` / ``aten.layer_norm``, or the core-aten IR after ``run_decompositions()`` with
``addmm`` / ``permute`` / ``native_layer_norm`` / ``bmm``) and maps each call through
:data:`ATEN_OPS`. Parameters, buffers and lifted constants become ``Graph.consts`` under their
state-dict names (``model.h.0.attn.q.weight``): float32 numpy copies, or shape-only
:class:`~compiler.ir.ConstMeta` when they live on the ``meta`` device. Python scalars in the
arguments (``x * 0.25``) become scalar constants named ``<node>.arg<i>``.

Shape arithmetic (``sym_size``, ``operator.add`` on sizes) is folded at import into symbolic
dimension strings; symbols are named after the ``torch.export.Dim`` they came from where the
program records it (``past_len``), else ``<input>_d<axis>``. No-op calls (``clone``,
``contiguous``, ``alias``, eval-mode ``dropout``) are dropped.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import numpy as np

from compiler.frontends.common import UnsupportedOpError, f32_attr
from compiler.ir import Builder, ConstMeta, Graph

_TORCH_DTYPES = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
    "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool",
}


def _dtype(t: Any) -> str:
    name = str(t).removeprefix("torch.")
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"torch dtype {t} has no IR dtype") from None


def import_torch_module(module: Any, example_inputs: tuple, dynamic_shapes: Any = None,
                        strict: bool = False) -> Graph:
    """``torch.export`` ``module`` on ``example_inputs`` and import the program."""
    import torch

    ep = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes,
                             strict=strict)
    return import_exported(ep)


def import_exported(ep: Any) -> Graph:
    """Import a ``torch.export.ExportedProgram`` into the IR."""
    return _Importer(ep).run()


class _Importer:
    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.b = Builder()
        self.alias: dict[str, str] = {}      # fx node name -> IR value name
        self.sym: dict[str, int | str] = {}  # fx node name of a size computation -> dim
        self.sym_names: dict[Any, str] = {}  # sympy symbol -> IR dim name
        self.tuples: dict[str, dict[int, str]] = {}  # multi-output fx node -> {index: value}
        self.kv: Any = None  # the model's own KV cache (torch_kv_cache.KVCache), if any
        self.resize = False  # the node in hand reads a static cache: max_len is past_len+1

    # ---- helpers -------------------------------------------------------------------------

    def dim(self, d: Any) -> int | str:
        import torch

        if isinstance(d, int):
            return d
        if isinstance(d, torch.SymInt):
            expr = d.node.expr
            if getattr(expr, "is_Integer", False):
                return int(expr)
            import sympy

            expr = expr.xreplace({s: sympy.Symbol(n) for s, n in self.sym_names.items()})
            return str(expr).replace(" ", "")
        raise TypeError(f"not a dimension: {d!r}")

    def dims(self, xs: Sequence[Any]) -> list[int | str]:
        import torch.fx

        out: list[int | str] = []
        for x in xs:
            if isinstance(x, torch.fx.Node):
                if x.name not in self.sym:
                    raise ValueError(f"dimension {x.name} is not a size computation")
                out.append(self.sym[x.name])
            else:
                out.append(self.dim(x))
        if self.resize:  # a shape of the static cache: its rows are the past and the new one
            from compiler.frontends.torch_kv_cache import PAST, CacheLayoutError

            n = self.kv.max_len
            if out.count(n) > 1:
                raise CacheLayoutError(
                    f"a shape {out} of the static cache has more than one axis of the cache "
                    f"length {n}", "export with a max_cache_len other than the model's head "
                    "count and sizes")
            out = [f"{PAST}+1" if d == n else d for d in out]
        return out

    def name(self, x: Any) -> str:
        return self.alias.get(x.name, x.name)

    def arg(self, n: Any, i: int, other: Any = None) -> str:
        """Positional tensor argument ``i`` of ``n``; a Python number becomes a scalar constant."""
        import torch.fx

        a = n.args[i]
        if isinstance(a, torch.fx.Node):
            return self.name(a)
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise UnsupportedOpError("torch.export", _target_name(n), n.name, ATEN_OPS,
                                     f"argument {i} is {type(a).__name__}")
        floating = isinstance(a, float) or (other is not None and _is_float(other))
        value = np.array(a, np.float32 if floating else np.int64)
        name = f"{n.name}.arg{i}"
        self.b.const(name, value)
        return name

    def rank(self, x: Any) -> int:
        return len(x.meta["val"].shape)

    def emit(self, op: str, n: Any, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        return self.b.op(op, inputs, out=out or n.name, name=n.name, **attrs)

    def unsupported(self, n: Any, detail: str = "") -> UnsupportedOpError:
        return UnsupportedOpError("torch.export", _target_name(n), n.name, ATEN_OPS, detail)

    # ---- driver --------------------------------------------------------------------------

    def run(self) -> Graph:
        import torch
        from torch.export.graph_signature import InputKind, OutputKind

        from compiler.frontends.torch_kv_cache import analyse

        ep = self.ep
        sig = ep.graph_signature
        self.kv = sc = analyse(ep)  # the model's own KV cache (static buffers or per layer)
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        user_inputs = []
        for spec in sig.input_specs:
            ph_name = spec.arg.name
            if sc is not None and ph_name in sc.tensors:
                continue  # read as a slice of past_k / past_v (_past_slices, _index_copy)
            if spec.kind == InputKind.USER_INPUT:
                user_inputs.append(placeholders[ph_name])
                continue
            if spec.kind == InputKind.PARAMETER:
                tensor = ep.state_dict[spec.target]
            elif spec.kind == InputKind.BUFFER:
                tensor = (ep.state_dict[spec.target] if spec.persistent is not False
                          else ep.constants[spec.target])
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                tensor = ep.constants[spec.target]
            else:
                raise ValueError(f"torch.export input {ph_name!r} of kind {spec.kind} unsupported")
            self.b.const(spec.target, _to_const(tensor))
            self.alias[ph_name] = spec.target
        self._name_symbols(user_inputs)
        for ph in list(user_inputs):
            val = ph.meta.get("val")
            if not isinstance(val, torch.Tensor):
                if not ph.users:  # a flag the export specialised (use_cache=True): unused
                    user_inputs.remove(ph)
                    continue
                raise ValueError(f"torch.export input {ph.name!r} is not a tensor ({type(val).__name__})")
            self.b.input(ph.name, tuple(self.dim(d) for d in val.shape), _dtype(val.dtype))
        if sc is not None:
            self._past_inputs(sc, placeholders)

        for n in ep.graph.nodes:
            if n.op in ("placeholder", "output"):
                continue
            if n.op != "call_function":
                raise UnsupportedOpError("torch.export", n.op, n.name, ATEN_OPS)
            if not n.users or (sc is not None and n.name not in sc.needed):
                continue  # unused, or only a cache's mask, write index or bookkeeping
            self.resize = sc is not None and n.name in sc.resized
            val = n.meta.get("val")
            if isinstance(val, (int, torch.SymInt)) and not isinstance(val, bool):
                self.sym[n.name] = self.dim(val)  # shape arithmetic, folded
                continue
            if n.target is operator.getitem:
                self._getitem(n)
                continue
            key = _packet(n.target)
            handler = ATEN_OPS.get(key) if key else None
            try:
                if handler is None and key in _ROUTING:
                    raise self.unsupported(n, "data-dependent selection, as a mixture-of-experts "
                                              "router does: the PIM program routes only through "
                                              "its pimsim::moe_route / expert_in / expert_out "
                                              "ops (workloads.models.moe_ops, which a "
                                              "transformers MoE block with a gate and experts "
                                              "is exported through)")
                if handler is None:
                    raise self.unsupported(n)
                handler(self, n)
            except UnsupportedOpError as e:
                if _looks_like_prefill(user_inputs):
                    e.args = (f"{e.args[0]}; the graph takes a sequence of token ids and no KV "
                              f"cache: a prefill graph, which is not lowered; export one decode "
                              f"step instead: token [1, 1], position [1], past_k / past_v "
                              f"[n_layer, n_kv_head, past_len, d_head] (workloads.models.hf_decode."
                              f"decode_step_module wraps a Hugging Face causal LM)",)
                raise

        out_nodes = {s.arg.name: s for s in sig.output_specs}
        outputs = []
        (ret,) = [n for n in ep.graph.nodes if n.op == "output"]
        for x in ret.args[0]:
            spec = out_nodes.get(x.name) if x is not None else None
            if sc is not None and spec is not None and spec.kind == OutputKind.BUFFER_MUTATION:
                continue  # the static cache's own writes: the PIM keeps the cache
            if spec is not None and spec.kind != OutputKind.USER_OUTPUT:
                raise ValueError(f"torch.export output {x.name!r} of kind {spec.kind} unsupported "
                                 f"(buffer mutation?)")
            outputs.append(self.name(x))
        return self.b.build(outputs).prune().verify()

    def _name_symbols(self, user_inputs: list[Any]) -> None:
        import torch

        for ph in user_inputs:
            val = ph.meta.get("val")
            for axis, d in enumerate(getattr(val, "shape", ())):
                if not isinstance(d, torch.SymInt):
                    continue
                expr = d.node.expr
                if getattr(expr, "is_Symbol", False) and expr not in self.sym_names:
                    self.sym_names[expr] = _debug_name(d) or f"{ph.name}_d{axis}"

    def _past_inputs(self, kv: Any, placeholders: dict) -> None:
        """Stacked ``past_k`` / ``past_v`` [n_layer, n_kv, past, d_head] for the model's own
        cache; a dynamic cache's per-layer inputs become slices of them."""
        from compiler.frontends.torch_kv_cache import PAST

        past = PAST
        if kv.layout == "dynamic":
            ph = placeholders[next(iter(kv.tensors))]
            past = _debug_name(ph.meta["val"].shape[2]) or PAST
            for sym in kv.past_symbols:  # one past length for every layer
                self.sym_names[sym] = past
        for name in ("past_k", "past_v"):
            self.b.input(name, (kv.n_layer, kv.n_kv, past, kv.d_head), "f32")
        if kv.layout == "dynamic":
            for ph_name, (layer, kind) in kv.tensors.items():
                self.alias[ph_name] = self.past_slice(layer, kind)

    def past_slice(self, layer: int, kind: str) -> str:
        """``past_k[layer:layer+1]`` (or ``past_v``): one layer's cache, [1, n_kv, past, d]."""
        out = f"past_{kind}.{layer}"
        if out not in self.b.values:
            self.b.op("slice", ["past_k" if kind == "k" else "past_v"], out=out, name=out,
                      axes=[0], starts=[layer], ends=[layer + 1], steps=[1])
        return out

    def _getitem(self, n: Any) -> None:
        src, idx = n.args
        outs = self.tuples.get(src.name)
        if outs is None or idx not in outs:
            raise self.unsupported(n, f"output {idx} of {src.name} ({_target_name(src)}) unsupported")
        self.alias[n.name] = outs[idx]


_ROUTING = ("topk", "sort", "argsort", "nonzero", "where_index", "index_put", "index_add",
            "scatter", "scatter_add", "one_hot", "masked_select")


def _looks_like_prefill(user_inputs: list) -> bool:
    """Integer token ids longer than one and no rank-4 (KV cache) input."""
    vals = [ph.meta.get("val") for ph in user_inputs]
    shapes = [tuple(getattr(v, "shape", ())) for v in vals]
    dtypes = [str(getattr(v, "dtype", "")) for v in vals]
    ids = [sh for sh, dt in zip(shapes, dtypes) if "int" in dt and len(sh) == 2]
    return bool(ids) and not any(len(sh) == 4 for sh in shapes) and any(
        not (isinstance(sh[1], int) and sh[1] == 1) for sh in ids)


def _to_const(t: Any) -> np.ndarray | ConstMeta:
    if t.device.type == "meta":
        return ConstMeta(tuple(int(d) for d in t.shape),
                         "f32" if t.is_floating_point() else _dtype(t.dtype))
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.float32 and t.is_contiguous():
        # the module's own memory (no second copy of a large model's weights), read-only so
        # that no pass can write through to the module
        arr = t.numpy()
        arr.flags.writeable = False
        return arr
    if t.is_floating_point():
        return np.array(t.float().numpy(), dtype=np.float32, copy=True)
    return np.array(t.numpy(), copy=True)


def _debug_name(d: Any) -> str | None:
    """The ``torch.export.Dim`` name of a size symbol, where the shape environment recorded it."""
    try:
        env = d.node.shape_env
        for src in env.var_to_sources.get(d.node.expr, []):
            key = src.name() if callable(src.name) else src.name
            name = env.source_name_to_debug_name.get(key)
            if name:
                return str(name)
    except Exception:  # private torch internals: fall back to a positional name
        return None
    return None


def _packet(target: Any) -> str | None:
    import torch

    if isinstance(target, torch._ops.OpOverload):
        if target.namespace == "pimsim":  # workloads.models.moe_ops
            return f"pimsim.{target.overloadpacket.__name__}"
        if target.namespace != "aten":
            return None
        return target.overloadpacket.__name__
    return None


def _target_name(n: Any) -> str:
    import torch

    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    return getattr(t, "__name__", str(t))


def _is_float(x: Any) -> bool:
    import torch.fx

    if isinstance(x, torch.fx.Node):
        val = x.meta.get("val")
        return bool(getattr(val, "is_floating_point", lambda: False)())
    return isinstance(x, float)


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _kw(n: Any, i: int, key: str, default: Any) -> Any:
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(key, default)


# ---- handlers: aten op packet -> IR -----------------------------------------------------------

Handler = Callable[[_Importer, Any], None]


def _binary(op: str) -> Handler:
    def h(im: _Importer, n: Any) -> None:
        if _kw(n, 2, "alpha", 1) != 1:
            raise im.unsupported(n, "alpha != 1")
        if n.kwargs.get("rounding_mode") is not None:
            raise im.unsupported(n, "rounding_mode")
        a, b = n.args[0], n.args[1]
        im.emit(op, n, [im.arg(n, 0, other=b), im.arg(n, 1, other=a)])
    return h


def _inplace(op: str) -> Handler:
    """``x.add_(y)``: the op, and later reads of ``x`` see its result."""
    inner = _binary(op)

    def h(im: _Importer, n: Any) -> None:
        inner(im, n)
        im.alias[n.args[0].name] = n.name
    return h


def _unary(op: str) -> Handler:
    def h(im: _Importer, n: Any) -> None:
        im.emit(op, n, [im.arg(n, 0)])
    return h


def _alias(im: _Importer, n: Any) -> None:
    if n.target.overloadpacket.__name__ == "dropout" and _kw(n, 2, "train", False):
        raise im.unsupported(n, "dropout in training mode")
    im.alias[n.name] = im.name(n.args[0])


def _linear(im: _Importer, n: Any) -> None:
    ins = [im.arg(n, 0), im.arg(n, 1)]
    if len(n.args) > 2 and n.args[2] is not None:
        ins.append(im.arg(n, 2))
    im.emit("linear", n, ins, w_layout="out_in")


def _addmm(im: _Importer, n: Any) -> None:
    beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
    im.emit("gemm", n, [im.arg(n, 1), im.arg(n, 2), im.arg(n, 0)], alpha=f32_attr(alpha),
            beta=f32_attr(beta), trans_a=0, trans_b=0)


def _matmul(im: _Importer, n: Any) -> None:
    im.emit("matmul", n, [im.arg(n, 0), im.arg(n, 1)])


def _t(im: _Importer, n: Any) -> None:
    if im.rank(n.args[0]) < 2:
        im.alias[n.name] = im.name(n.args[0])
    else:
        im.emit("transpose", n, [im.arg(n, 0)], perm=[1, 0])


def _permute(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    im.emit("transpose", n, [im.arg(n, 0)], perm=[_norm(int(p), r) for p in n.args[1]])


def _transpose(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    d0, d1 = _norm(int(n.args[1]), r), _norm(int(n.args[2]), r)
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    im.emit("transpose", n, [im.arg(n, 0)], perm=perm)


def _view(im: _Importer, n: Any) -> None:
    im.emit("reshape", n, [im.arg(n, 0)], shape=im.dims(n.args[1]))


def _layer_norm(im: _Importer, n: Any) -> None:
    ins = [im.arg(n, 0)]
    w, b = _kw(n, 2, "weight", None), _kw(n, 3, "bias", None)
    if w is None and b is not None:
        raise im.unsupported(n, "bias without weight")
    for x in (w, b):
        if x is not None:
            ins.append(im.name(x))
    eps = _kw(n, 4, "eps", 1e-5)
    im.emit("layernorm", n, ins, axis=-len(n.args[1]), eps=f32_attr(eps))
    if n.target.overloadpacket.__name__ == "native_layer_norm":
        im.tuples[n.name] = {0: n.name}


def _gelu(im: _Importer, n: Any) -> None:
    im.emit("gelu", n, [im.arg(n, 0)], approximate=str(n.kwargs.get("approximate", "none")))


def _softmax(im: _Importer, n: Any) -> None:
    if n.target.overloadpacket.__name__ == "_softmax" and n.args[2]:
        raise im.unsupported(n, "half_to_float")
    im.emit("softmax", n, [im.arg(n, 0)], axis=int(n.args[1]))


def _cat(im: _Importer, n: Any) -> None:
    # torch.cat skips 1-D empty tensors whatever the others' rank (a cache that starts empty)
    xs = [x for x in n.args[0] if tuple(x.meta["val"].shape) != (0,)] or list(n.args[0])
    if len(xs) == 1:
        im.alias[n.name] = im.name(xs[0])
        return
    im.emit("concat", n, [im.name(x) for x in xs], axis=int(_kw(n, 1, "dim", 0)))


def _stack(im: _Importer, n: Any) -> None:
    xs = n.args[0]
    r = im.rank(xs[0]) + 1
    axis = _norm(int(_kw(n, 1, "dim", 0)), r)
    parts = [im.b.op("unsqueeze", [im.name(x)], out=f"{n.name}.u{i}", name=n.name, axes=[axis])
             for i, x in enumerate(xs)]
    im.emit("concat", n, parts, axis=axis)


def _embedding(im: _Importer, n: Any) -> None:
    im.emit("gather", n, [im.arg(n, 0), im.arg(n, 1)], axis=0)


def _index_select(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    im.emit("gather", n, [im.arg(n, 0), im.arg(n, 2)], axis=_norm(int(n.args[1]), r))


def _select(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    im.emit("select", n, [im.arg(n, 0)], axis=_norm(int(n.args[1]), r), index=int(n.args[2]))


def _slice(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    axis = _norm(int(_kw(n, 1, "dim", 0)), r)
    start, end, step = _kw(n, 2, "start", None), _kw(n, 3, "end", None), _kw(n, 4, "step", 1)
    start = 0 if start is None else im.dims([start])[0]
    end = 2**63 - 1 if end is None else im.dims([end])[0]
    im.emit("slice", n, [im.arg(n, 0)], axes=[axis], starts=[start], ends=[end], steps=[int(step)])


def _unsqueeze(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0]) + 1
    im.emit("unsqueeze", n, [im.arg(n, 0)], axes=[_norm(int(n.args[1]), r)])


def _squeeze(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    dims = n.args[1] if len(n.args) > 1 else None
    if isinstance(dims, int):
        dims = [dims]
    axes = None if dims is None else [_norm(int(d), r) for d in dims]
    im.emit("squeeze", n, [im.arg(n, 0)], axes=axes)


def _expand(im: _Importer, n: Any) -> None:
    im.emit("expand", n, [im.arg(n, 0)], shape=im.dims(n.args[1]))


def _pow(im: _Importer, n: Any) -> None:
    im.emit("pow", n, [im.arg(n, 0), im.arg(n, 1, other=n.args[0])])


def _reduce(op: str) -> Handler:
    def h(im: _Importer, n: Any) -> None:
        r = im.rank(n.args[0])
        dims = _kw(n, 1, "dim", None)
        if isinstance(dims, int):
            dims = [dims]
        axes = None if not dims else [_norm(int(d), r) for d in dims]
        if n.kwargs.get("dtype") is not None:
            raise im.unsupported(n, "dtype argument")
        im.emit(op, n, [im.arg(n, 0)], axes=axes, keepdim=bool(_kw(n, 2, "keepdim", False)))
    return h


def _where(im: _Importer, n: Any) -> None:
    im.emit("where", n, [im.arg(n, 0), im.arg(n, 1, other=n.args[2]), im.arg(n, 2, other=n.args[1])])


def _to_copy(im: _Importer, n: Any) -> None:
    import torch

    dtype = n.kwargs.get("dtype")
    if dtype is None:
        dtype = next((a for a in n.args[1:] if isinstance(a, torch.dtype)), None)
    if dtype is None or dtype == n.args[0].meta["val"].dtype:
        im.alias[n.name] = im.name(n.args[0])
    else:
        im.emit("cast", n, [im.arg(n, 0)], to=_dtype(dtype))


def _copy_(im: _Importer, n: Any) -> None:
    """``dst.copy_(src)``: ``src`` in ``dst``'s dtype and shape; later reads of ``dst`` see it
    (a static cache's ``cumulative_length`` := the position)."""
    dst, src = n.args[0], n.args[1]
    dv, sv = dst.meta["val"], src.meta["val"]
    x = im.name(src)
    if sv.dtype != dv.dtype:
        x = im.b.op("cast", [x], out=f"{n.name}.cast", name=n.name, to=_dtype(dv.dtype))
    if tuple(sv.shape) != tuple(dv.shape):
        x = im.b.op("expand", [x], out=f"{n.name}.expand", name=n.name,
                    shape=im.dims(list(dv.shape)))
    im.alias[n.name] = x
    im.alias[dst.name] = x


def _arange(im: _Importer, n: Any) -> None:
    """``arange`` of static bounds: a constant (``position_ids = arange(1) + position``)."""
    import torch

    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in n.args):
        raise im.unsupported(n, "arange of a symbolic length")
    val = n.meta["val"]
    im.b.const(n.name, np.arange(*n.args, dtype=torch.empty(0, dtype=val.dtype).numpy().dtype))


def _split(im: _Importer, n: Any) -> None:
    """split / split_with_sizes / chunk / unbind: one slice (or select) per piece."""
    kind = n.target.overloadpacket.__name__
    x = n.args[0]
    shape = x.meta["val"].shape
    r = len(shape)
    if kind == "unbind":
        axis = _norm(int(_kw(n, 1, "dim", 0)), r)
        size = int(shape[axis])
        im.tuples[n.name] = {i: im.b.op("select", [im.name(x)], out=f"{n.name}.{i}", name=n.name,
                                        axis=axis, index=i) for i in range(size)}
        return
    axis = _norm(int(_kw(n, 2, "dim", 0)), r)
    total = shape[axis]
    if not isinstance(total, int):
        raise im.unsupported(n, "split of a dimension of symbolic size")
    arg = n.args[1]
    if kind == "chunk":
        step = -(-total // int(arg))
        sizes = [min(step, total - lo) for lo in range(0, total, step)]
    elif isinstance(arg, int):
        sizes = [min(arg, total - lo) for lo in range(0, total, arg)]
    else:
        sizes = [int(a) for a in arg]
    outs, lo = {}, 0
    for i, sz in enumerate(sizes):
        outs[i] = im.b.op("slice", [im.name(x)], out=f"{n.name}.{i}", name=n.name, axes=[axis],
                          starts=[lo], ends=[lo + sz], steps=[1])
        lo += sz
    im.tuples[n.name] = outs


def _index(im: _Importer, n: Any) -> None:
    """``x[idx]`` with one index tensor on the first axis: a gather."""
    idx = list(n.args[1])
    used = [i for i, x in enumerate(idx) if x is not None]
    if len(used) != 1:
        raise im.unsupported(n, "indexing by more than one tensor")
    axis = used[0]
    if axis and im.rank(idx[axis]) != 1:
        raise im.unsupported(n, "indexing an inner axis by a tensor of rank other than 1")
    im.emit("gather", n, [im.arg(n, 0), im.name(idx[axis])], axis=axis)


def _flatten(im: _Importer, n: Any) -> None:
    im.emit("reshape", n, [im.arg(n, 0)], shape=im.dims(list(n.meta["val"].shape)))


def _index_copy(im: _Importer, n: Any) -> None:
    """A static cache's write of the new key / value at the position: the cache as it is read
    after it, ``concat(past, new)`` (``past_len + 1`` rows; torch_kv_cache)."""
    sc = im.kv
    if sc is None or n.name not in sc.writes:
        raise im.unsupported(n, "an index_copy that is not a static KV cache's write")
    layer, kind, new = sc.writes[n.name]
    im.emit("concat", n, [im.past_slice(layer, kind), im.name(new)], axis=2)
    im.alias[n.args[0].name] = n.name


def _sdpa(im: _Importer, n: Any) -> None:
    """scaled_dot_product_attention as its three ops (q.K^T * scale, softmax, p.V); K/V heads
    broadcast over the query heads (multi-query) as in the op."""
    q, k, v = n.args[:3]
    mask = _kw(n, 3, "attn_mask", None)
    if mask is not None and im.kv is not None and mask.name in im.kv.masks:
        mask = None  # "rows up to the position" of the cache: the past_len+1 rows read
    if float(_kw(n, 4, "dropout_p", 0.0)) != 0.0:
        raise im.unsupported(n, "dropout")
    qs, ks = q.meta["val"].shape, k.meta["val"].shape
    if _kw(n, 5, "is_causal", False) and qs[-2] != 1:
        raise im.unsupported(n, "is_causal with more than one query (a prefill graph)")
    if n.kwargs.get("enable_gqa", False) and qs[-3] != ks[-3]:
        raise im.unsupported(n, "enable_gqa (give the model its own grouped attention)")
    scale = n.kwargs.get("scale")
    scale = float(qs[-1]) ** -0.5 if scale is None else float(scale)
    r = len(ks)
    perm = list(range(r))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt = im.b.op("transpose", [im.name(k)], out=f"{n.name}.kt", name=n.name, perm=perm)
    s = im.b.op("matmul", [im.name(q), kt], out=f"{n.name}.scores", name=n.name)
    im.b.const(f"{n.name}.scale", np.array(scale, np.float32))
    s = im.b.op("mul", [s, f"{n.name}.scale"], out=f"{n.name}.scaled", name=n.name)
    if mask is not None:
        s = im.b.op("add", [s, im.name(mask)], out=f"{n.name}.masked", name=n.name)
    p = im.b.op("softmax", [s], out=f"{n.name}.p", name=n.name, axis=-1)
    im.emit("matmul", n, [p, im.name(v)])


def _numpy_t(im: _Importer, n: Any) -> None:
    r = im.rank(n.args[0])
    im.emit("transpose", n, [im.arg(n, 0)], perm=list(range(r))[::-1])


def _repeat_interleave(im: _Importer, n: Any) -> None:
    """``repeat_interleave(x, k, dim)`` with an integer ``k``: unsqueeze, expand, reshape."""
    reps, dim = n.args[1], _kw(n, 2, "dim", None)
    if not isinstance(reps, int) or dim is None:
        raise im.unsupported(n, "repeats other than one integer along a given dim")
    shape = im.dims(list(n.args[0].meta["val"].shape))
    r = len(shape)
    axis = _norm(int(dim), r)
    u = im.b.op("unsqueeze", [im.arg(n, 0)], out=f"{n.name}.u", name=n.name, axes=[axis + 1])
    e = im.b.op("expand", [u], out=f"{n.name}.e", name=n.name,
                shape=shape[:axis + 1] + [reps] + shape[axis + 1:])
    out = im.dims(list(n.meta["val"].shape))
    im.emit("reshape", n, [e], shape=out)


def _moe_route(im: _Importer, n: Any) -> None:
    """``pimsim::moe_route`` (workloads.models.moe_ops): dense routing weights on the ASIC."""
    logits, bias, k, score, norm, n_group, topk_group, scale = n.args
    ins = [im.name(logits)] + ([im.name(bias)] if bias is not None else [])
    im.emit("moe_route", n, ins, k=int(k), score=str(score), norm=bool(norm),
            n_group=int(n_group), topk_group=int(topk_group), scale=float(scale))


def _softmax_sink(im: _Importer, n: Any) -> None:
    """``pimsim::softmax_sink`` (workloads.models.moe_ops): a softmax whose rows each have one
    more logit, the sink, in the denominator (gpt-oss's attention sinks)."""
    im.emit("softmax", n, [im.name(n.args[0]), im.name(n.args[1])], axis=-1)


def _clamp(im: _Importer, n: Any) -> None:
    """``clamp`` / ``clamp_min`` / ``clamp_max`` by Python numbers."""
    kind = n.target.overloadpacket.__name__
    lo = _kw(n, 1, "min", None) if kind != "clamp_max" else None
    hi = _kw(n, 2, "max", None) if kind == "clamp" else (_kw(n, 1, "max", None)
                                                         if kind == "clamp_max" else None)
    if any(b is not None and not isinstance(b, (int, float)) for b in (lo, hi)):
        raise im.unsupported(n, "bounds that are tensors")
    im.emit("clamp", n, [im.arg(n, 0)], min=None if lo is None else float(lo),
            max=None if hi is None else float(hi))


def _expert_mark(op: str) -> Handler:
    """``pimsim::expert_in`` / ``expert_out``: expert ``e``'s input and its weighted output."""
    def h(im: _Importer, n: Any) -> None:
        x, w, e = n.args
        im.emit(op, n, [im.name(x), im.name(w)], expert=int(e))
    return h


ATEN_OPS: dict[str, Handler] = {
    "pimsim.moe_route": _moe_route, "pimsim.expert_in": _expert_mark("expert_in"),
    "pimsim.expert_out": _expert_mark("expert_out"),
    "pimsim.softmax_sink": _softmax_sink, "clamp": _clamp, "clamp_min": _clamp,
    "clamp_max": _clamp,
    "pimsim.attn_window": lambda im, n: im.emit("attn_window", n, [im.name(n.args[0])],
                                                window=int(n.args[1])),
    "add_": _inplace("add"), "mul_": _inplace("mul"), "sub_": _inplace("sub"),
    "div_": _inplace("div"), "numpy_T": _numpy_t, "flatten": _flatten, "repeat_interleave": _repeat_interleave,
    "split": _split, "split_with_sizes": _split, "chunk": _split, "unbind": _split,
    "index": _index, "scaled_dot_product_attention": _sdpa,
    "index_copy_": _index_copy, "index_copy": _index_copy, "copy_": _copy_,
    "arange": _arange,
    "linear": _linear, "addmm": _addmm, "mm": _matmul, "bmm": _matmul, "matmul": _matmul,
    "t": _t, "permute": _permute, "transpose": _transpose, "swapaxes": _transpose,
    "view": _view, "reshape": _view, "_unsafe_view": _view,
    "layer_norm": _layer_norm, "native_layer_norm": _layer_norm, "gelu": _gelu,
    "softmax": _softmax, "_softmax": _softmax, "cat": _cat, "concat": _cat, "stack": _stack,
    "embedding": _embedding, "index_select": _index_select, "select": _select, "slice": _slice,
    "unsqueeze": _unsqueeze, "squeeze": _squeeze, "expand": _expand,
    "add": _binary("add"), "sub": _binary("sub"), "mul": _binary("mul"), "div": _binary("div"),
    "pow": _pow, "sqrt": _unary("sqrt"), "tanh": _unary("tanh"), "erf": _unary("erf"),
    "exp": _unary("exp"), "rsqrt": _unary("rsqrt"), "neg": _unary("neg"), "cos": _unary("cos"),
    "sin": _unary("sin"), "sigmoid": _unary("sigmoid"), "silu": _unary("silu"),
    "relu": _unary("relu"), "mean": _reduce("reduce_mean"), "sum": _reduce("reduce_sum"),
    "amax": _reduce("reduce_max"), "where": _where, "_to_copy": _to_copy, "to": _to_copy,
    "clone": _alias, "contiguous": _alias, "alias": _alias, "detach": _alias,
    "lift_fresh_copy": _alias, "dropout": _alias, "detach_": _alias,
}
