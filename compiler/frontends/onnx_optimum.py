"""The Hugging Face / optimum decode-step layout, rewritten at import to the pimsim one.

optimum's ``main_export(task="text-generation-with-past")`` (and a torch.onnx export of a
Hugging Face model with the same names) writes a decode step as

    input_ids [1, 1], attention_mask [1, past + 1], position_ids [1, 1] (optional),
    past_key_values.N.key / .value [1, n_kv, past, d_head] (one pair per layer)
    -> logits, present.N.key / .value

The lowering reads the pimsim layout (token, position, past_k / past_v stacked over layers), so
:func:`rewrite_hf_decode` turns the first into the second before the import:

* the per-layer past inputs become slices ``past_k[i:i+1]`` / ``past_v[i:i+1]`` of two stacked
  inputs ``[n_layer, n_kv, past, d_head]``; the ``present.*`` outputs are dropped (the PIM holds
  its own cache) and ``logits`` is the only output;
* ``position_ids`` is read from a ``position [1]`` input; without it the position is the past
  length, and the values the graph computes as ``past + c`` become ``position + c``;
* ``attention_mask`` is all ones for a batch-1 decode step, so everything computed from it and
  from the graph's shapes alone (``Range``, comparisons, ``GatherND`` of the mask, ``Where`` to
  0 / -inf or the float minimum, ``Expand``, ``Cast``) is evaluated here (onnx's reference
  evaluator) at several past lengths. A result that is the same at every length, or constant
  along its past-length axes (then kept with size 1 there, for a broadcasting consumer), becomes
  a constant; then ``x + 0``, ``x * 1``, ``And(x, true)`` and ``Where`` on a constant condition
  are dropped, and ``IsNaN`` of a softmax is false (the decode row always attends to its own
  token, so it is never all masked). What is left of the mask is nothing at all.

Symbolic batch and sequence sizes (optimum's ``batch_size``, ``sequence_length``) are bound to 1:
one new token of one sequence. A prefill graph (``input_ids [1, 8]``), a mask of another rank or
length, or an input of another name is a :class:`~pimsim.errors.UserError` naming the input.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from compiler.passes.shape_inference import _format, _terms
from pimsim.errors import UserError

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_FIX = ("export one decode step of batch 1: input_ids [1, 1], attention_mask [1, past + 1], "
        "position_ids [1, 1], past_key_values.N.key / .value [1, n_kv, past, d_head] (optimum's "
        "main_export(task='text-generation-with-past'), or workloads.models.hf_decode.export_onnx)")
# past lengths the mask subgraph is evaluated at: a mask that is not all ones at one of them (a
# sliding window up to 2047 tokens) is not folded
_EVAL_PAST = (0, 1, 3, 6, 255, 2047)
_BROADCAST = ("Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Xor", "Equal", "Less",
              "LessOrEqual", "Greater", "GreaterOrEqual", "Max", "Min", "Pow")
_SHAPE_OPERAND = ("Reshape", "Expand", "Slice", "Unsqueeze", "Squeeze", "Tile", "Split",
                  "ConstantOfShape", "Range")  # ops whose inputs after the first are parameters
_NO_EVAL = ("If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "Bernoulli")
_MAX_CONST = 1 << 16  # initializers read for the evaluation: small ones only


class _LayoutError(UserError):
    """A file in the Hugging Face / optimum layout that is not one batch-1 decode step."""

    default_fix = _FIX

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix or _FIX)


def is_hf_decode(graph: Any) -> bool:
    names = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    return "input_ids" in names or any(_PAST.match(n) for n in names)


def rewrite_hf_decode(proto: Any, inplace: bool = False) -> Any:
    """``proto`` in the pimsim layout if it is in the Hugging Face / optimum one (a copy, or
    ``proto`` itself rewritten with ``inplace``), else ``proto`` itself."""
    if not is_hf_decode(proto.graph):
        return proto
    import onnx

    out = proto
    if not inplace:
        out = onnx.ModelProto()
        out.CopyFrom(proto)
    _Rewrite(out.graph, list(out.opset_import), out).run()
    return out


def _dims(vi: Any) -> list | None:
    if not vi.type.tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "")
            for d in vi.type.tensor_type.shape.dim]


def _bind(d: Any, env: dict[str, int]) -> Any:
    """A dimension with the symbols of ``env`` substituted (an int when none is left)."""
    if isinstance(d, int) or d == "":
        return d
    syms, const = _terms(d)
    left = {}
    for s, k in syms.items():
        if s in env:
            const += k * env[s]
        else:
            left[s] = k
    return _format(left, const)


def _ancestors(nodes: list, outputs: list[str]) -> tuple[list, set[str]]:
    """The nodes (in order) that ``outputs`` depend on, and every value they read or write."""
    need = set(outputs)
    sub = []
    for node in reversed(nodes):
        if need & set(node.output):
            sub.append(node)
            need.update(i for i in node.input if i)
    return sub[::-1], need


def _set_dims(vi: Any, dims: list) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d


class _Rewrite:
    def __init__(self, g: Any, opsets: list, proto: Any) -> None:
        self.g = g
        self.proto = proto
        self.opsets = [o for o in opsets if o.domain in ("", "ai.onnx")]
        self.new_nodes: list = []
        self.tail_nodes: list = []  # Identity nodes for a renamed graph output
        self.new_consts: dict[str, np.ndarray] = {}
        self.unannotated: list[str] = []  # tensors whose missing shape kept the mask unfolded

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        from compiler.frontends.onnx_shapes import annotate_shapes

        self.check_inputs()
        annotate_shapes(self.proto)  # an unannotated file, with batch and new tokens bound to 1
        self.stack_past()
        self.position()
        self.fold_mask()
        if not self.has_pos:
            self.position_from_past()
        self.simplify()
        self.finish()

    # ------------------------------------------------------------------ inputs
    def check_inputs(self) -> None:
        g = self.g
        inits = {t.name for t in g.initializer}
        ins = {vi.name: vi for vi in g.input if vi.name not in inits}
        if "input_ids" not in ins:
            raise _LayoutError(f"the graph takes past key/values but no input_ids (inputs "
                               f"{sorted(ins)})")
        tok = _dims(ins["input_ids"])
        if tok is None or len(tok) != 2:
            raise _LayoutError(f"input_ids has shape {tok}: expected [1, 1] (batch, new tokens)")
        # symbolic batch / sequence sizes: one sequence, one new token
        env = {d: 1 for d in tok if isinstance(d, str) and d and not _terms(d)[1]
               and len(_terms(d)[0]) == 1}
        self.bind(env)
        tok = _dims(ins["input_ids"])
        if tok != [1, 1]:
            what = ("a prefill graph (more than one new token)" if tok[0] == 1 else
                    "a batch of more than one sequence")
            raise _LayoutError(f"input_ids has shape {tok}: {what}, which cannot be lowered as "
                               f"one decode step")
        past = {}
        for n, vi in ins.items():
            m = _PAST.match(n)
            if m:
                past[(int(m[1]), m[2])] = vi
        n_layer = 1 + max((i for i, _ in past), default=-1)
        missing = [f"past_key_values.{i}.{s}" for i in range(n_layer) for s in ("key", "value")
                   if (i, s) not in past]
        if not past or missing:
            raise _LayoutError(f"past key/value inputs missing: {missing or 'all'}")
        shapes = {k: _dims(vi) for k, vi in past.items()}
        first = shapes[(0, "key")]
        for (i, s), d in sorted(shapes.items()):
            name = f"past_key_values.{i}.{s}"
            if d is None or len(d) != 4 or d[0] != 1 or not isinstance(d[1], int) or \
                    not isinstance(d[3], int) or not isinstance(d[2], str) or not d[2]:
                raise _LayoutError(f"{name} has shape {d}: expected [1, n_kv_head, past, d_head] "
                                   f"with static head count and size and a symbolic past length")
            if d != first:
                raise _LayoutError(f"{name} has shape {d}, past_key_values.0.key {first}: every "
                                   f"layer's past keys and values must have one shape")
        self.n_layer, self.n_kv, self.sym, self.d_head = n_layer, first[1], first[2], first[3]
        self.past_names = [f"past_key_values.{i}.{s}" for i in range(n_layer)
                           for s in ("key", "value")]
        self.past_dtype = past[(0, "key")].type.tensor_type.elem_type
        want = _format(dict(_terms(self.sym)[0]), _terms(self.sym)[1] + 1)
        if "attention_mask" in ins:
            d = _dims(ins["attention_mask"])
            if d is None or len(d) != 2 or d[0] != 1 or d[1] != want:
                raise _LayoutError(
                    f"attention_mask has shape {d}: expected [1, {want}] (the 2-D padding mask of "
                    f"a batch-1 decode step: past length + 1 new token)",
                    "export with the 2-D attention_mask of optimum's text-generation-with-past "
                    "(not a 4-D causal mask), batch 1, one new token")
        if "position_ids" in ins and _dims(ins["position_ids"]) != [1, 1]:
            raise _LayoutError(f"position_ids has shape {_dims(ins['position_ids'])}: expected "
                               f"[1, 1] (one new token of one sequence)")
        for name in ("input_ids", "position_ids", "attention_mask"):
            if name in ins and ins[name].type.tensor_type.elem_type not in (6, 7):
                raise _LayoutError(f"{name} has element type "
                                   f"{ins[name].type.tensor_type.elem_type}: expected int64/int32")
        other = sorted(set(ins) - {"input_ids", "position_ids", "attention_mask"}
                       - set(self.past_names))
        if other:
            raise _LayoutError(f"inputs {other} are not part of the decode-step layout "
                               f"(input_ids, attention_mask, position_ids, past_key_values.N.*)")
        outs = [o.name for o in g.output]
        if "logits" not in outs:
            raise _LayoutError(f"the graph has no logits output (outputs {outs[:4]})")
        self.has_mask = "attention_mask" in ins
        self.has_pos = "position_ids" in ins

    def bind(self, env: dict[str, int]) -> None:
        g = self.g  # also writes every symbolic dimension as the IR does: past+1
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            d = _dims(vi)
            if d is not None:
                _set_dims(vi, [_bind(x, env) for x in d])

    # ------------------------------------------------------------------ rewrites
    def stack_past(self) -> None:
        """past_key_values.i.key -> Slice(past_k, i:i+1 on axis 0), the same for the values."""
        from onnx import helper

        g = self.g
        old = {vi.name: vi for vi in g.input}
        kept = [vi for vi in g.input if vi.name not in self.past_names]
        stacked = [self.n_layer, self.n_kv, self.sym, self.d_head]
        new = [helper.make_tensor_value_info(n, self.past_dtype, stacked)
               for n in ("past_k", "past_v")]
        g.ClearField("input")
        g.input.extend(kept[:1] + new + kept[1:])
        axes = self.const("past.axes", np.array([0], np.int64))
        for i in range(self.n_layer):
            lo = self.const(f"past.{i}.lo", np.array([i], np.int64))
            hi = self.const(f"past.{i}.hi", np.array([i + 1], np.int64))
            for s, src in (("key", "past_k"), ("value", "past_v")):
                name = f"past_key_values.{i}.{s}"
                self.new_nodes.append(helper.make_node("Slice", [src, lo, hi, axes], [name],
                                                       name=f"{name}.slice"))
                vi = g.value_info.add()
                vi.CopyFrom(old[name])

    def position(self) -> None:
        """position_ids [1, 1] from a ``position [1]`` input (what the executor feeds)."""
        from onnx import TensorProto, helper

        g = self.g
        pos_vi = helper.make_tensor_value_info("position", TensorProto.INT64, [1])
        if self.has_pos:
            vi = next(v for v in g.input if v.name == "position_ids")
            kept = [v for v in g.input if v.name != "position_ids"]
            shape = self.const("position.shape", np.array([1, 1], np.int64))
            ids = "position_ids"
            src = "position"
            if vi.type.tensor_type.elem_type != TensorProto.INT64:
                src = "position.cast"
                self.new_nodes.append(helper.make_node(
                    "Cast", ["position"], [src], name="position.cast",
                    to=vi.type.tensor_type.elem_type))
            self.new_nodes.append(helper.make_node("Reshape", [src, shape], [ids],
                                                   name="position_ids.reshape"))
            g.value_info.add().CopyFrom(vi)  # Shape(position_ids) stays readable
            g.ClearField("input")
            g.input.extend(kept + [pos_vi])
        else:
            g.input.append(pos_vi)  # used only where the graph computes past + c

    def const(self, name: str, value: np.ndarray) -> str:
        self.new_consts[name] = np.asarray(value)
        return name

    # ------------------------------------------------------------------ the mask
    def analyse(self) -> dict[str, Any]:
        """What can be computed without the model's data (from constants, the all-ones mask and
        the annotated shapes), and which of that depends on the past length (``dyn``)."""
        from onnx.external_data_helper import uses_external_data

        g = self.g
        annotated = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input)
                     + list(g.output)}
        consts: dict[str, Any] = {}
        for t in g.initializer:
            size = int(np.prod(t.dims, dtype=np.int64))
            if size <= _MAX_CONST and not uses_external_data(t):
                consts[t.name] = t
        evaluable: set[str] = set(consts) | set(self.new_consts)
        dyn: set[str] = set()
        if self.has_mask:
            evaluable.add("attention_mask")
            dyn.add("attention_mask")
        shape_inputs: dict[str, tuple[list, int, int | None]] = {}  # Shape(data) -> annotation
        kept_nodes: list = []
        blind: list = []  # Shape nodes of a tensor whose shape is not annotated
        order: list[str] = []  # dyn values, in graph order
        for node in g.node:
            ins = [i for i in node.input if i]
            if node.op_type == "Constant":
                evaluable.update(node.output)
                kept_nodes.append(node)
                continue
            if node.op_type == "Shape" and ins and ins[0] not in evaluable:
                dims = annotated.get(ins[0])
                if dims is not None and "" not in dims and \
                        all(isinstance(_bind(d, {self.sym: 1}), int) for d in dims):
                    a = {x.name: x for x in node.attribute}
                    lo = a["start"].i if "start" in a else 0
                    hi = a["end"].i if "end" in a else None
                    shape_inputs[node.output[0]] = (dims, lo, hi)
                    evaluable.add(node.output[0])
                    dyn.add(node.output[0])
                else:
                    blind.append(node)
                continue
            if node.op_type in _NO_EVAL or node.domain not in ("", "ai.onnx") or \
                    not all(i in evaluable for i in ins) or not ins:
                continue
            evaluable.update(node.output)
            kept_nodes.append(node)
            if any(i in dyn for i in ins):
                dyn.update(node.output)
                order.extend(node.output)
        consumers: dict[str, list] = {}
        for node in g.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        outs = {o.name for o in g.output}
        frontier = [v for v in order
                    if (v in outs or any(not set(c.output) <= evaluable
                                         for c in consumers.get(v, [])))
                    and not _shape_operand_only(v, consumers)]
        return dict(annotated=annotated, consts=consts, shape_inputs=shape_inputs,
                    kept=kept_nodes, blind=blind, order=order, consumers=consumers, frontier=frontier)

    def fold_mask(self) -> None:
        """Values computed from the mask and the shapes alone, where they meet the model's data:
        constants when they do not depend on the past length (or only by their length)."""
        a = self.analyse()
        if not a["frontier"]:
            return
        vals = self._evaluate(a["frontier"], a)
        for v in a["frontier"]:
            self._fold_value(v, [vals[p][v] for p in _EVAL_PAST], a["consumers"].get(v, []),
                             a["annotated"])

    def position_from_past(self) -> None:
        """Without position_ids the position is the past length: where a value computed as
        ``past + c`` (the cache position, a Range(past, past + 1)) is read by the model's data
        (a node whose result is no longer ``past + c'``, and is not only a shape), it becomes
        ``position + c``."""
        self.dce()
        a = self.analyse()
        order, consumers = a["order"], a["consumers"]
        if not order:
            return
        vals = self._evaluate(order, a)
        affine = {}
        for v in order:
            arrs = [vals[p][v] for p in _EVAL_PAST]
            a0 = arrs[0]
            if a0.dtype.kind in "iuf" and all(x.shape == a0.shape for x in arrs) and all(
                    np.array_equal(x - a0, np.full(a0.shape, p, a0.dtype))
                    for x, p in zip(arrs, _EVAL_PAST)):
                affine[v] = a0
        evaluable_out = {o for n in a["kept"] for o in n.output} | set(a["shape_inputs"])
        shape_bound: set[str] = set()  # read only as shapes, through evaluable nodes
        for v in reversed(order):
            cs = consumers.get(v, [])
            if cs and all((k > 0 and c.op_type in _SHAPE_OPERAND) or
                          (set(c.output) <= evaluable_out and set(c.output) <= shape_bound)
                          for c in cs for k, i in enumerate(c.input) if i == v):
                shape_bound.add(v)
        for v, c0 in affine.items():
            readers = [c for c in consumers.get(v, [])
                       if not (set(c.output) <= evaluable_out
                               and (set(c.output) <= shape_bound
                                    or all(o in affine for o in c.output)))]
            if readers:
                self.replace_by_position(v, c0, readers)
        self.dce()

    def dce(self) -> None:
        """Only the nodes the logits need."""
        g = self.g
        live = _ancestors(list(g.node) + self.tail_nodes, ["logits"])[0]
        keep = {id(n) for n in live}  # ids of protobuf wrappers: ``live`` keeps them alive
        nodes = [n for n in g.node if id(n) in keep]
        g.ClearField("node")
        g.node.extend(nodes)

    def _evaluate(self, frontier: list[str], a: dict) -> dict[int, dict[str, np.ndarray]]:
        """The values ``frontier`` at each past length of ``_EVAL_PAST`` (all-ones mask)."""
        kept_nodes, consts, shape_inputs = a["kept"], a["consts"], a["shape_inputs"]
        from onnx import TensorProto, helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        sub, need = _ancestors(kept_nodes, frontier)
        mask_type = next((v.type.tensor_type.elem_type for v in self.g.input
                          if v.name == "attention_mask"), TensorProto.INT64)
        inputs = []
        if "attention_mask" in need:
            inputs.append(helper.make_tensor_value_info("attention_mask", mask_type, None))
        shapes_used = [s for s in shape_inputs if s in need]
        inputs += [helper.make_tensor_value_info(s, TensorProto.INT64, None) for s in shapes_used]
        inits = [consts[n] for n in sorted(need) if n in consts]
        inits += [numpy_helper.from_array(v, n) for n, v in self.new_consts.items() if n in need]
        graph = helper.make_graph(sub, "decode_mask", inputs,
                                  [helper.make_tensor_value_info(v, 0, None) for v in frontier],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=self.opsets
                                  or [helper.make_opsetid("", 18)])
        try:
            ev = ReferenceEvaluator(model)
        except Exception as e:  # noqa: BLE001
            raise _LayoutError(f"the attention-mask subgraph cannot be evaluated "
                               f"({type(e).__name__}: {str(e)[:200]})") from None
        out: dict[int, dict[str, np.ndarray]] = {}
        for p in _EVAL_PAST:
            feeds: dict[str, np.ndarray] = {}
            if "attention_mask" in need:
                feeds["attention_mask"] = np.ones((1, p + 1), np.int32 if mask_type == 6
                                                  else np.int64)
            for s in shapes_used:
                dims, lo, hi = shape_inputs[s]
                feeds[s] = np.array([_bind(d, {self.sym: p}) for d in dims][lo:hi], np.int64)
            try:
                res = ev.run(None, feeds)
            except Exception as e:  # noqa: BLE001
                raise _LayoutError(f"the attention-mask subgraph cannot be evaluated at past "
                                   f"length {p} ({type(e).__name__}: {str(e)[:200]})") from None
            out[p] = {v: np.asarray(r) for v, r in zip(frontier, res)}
        return out

    def _fold_value(self, v: str, arrs: list[np.ndarray], consumers: list,
                    annotated: dict) -> None:
        a0 = arrs[0]
        if all(a.shape == a0.shape and a.dtype == a0.dtype and np.array_equal(a, a0,
                                                                              equal_nan=True)
               for a in arrs):
            self.replace(v, a0)
            return
        same_rank = all(a.ndim == a0.ndim and a.dtype == a0.dtype for a in arrs)
        if not same_rank:
            return
        varying = {ax for ax in range(a0.ndim) if len({a.shape[ax] for a in arrs}) > 1}
        if varying:
            reduced = []
            for a in arrs:
                r = a
                for ax in varying:
                    if r.shape[ax] == 0:
                        break
                    first = np.take(r, [0], axis=ax)
                    if not np.array_equal(np.broadcast_to(first, r.shape), r, equal_nan=True):
                        break
                    r = first
                else:
                    reduced.append(r)
                    continue
                reduced = None
                break
            if reduced is not None and all(r.shape == reduced[0].shape and
                                           np.array_equal(r, reduced[0], equal_nan=True)
                                           for r in reduced) and \
                    self._broadcasts_back(v, a0.ndim, varying, consumers, annotated):
                self.replace(v, reduced[0])

    def _broadcasts_back(self, v: str, rank: int, varying: set[int], consumers: list,
                         annotated: dict) -> bool:
        """Every consumer broadcasts ``v`` against an operand that has the full length on the
        axes where ``v`` is kept with length 1."""
        if not consumers:
            return False
        for c in consumers:
            if c.op_type not in _BROADCAST:
                return False
            others = [annotated.get(i) for i in c.input if i and i != v]
            for ax in varying:
                back = rank - ax  # position from the end
                ok = False
                for d in others + [annotated.get(c.output[0])]:
                    if d is not None and len(d) >= back and d[len(d) - back] != 1:
                        ok = True
                if not ok:
                    self.unannotated += [i for i in list(c.input) + list(c.output)
                                         if i and i != v and annotated.get(i) is None]
                    return False
        return True

    def replace(self, v: str, value: np.ndarray) -> None:
        name = self.const(f"{v}.decode", np.ascontiguousarray(value))
        self.rename_uses(v, name)

    def replace_by_position(self, v: str, c0: np.ndarray, consumers: list) -> None:
        """``v`` is ``past + c0``: where data (not a shape operand) reads it, ``position + c0``."""
        from onnx import helper, numpy_helper

        out = "position"
        to = numpy_helper.from_array(c0).data_type
        if to != 7:
            self.new_nodes.append(helper.make_node("Cast", [out], [f"{v}.position"],
                                                   name=f"{v}.position", to=to))
            out = f"{v}.position"
        if c0.shape != (1,):
            shape = self.const(f"{v}.shape", np.array(c0.shape, np.int64))
            self.new_nodes.append(helper.make_node("Reshape", [out, shape], [f"{v}.reshape"],
                                                   name=f"{v}.reshape"))
            out = f"{v}.reshape"
        if np.any(c0 != 0):
            self.new_nodes.append(helper.make_node(
                "Add", [out, self.const(f"{v}.c0", c0)], [f"{v}.decode"], name=f"{v}.decode"))
            out = f"{v}.decode"
        for node in consumers:
            for k, i in enumerate(node.input):
                if i == v and not (k > 0 and node.op_type in _SHAPE_OPERAND):
                    node.input[k] = out

    def rename_uses(self, old: str, new: str) -> None:
        for node in self.g.node:
            for k, i in enumerate(node.input):
                if i == old:
                    node.input[k] = new
        for o in self.g.output:
            if o.name == old:
                from onnx import helper
                self.tail_nodes.append(helper.make_node("Identity", [new], [old]))

    # ------------------------------------------------------------------ algebra
    def simplify(self) -> None:
        """Drop the mask's no-ops: x + 0, x - 0, x * 1, x / 1, And(x, true), Or(x, false),
        Where on a constant condition; IsNaN(softmax) is false."""
        g = self.g
        annotated = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input)
                     + list(g.output)}
        prod = {o: n for n in g.node for o in n.output}
        changed = True
        while changed:
            changed = False
            for node in list(g.node):
                if not node.output or not any(node.output):
                    continue
                alias = self._noop(node, annotated, prod)
                if alias is None:
                    continue
                out = node.output[0]
                if isinstance(alias, np.ndarray):
                    self.replace(out, alias)
                else:
                    self.rename_uses(out, alias)
                g.node.remove(node)
                changed = True

    def _cval(self, name: str) -> np.ndarray | None:
        return self.new_consts.get(name)

    def _noop(self, node: Any, annotated: dict, prod: dict) -> Any:
        op = node.op_type
        ins = list(node.input)
        if op == "IsNaN" and prod.get(ins[0]) is not None and prod[ins[0]].op_type == "Softmax":
            rank = len(annotated.get(ins[0]) or [])
            return np.zeros([1] * rank, np.bool_)
        out_shape = annotated.get(node.output[0])
        neutral = {"Add": (0, "both"), "Sub": (0, "rhs"), "Mul": (1, "both"),
                   "Div": (1, "rhs"), "And": (True, "both"), "Or": (False, "both")}
        if op in neutral and len(ins) == 2:
            unit, side = neutral[op]
            for k in ((0, 1) if side == "both" else (1,)):
                c, x = self._cval(ins[k]), ins[1 - k]
                if c is not None and c.size and np.all(c == unit) and \
                        _fits(c.shape, annotated.get(x), out_shape):
                    return x
            return None
        if op == "Where" and len(ins) == 3:
            c = self._cval(ins[0])
            if c is None or not c.size or not (np.all(c) or not np.any(c)):
                return None
            keep, drop = (ins[1], ins[2]) if np.all(c) else (ins[2], ins[1])
            kd = annotated.get(keep)
            for other in (ins[0], drop):
                oc = self._cval(other)
                shape = oc.shape if oc is not None else annotated.get(other)
                if not _fits(shape, kd, out_shape):
                    return None
            return keep
        return None

    # ------------------------------------------------------------------ output
    def finish(self) -> None:
        from onnx import numpy_helper

        g = self.g
        nodes = self.new_nodes + list(g.node) + self.tail_nodes
        logits = next(o for o in g.output if o.name == "logits")
        for o in g.output:  # the dropped outputs' shapes stay readable (Shape(present.N.key))
            if o.name != "logits":
                g.value_info.add().CopyFrom(o)
        g.ClearField("output")
        g.output.append(logits)
        g.initializer.extend(numpy_helper.from_array(v, n) for n, v in self.new_consts.items())
        # only what the logits need
        live, need = _ancestors(nodes, ["logits"])
        g.ClearField("node")
        g.node.extend(live)
        kept = [vi for vi in g.input if vi.name != "attention_mask"]
        for vi in g.input:  # its shape stays readable (Shape(attention_mask) folds at import)
            if vi.name == "attention_mask":
                g.value_info.add().CopyFrom(vi)
        g.ClearField("input")
        g.input.extend(kept)
        users = [n for n in live if "attention_mask" in n.input and n.op_type != "Shape"]
        if users:
            user = users[0]
            blind = self.unannotated + [n.input[0] for n in self.analyse()["blind"]]
            if blind:
                raise _LayoutError(
                    f"the attention mask (read by node {user.name!r}) cannot be folded: the shape "
                    f"of {blind[0]!r} is not annotated in the file with the past length",
                    "export with torch.onnx.export(dynamo=True), which annotates every shape "
                    "(value_info) in terms of the dynamic past length")
            raise _LayoutError(
                f"node {user.name!r} ({user.op_type}) uses attention_mask in a way that does not "
                f"fold to a constant for a batch-1 decode step (all ones)",
                "export without a padding-dependent computation beyond the attention mask")
        if "position" not in need:
            g.ClearField("input")
            g.input.extend(vi for vi in kept if vi.name != "position")
        inits = [t for t in g.initializer if t.name in need]
        g.ClearField("initializer")
        g.initializer.extend(inits)


def _fits(c_shape: Any, x_shape: Any, out_shape: Any) -> bool:
    """Broadcasting ``c`` onto ``x`` leaves ``x``'s shape as it is (so ``op(x, c)`` can be
    ``x``): ``c`` has no more axes, and each is 1 or ``x``'s own."""
    if c_shape is None:
        return False
    ref = x_shape if x_shape is not None else out_shape
    if ref is None or len(c_shape) > len(ref):
        return False
    if x_shape is not None and out_shape is not None and len(out_shape) != len(x_shape):
        return False
    for k in range(1, len(c_shape) + 1):
        cd, xd = c_shape[-k], ref[-k]
        if cd != 1 and cd != xd:
            return False
    return True


def _shape_operand_only(v: str, consumers: dict) -> bool:
        """Read only as a shape / index operand, which the import folds from the annotations
        (Reshape's and Expand's shape, Slice's bounds, ...): left alone."""
        cs = consumers.get(v, [])
        return bool(cs) and all(c.op_type in _SHAPE_OPERAND and list(c.input).index(v) > 0
                                for c in cs)
