"""Emission: the decode-step graph, node by node, as the Program's steps and dataflow.

Each node becomes (:class:`Emission`, mixed into :class:`compiler.passes.lower._Lowering`):

    cache append      a new key / value written to its attention's cache (a flow op)
    attention         q.K^T or p.V over the cache: one PIM step each, after the cache write
    gather            a row of a constant table (token or position embedding): a PIM read
    matrix-vector     a pack of products sharing an input: a PIM step, the ASIC's reduction of
                      the partial sums and, on a tensor-parallel group, the exchange
    ASIC op           a step with the op's cost (pimsim.asic_ops), or a free flow op (wiring,
                      the attention scale the softmax applies as it reads)

then the argmax after the LM head; :mod:`compiler.passes.place` places each pipeline stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.ir import Graph, Node
from compiler.passes.decode_step import WIRING, shape0
from compiler.passes.lowering_error import LoweringError
from compiler.passes.shape_inference import _terms
from pimsim.asic_ops import OPS as ASIC_OPS
from pimsim.isa import FlowOp, Step

# ASIC ops whose element-wise part CENT's lowering runs in the banks (pimsim.cent_ops)
_CENT_VECTOR_OPS = ("rmsnorm", "softmax", "activation")


def weight_out_in(g: Graph, n: Node) -> tuple[np.ndarray | None, tuple[int, int]]:
    """A product's constant weight as ``[out, in]`` (None when shape-only) and that shape."""
    w = g.const_value(n.inputs[1])
    r, c = g.const_shape(n.inputs[1])
    if n.op == "linear":
        out_in = n.attrs["w_layout"] == "out_in"
    elif n.op == "gemm":
        out_in = bool(n.attrs["trans_b"])
    else:
        out_in = False
    shape = (r, c) if out_in else (c, r)
    if w is None:
        return None, shape
    return (w if out_in else np.ascontiguousarray(w.T)), shape


class Emission:
    """The emission half of the lowering."""

    # ---------------------------------------------------------------- emission
    def emit(self) -> None:
        """The program's steps and dataflow, node by node, then the argmax and the tables tied
        to weights (placed per pipeline stage by :mod:`compiler.passes.place`)."""
        layer_of = self.layer_of
        self._start_emission()
        g = self.g
        for n in g.nodes:
            layer = layer_of[id(n)]
            L = self._lname(layer)
            what = n.cls.what
            if what == "cache_view":
                continue
            self._cur_expert = self._expert_tag(n, layer)
            if self.ep > 1 and self._cur_expert is None:
                self._ep_combine(n, layer, L)
            n_flow = len(self.flow)
            if what == "cache_append":
                self._emit_cache_append(n)
            elif what == "attention":
                self._emit_attention(n)
            elif what == "table_read":
                self._emit_gather(n, layer, L)
            elif what == "matvec":
                self._emit_matvec(n, layer, L)
            else:  # an ASIC op or wiring
                self._emit_asic(n, layer, L)
            for f in self.flow[n_flow:]:  # the executor routes, and skips experts not chosen
                if n.op == "moe_route":
                    f.attrs["moe"] = self.moe_of[n.outputs[0]]
                if self._cur_expert is not None and id(n) not in self.combine:
                    f.attrs["expert_tag"] = self._cur_expert
            if self.ep > 1 and (n.op == "expert_out" or id(n) in self.combine):
                self.ep_partial.update(n.outputs)  # a device's sum of its experts' outputs
            if n.op == "expert_out":
                self.expert_sum[n.outputs[0]] = self._cur_expert
            elif self._cur_expert is not None and id(n) not in self.combine:
                for o in n.outputs:
                    self.expert_of[o] = self._cur_expert
            self.flow_layer += [layer] * (len(self.flow) - len(self.flow_layer))
        self._cur_expert = None
        self._finish_emission()
        for f, layer in zip(self.flow, self.flow_layer):  # a windowed layer's ops: a KV ring
            if self.layer_window.get(layer):
                f.attrs["window"] = self.layer_window[layer]
        for st, layer in zip(self.steps, self.step_layer):
            st.window = self.layer_window.get(layer, 0)

    def _expert_tag(self, n: Node, layer: int) -> tuple[int, int] | None:
        """(MoE layer, expert) of a node on an expert's path, from its ``expert_in`` to its
        ``expert_out`` (pimsim.moe); a router (``moe_route``) opens a MoE layer."""
        g = self.g
        if n.op == "moe_route":
            self.moe_of[n.outputs[0]] = len(self.moe)
            self.moe.append({"layer": layer, "experts": int(g.shape_of(n.outputs[0])[-1]),
                             "k": int(n.attrs["k"])})
            return None
        if n.op == "expert_in":
            return (self.moe_of[n.inputs[1]], int(n.attrs["expert"]))
        outs = [self.expert_sum[i] for i in n.inputs if i in self.expert_sum]
        if n.op == "add" and outs:  # summing the experts' outputs: one add per expert chosen
            self.combine.add(id(n))
            return max(outs)
        tags = {self.expert_of[i] for i in n.inputs if i in self.expert_of}
        if len(tags) > 1:
            raise LoweringError(f"{self.name}: node {n.name!r} mixes the paths of experts "
                                f"{sorted(tags)}")
        return tags.pop() if tags else None

    def _ep_combine(self, n: Node, layer: int, L: str) -> None:
        """Expert parallelism (:mod:`pimsim.expert_parallel`): before the first node after a
        MoE layer's experts, the devices' sums of their own experts' weighted outputs are
        added by one all-reduce over the group."""
        for v in [i for i in n.inputs if i in self.ep_partial]:
            self.ep_partial.discard(v)
            self.step_of[v] = {self._add(f"{L}.moe.all_reduce", "all_reduce", layer, "comm",
                                         self._deps_of([v]),
                                         n_elems=int(np.prod(shape0(self.g, v))))}

    def _ep_place(self, mname: str) -> None:
        """Expert parallelism: the matrix ``mname`` of the expert being emitted stays whole on
        its device, expert ``e`` of ``E`` on device ``e // (E / ep)``; the experts of one
        local slot (``e % (E / ep)``) lie at the same rows of their devices."""
        m, e = self._cur_expert
        n_exp = int(self.moe[m]["experts"])
        if n_exp % self.ep:
            raise LoweringError(f"{self.name}: --ep {self.ep} does not divide the {n_exp} "
                                f"experts of MoE layer {m}",
                                f"use an --ep (and --tp) dividing {n_exp}, or drop --ep")
        per = n_exp // self.ep
        j = self.ep_count.get((m, e), 0)
        self.ep_count[(m, e)] = j + 1
        self.tp_rows[mname] = ("expert", e // per)
        self.ep_slot[mname] = (m, e % per, j)

    def _start_emission(self) -> None:
        """The emission's state: the steps and flow so far and what they refer to."""
        self.steps: list[Step] = []
        self.flow: list[FlowOp] = []
        self.step_of: dict[str, set[int]] = {}  # value -> steps that produced it
        self.vec_consts: dict[int, list[str]] = {}  # layer -> vector constants in first-use order
        self.vec_layer: dict[str, int] = {}
        self.immediates: dict[str, np.ndarray] = {}
        self.param_step: dict[int, int] = {}
        self.matrices_w: dict[str, Any] = {}
        self.mat_shapes: dict[str, tuple[int, int]] = {}
        self.mat_order: list[str] = []
        self.table_of: dict[str, str] = {}  # gathered const -> table name
        self.weight_matrix: dict[str, str] = {}  # weight const -> the packed matrix holding it
        self.tables_first: list[str] = []
        self.done_packs: set[int] = set()
        self.embed_values: set[str] = set()
        self.head_matvec = None
        self.logits = self.g.outputs[0]
        self.names: dict[str, int] = {}
        self.d_ff = 0
        self.owner: dict[str, np.ndarray] = {}  # values split across the TP devices -> owners
        self.tp_rows: dict[str, tuple[str, list]] = {}  # matrix -> ("col"|"row", per device)
        self.mat_local: dict[str, tuple[int, int]] = {}  # matrix -> its shape on one device
        self.mat_layer: dict[str, int] = {}
        self.mat_cent: dict[str, tuple[int, int]] = {}  # matrix -> (parts, AF part): CENT's
        self.step_layer: list[int] = []  # each step's layer (-1 embedding, n_layer final)
        # reduction step -> its matrix: sized when placed (partial sums per output: the layout's)
        self.reduce_of: dict[int, str] = {}
        self.moe: list[dict] = []  # per MoE layer: layer, experts, k (pimsim.moe)
        self.layer_window: dict[int, int] = {}  # layer -> its sliding window (pimsim.isa)
        self.flow_layer: list[int] = []  # each flow op's layer
        self.moe_of: dict[str, int] = {}  # routing weights -> MoE layer
        self.expert_of: dict[str, tuple[int, int]] = {}  # value on an expert's path -> tag
        self.expert_sum: dict[str, tuple[int, int]] = {}  # an expert's weighted output -> tag
        self.combine: set[int] = set()  # adds of the experts' outputs (run per expert chosen)
        self._cur_expert: tuple[int, int] | None = None  # the tag of the node being emitted
        # expert parallelism: expert matrix -> (MoE layer, local slot, k-th matrix), the
        # matrices per expert so far, the values holding a device's partial sum of experts
        self.ep_slot: dict[str, tuple[int, int, int]] = {}
        self.ep_count: dict[tuple[int, int], int] = {}
        self.ep_partial: set[str] = set()

    def _lname(self, layer: int) -> str:
        """A step-name prefix: ``embed``, ``L<i>`` or ``final``."""
        return "embed" if layer < 0 else ("final" if layer >= self.n_layer else f"L{layer}")

    def _uniq(self, stem: str) -> str:
        """A step name not used before: ``stem``, ``stem.1``, ..."""
        k = self.names.get(stem, 0)
        self.names[stem] = k + 1
        return stem if k == 0 else f"{stem}.{k}"

    def _add(self, name, op, layer, kind, deps, **kw) -> int:
        """Append a program step; returns its index."""
        index = layer if 0 <= layer < self.n_layer else -1
        self.steps.append(Step(len(self.steps), self._uniq(name), op, index, kind,
                               tuple(sorted(set(deps))), expert=self._cur_expert, **kw))
        self.step_layer.append(layer)
        return len(self.steps) - 1

    def _depends_on(self, i: int, a: int) -> bool:
        """Whether step ``i`` depends on step ``a``, directly or not: a walk back through the
        dependencies (each an earlier step) that never goes below ``a``, so it reads only the
        steps between them (every step's ancestors kept as sets would grow with the square of
        the steps: 55,000 of them in gpt-oss-120b, whose expert products all have biases)."""
        seen, todo = set(), [i]
        while todo:
            for d in self.steps[todo.pop()].deps:
                if d == a:
                    return True
                if d > a and d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    def _deps_of(self, values) -> set[int]:
        """The steps that produced ``values``."""
        out: set[int] = set()
        for v in values:
            out |= self.step_of.get(v, set())
        return out

    def _dim_attr(self, d):
        """A dimension for the flow: an int, or ("pos", per position, constant)."""
        if isinstance(d, str):
            terms, const = _terms(d)
            if not set(terms) <= self.syms:
                raise LoweringError(f"{self.name}: dimension {d!r} depends on {sorted(terms)}, "
                                    f"not on the cache length alone")
            return ("pos", sum(terms.values()), const)
        return d

    def _attrs_of(self, n: Node) -> dict:
        """An op's attributes with its symbolic dimensions in the flow's form."""
        at = dict(n.attrs)
        for k in ("shape", "starts", "ends"):
            if k in at and at[k] is not None:
                at[k] = [self._dim_attr(d) for d in at[k]]
        return at

    def _elems(self, value: str) -> tuple[int, int]:
        """(n_elems, per_pos_elems) of a value: n(pos) = n_elems + per_pos * (pos + 1)."""
        shape = self.g.shape_of(value) or ()

        def at(p):
            tot = 1
            for d in shape:
                if isinstance(d, str):
                    terms, const = _terms(d)
                    d = const + sum(k * p for k in terms.values())
                tot *= int(d)
            return tot
        n0, n1 = at(0), at(1)  # cache lengths 0 and 1: positions 0 and 1
        per = n1 - n0
        return n0 - per, per

    def _rows(self, value: str, axis: int) -> int:
        """Rows of a value along ``axis``: the product of its other (static) dimensions."""
        shape = self.g.shape_of(value)
        ax = axis % len(shape)
        return int(np.prod([int(d) for i, d in enumerate(shape) if i != ax]))

    def _operand(self, name: str, layer: int) -> str:
        """Make a constant operand of an ASIC op available: an immediate or a vector."""
        g = self.g
        if not g.is_const(name):
            return name
        c = g.consts[name]
        if name in self.vec_layer or name in self.immediates:
            return name
        if isinstance(c, np.ndarray) and (c.size <= 1 or c.dtype.kind != "f"):
            self.immediates[name] = np.asarray(c)
        else:
            self.vec_layer[name] = layer
            self.vec_consts.setdefault(layer, []).append(name)
        return name

    def _need_params(self, layer: int) -> set[int]:
        """The step fetching a layer's vectors (made on first need)."""
        if layer not in self.param_step:
            entry = f"{self._lname(layer)}.params"
            tag, self._cur_expert = self._cur_expert, None  # the layer's, every expert's
            self.param_step[layer] = self._add(entry, "param_fetch", layer, "pim", [],
                                               vectors=(entry,))
            self._cur_expert = tag
        return {self.param_step[layer]}

    def _emit_cache_append(self, n: Node) -> None:
        """A new key or value appended to an attention's cache: a write in the flow."""
        g = self.g
        a = next(a for a in self.attns if n is a.k_concat or n is a.v_concat)
        which = "k" if n is a.k_concat else "v"
        new = n.inputs[1]
        sh = g.shape_of(new)
        if len(sh) < 3 or sh[-2] != 1 or any(d != 1 for d in sh[:-3]) or \
                n.attrs["axis"] % len(sh) != len(sh) - 2:
            raise LoweringError(f"{self.name}: the new {which} at node {n.name!r} has "
                                f"shape {list(sh)}, expected [1, n_kv_head, 1, d_head] "
                                f"appended on the token axis")
        a.n_kv = int(sh[-3])
        if which == "k":
            a.d_head = int(sh[-1])
        else:
            a.d_v = int(sh[-1])
        self.flow.append(FlowOp(f"{which}_write", (new,), (), {"attn": a.index}, -2))

    def _emit_attention(self, n: Node) -> None:
        """q.K^T or p.V over a cache: a PIM step (after the cache write)."""
        g, tp = self.g, self.tp
        a_in, b_in = n.inputs[:2]
        if b_in not in self.cache or a_in in self.cache:
            raise LoweringError(f"{self.name}: node {n.name!r}: the cache must be the "
                                f"right operand of the attention product")
        ai, which, tr = self.cache[b_in]
        a = self.attns[ai]
        if which == "k" and not tr or which == "v" and tr:
            raise LoweringError(f"{self.name}: node {n.name!r} multiplies by "
                                f"{'K' if which == 'k' else 'V^T'}; expected q.K^T or p.V")
        L = f"L{ai}"
        if a.write_step < 0:
            news = [x.inputs[1] for x in (a.k_concat, a.v_concat) if x is not None]
            wdeps = self._deps_of(news)
            if which == "k" and self.cfg.system.lowering == "cent" and any(
                    self.steps[d].kind == "asic" and self.steps[d].op == "elementwise"
                    for d in wdeps):
                # CENT's rotary embedding in the banks (pimsim.cent_ops): the key reaches the
                # cache through element-wise ops on the ASIC, run by CENT as EWMULs
                qs = g.shape_of(a_in)
                heads = int(np.prod([int(d) for d in qs[:-1]]))
                wdeps = {self._add(f"{L}.rope.banks", "elementwise", ai, "pim",
                                   wdeps | self._deps_of([a_in]),
                                   cent=("rope", heads * int(qs[-1]), max(1, heads // a.n_kv)))}
            a.write_step = self._add(f"{L}.kv_write", "kv_write", ai, "pim", wdeps, kv=(ai,))
        q_elems = int(np.prod([int(d) for d in g.shape_of(a_in)[:-1]])) if which == "k" \
            else 0
        if which == "k":
            a.n_head = q_elems
            a.window = self._window_of(a_in)
            if a.window:
                self.layer_window[ai] = a.window
            st = self._add(f"{L}.attn_score", "attn_score", ai, "pim",
                     self._deps_of([a_in]) | {a.write_step}, kv=(ai,))
        else:
            st = self._add(f"{L}.attn_value", "attn_value", ai, "pim",
                     self._deps_of([a_in]) | {a.write_step}, kv=(ai,))
        if tp > 1 and not self.attn_master:  # master: the whole attention on device 0
            if a_in not in self.owner:
                raise LoweringError(f"{self.name}: node {n.name!r}: the attention's "
                                    f"{'query' if which == 'k' else 'weights'} are not "
                                    f"split by head across the {tp} devices",
                                    "use --tp 1 for this model")
            self.owner[n.outputs[0]] = np.broadcast_to(
                self.owner[a_in][..., :1], shape0(g, n.outputs[0])).copy()
        self.flow.append(FlowOp(f"attn_{'score' if which == 'k' else 'value'}", (a_in,),
                           tuple(n.outputs), {"attn": ai, "shape": list(
                               self._dim_attr(d) for d in g.shape_of(n.outputs[0]))}, st))
        self.step_of[n.outputs[0]] = {st}

    def _window_of(self, q: str) -> int:
        """The sliding window marked on an attention's query (``attn_window``), or 0."""
        n = self.prod.get(q)
        for _ in range(16):  # up through the views between the marker and the product
            if n is None:
                return 0
            if n.op == "attn_window":
                return int(n.attrs["window"])
            if n.op not in WIRING or not n.inputs:
                return 0
            n = self.prod.get(n.inputs[0])
        return 0

    def _emit_gather(self, n: Node, layer: int, L: str) -> None:
        """A row read from a constant table (token or position embedding)."""
        g = self.g
        table = n.inputs[0]
        if table not in self.table_of:
            self.table_of[table] = f"table.{len(self.table_of)}"
            self.tables_first.append(table)
        prev = self.steps[-1] if self.steps else None
        if prev is not None and prev.op == "embedding" and prev.kind == "pim" and \
                not (self._deps_of([n.inputs[1]]) - set(prev.deps)):
            prev.vectors = prev.vectors + (self.table_of[table],)  # one read of both rows
            st = prev.index
        else:
            st = self._add(f"{L}.read", "embedding", layer, "pim", self._deps_of([n.inputs[1]]),
                     vectors=(self.table_of[table],))
        self.flow.append(FlowOp("embed", (n.inputs[1],), tuple(n.outputs),
                           {"table": self.table_of[table],
                            "shape": [self._dim_attr(d) for d in g.shape_of(n.outputs[0])]}, st))
        self.step_of[n.outputs[0]] = {st}
        self.embed_values.add(n.outputs[0])

    def _emit_matvec(self, n: Node, layer: int, L: str) -> None:
        """The packed matrix-vector product of ``n`` (once per pack): the PIM step, the ASIC's
        reduction and, split over devices, the exchange."""
        g, geo, tp = self.g, self.geo, self.tp
        p = self.pack_of[id(n)]
        if id(p) in self.done_packs:
            return
        self.done_packs.add(id(p))
        role = p.role
        mname = f"{L}.{role}"
        k = 1
        while mname in self.mat_shapes:
            mname, k = f"{L}.{role}{k}", k + 1
        parts, ws, lo = [], [], 0
        for m in p.nodes:
            w, (o, i) = weight_out_in(g, m)
            ws.append(w)
            bias = ""
            if len(m.inputs) > 2:
                bias = self._operand(m.inputs[2], layer)
                if bias in self.immediates:
                    raise LoweringError(f"{self.name}: bias of {m.name!r} is a scalar")
            shape = [self._dim_attr(d) for d in g.shape_of(m.outputs[0])]
            parts.append((lo, lo + o, bias, shape))
            lo += o
        in_dim = weight_out_in(g, p.nodes[0])[1][1]
        out_loc, in_loc = lo, in_dim
        if self.ep > 1 and self._cur_expert is not None:  # a whole expert on its device
            self._ep_place(mname)
        elif tp > 1:
            out_loc, in_loc = self.partition_matvec(mname, p, parts, lo, in_dim, self.owner)
        self.mat_local[mname] = (out_loc, in_loc)
        self.mat_layer[mname] = layer
        if self.cfg.system.lowering == "cent":  # CENT: a product per weight matrix
            af = [i for i, m in enumerate(p.nodes) if any(
                getattr(ASIC_OPS.get(u.op), "cost", None) == "activation"
                for u in self.users.get(m.outputs[0], []))]
            self.mat_cent[mname] = (len(parts), af[0] if af else -1,
                                    tuple(hi - lo_ for lo_, hi, _, _ in parts))
        self.matrices_w[mname] = None if any(w is None for w in ws) else np.concatenate(ws, 0)
        self.mat_shapes[mname] = (lo, in_dim)
        self.mat_order.append(mname)
        if role == "lm_head":
            self.head_matvec = mname
        if role == "ffn_up":
            self.d_ff = max([self.d_ff] + [hi - lo_ for lo_, hi, _, _ in parts])
        in_deps = self._deps_of([p.input])
        if tp > 1 and self.tp_rows[mname][0] == "col" and not len(self.tp_rows[mname][1][0]):
            # local to another device (a head's own product): the simulated device 0 runs none
            # of it; the dataflow still computes it, on its device
            self.flow.append(FlowOp("matvec", (p.input,), tuple(m.outputs[0] for m in p.nodes),
                                    {"matrix": mname, "parts": parts}, -1))
            for m in p.nodes:
                self.step_of[m.outputs[0]] = in_deps
                self.weight_matrix.setdefault(m.inputs[1], mname)
            return
        master = tp > 1 and self.attn_master
        if master:  # CENT: the master broadcasts the input to the devices
            in_deps = {self._add(f"{L}.{role}.broadcast", "broadcast", layer, "comm", in_deps,
                                 n_elems=in_dim)}
        pim = self._add(f"{L}.{role}", role, layer, "pim", in_deps, matrix=mname)
        deps = {pim}
        if any(part[2] for part in parts):  # biases: fetched vectors
            par = self._need_params(layer)
            deps |= {p for p in par if not self._depends_on(pim, p)}
        n_chunks = -(-in_loc // geo.row_elems)
        red = self._add(f"{L}.{role}.reduce", "reduction", layer, "asic", deps,
                  n_elems=out_loc * n_chunks)  # place() sets it from the layout
        self.reduce_of[red] = mname
        self.flow.append(FlowOp("matvec", (p.input,), tuple(m.outputs[0] for m in p.nodes),
                           {"matrix": mname, "parts": parts}, pim))
        done = {red}
        if master:  # CENT: every device's rows to the master
            done = {self._add(f"{L}.{role}.gather", "gather", layer, "comm", {red},
                              n_elems=out_loc)}
        elif tp > 1 and self.tp_rows[mname][0] == "row":  # partial sums: one exchange
            whole = all(len(c) == 0 for c in self.tp_rows[mname][1][1:])
            op = "broadcast" if whole else "all_reduce"  # device 0 had it all
            done = {self._add(f"{L}.{role}.{op}", op, layer, "comm", {red}, n_elems=lo)}
        for m in p.nodes:
            self.step_of[m.outputs[0]] = done
        for m in p.nodes:  # remember weights, for tables tied to them
            self.weight_matrix.setdefault(m.inputs[1], mname)

    def _emit_asic(self, n: Node, layer: int, L: str) -> None:
        """An ASIC op (a step, or folded into the flow when it costs nothing) or wiring."""
        g, tp = self.g, self.tp
        spec = ASIC_OPS.get(n.op)
        if spec is None:
            raise LoweringError(f"{self.name}: op {n.op!r} at node {n.name!r} has no "
                                f"definition on the ASIC")
        ins = [self._operand(i, layer) for i in n.inputs]
        deps = self._deps_of([i for i in ins if not g.is_const(i)])
        if any(i in self.vec_layer for i in ins):
            deps |= self._need_params(self.vec_layer[next(i for i in ins if i in self.vec_layer)])
        split = tp > 1 and any(i in self.owner for i in n.inputs)
        if split and spec.cost is not None and n.op != "moe_route" and \
                any(i not in self.owner and not g.is_const(i) for i in n.inputs):
            # one element on one device (a shared expert's gate) scaling a whole value: the
            # device holding it broadcasts it first
            for i in [i for i in n.inputs if i in self.owner and self.owner[i].size == 1]:
                b = self._add(f"{L}.{n.op}.broadcast", "broadcast", layer, "comm",
                              self.step_of.get(i, set()), n_elems=1)
                del self.owner[i]
                self.step_of[i] = {b}
                deps = (deps - set()) | {b}
            split = any(i in self.owner for i in n.inputs)
        if split and n.op == "moe_route":
            # the router needs every expert's logit: the devices' shares are exchanged (an
            # all-reduce of the zero-padded shares) and every device routes the whole vector
            deps = {self._add(f"{L}.moe_route.all_reduce", "all_reduce", layer, "comm", deps,
                              n_elems=int(np.prod(shape0(g, n.inputs[0]))))}
            split = False
        elif split:
            self.propagate_owner(n, self.owner)
        if spec.cost is None:
            self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), -1))
            for o in n.outputs:
                self.step_of[o] = deps
            return
        op = spec.cost
        if n.cls.role == "attn_scale":
            # the scores' scale: applied as the softmax reads them (PIM-GPT's softmax cost)
            self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), -1))
            self.step_of[n.outputs[0]] = self.step_of[n.inputs[0]]
            return
        if n.cls.role == "embedding_sum":
            op = "embedding"
        elif n.cls.role == "residual":
            op = "residual"
        cnt = [self._elems(v) for v in list(n.outputs) + [i for i in n.inputs if not g.is_const(i)]]
        ne, per = max(cnt, key=lambda t: (t[1], t[0]))
        if n.op == "softmax" and len(n.inputs) > 1:  # a sink: one more element a row (a head)
            ne += self._rows(n.outputs[0], n.attrs["axis"])
        if split:  # device 0's share (the device simulated)
            share = float(np.mean(self.owner[n.outputs[0]] == 0))
            ne, per = math.ceil(ne * share - 1e-9), math.ceil(per * share - 1e-9)
        cent = self.cfg.system.lowering == "cent" and op in _CENT_VECTOR_OPS
        if cent:
            deps = self._cent_vector_step(op, L, layer, deps, ne, per)
        st = self._add(f"{L}.{n.op}", op, layer, "asic", deps, n_elems=ne, per_pos_elems=per)
        self.flow.append(FlowOp(n.op, tuple(ins), tuple(n.outputs), self._attrs_of(n), st))
        done = st
        if cent and op == "softmax":  # its second half, after the CXL port's exp
            done = self._cent_vector_step(op, L, layer, {st}, ne, per).pop()
        for o in n.outputs:
            self.step_of[o] = {done}

    def _cent_vector_step(self, op: str, L: str, layer: int, deps: set[int], ne: int,
                          per: int) -> set[int]:
        """CENT's lowering ([system] lowering = "cent", pimsim.cent_ops): the element-wise
        part of a norm, softmax or activation in the banks, a PIM step before the ASIC's (the
        CXL port's reductions and scalar math; the softmax has a second one after it).
        Returns the new step, as the next step's dependency."""
        if op == "activation":
            from pimsim.cent_ops import needs_iterations

            if needs_iterations(ne, self.geo):
                raise LoweringError(f"{self.name}: [system] lowering = \"cent\": an activation "
                                    f"of {ne} elements exceeds CENT's bank group 0 rows "
                                    f"(its two-iteration path is not modelled)",
                                    "use more channels per device, or lowering = \"pimsim\"")
        spec = {"rmsnorm": ("norm", ne), "softmax": ("softmax", per),
                "activation": ("silu", ne)}[op]
        return {self._add(f"{L}.{op}.banks", op, layer, "pim", deps, cent=spec)}

    def _finish_emission(self) -> None:
        """The argmax after the LM head and the tables tied to weights."""
        g, tp = self.g, self.tp
        if self.head_matvec is None:
            raise LoweringError(f"{self.name}: the logits are not a matrix-vector product with a "
                                f"weight (no LM head found)")
        vocab = self.mat_shapes[self.head_matvec][0]
        head_deps = self._deps_of([self.logits])
        if tp > 1 and self.logits in self.owner:  # each device's share of the logits to device 0
            head_deps = {self._add("logits.gather", "gather", self.n_layer, "comm", head_deps,
                             n_elems=self.mat_local[self.head_matvec][0])}
        am = self._add("argmax", "argmax", self.n_layer, "asic", head_deps, n_elems=vocab)
        # CENT: the token sampled on the host CPU; with pipeline stages it delays the token's
        # return to stage 0 instead (pimsim.pipeline.token_return_cyc), the last stage going on
        if self.cfg.system.host_sample_ns > 0 and self.pp == 1:
            self._add("host_sample", "host_sample", self.n_layer, "comm", {am})
        # tied tables: a gathered table that is also a weight lives with its matrix
        tied: dict[str, str] = {}
        for t in self.tables_first:
            mname = self.weight_matrix.get(t)
            if mname is None and g.const_value(t) is not None:
                for mn in sorted(set(self.weight_matrix.values())):
                    if self.matrices_w.get(mn) is not None and \
                            self.matrices_w[mn].shape == g.const_shape(t) and \
                            np.array_equal(self.matrices_w[mn], g.const_value(t)):
                        mname = mn
            if mname is not None and self.mat_shapes[mname] == g.const_shape(t):
                tied[self.table_of[t]] = mname
        if self.tp > 1 or self.pp > 1:
            tied = {}  # each device holds the rows it reads: the table is placed on its own
        self.tied, self.vocab = tied, vocab


@dataclass(frozen=True)
class Emit:
    """The lowering's emission: the steps and dataflow of the program (see the module
    docstring), on the lowering's state."""

    name: str = "emit"

    def run(self, low):
        low.emit()
        return low
