"""Recognise a GPT decoder in a classified graph and read it out as a :class:`DecoderSpec`.

The structure is found from the graph alone (never from names or a preset): the two embedding
gathers and their sum start the residual stream; each block is then

    h -> layernorm -> {q, k, v} linears -> attention (q.K^T, scale, softmax, p.V over the KV
      cache) -> out_proj -> residual add(h, .) -> layernorm -> ffn_up -> gelu -> ffn_down
      -> residual add

until the residual stream reaches the final layernorm that feeds the LM head, whose weight must be
the token-embedding table (tied). Dimensions come from the weights' shapes, the heads from the
reshape of q into heads (cross-checked against the cache shape ``[.., n_head, seq, d_head]``),
``n_ctx`` from the position table's rows. Matrices are returned ``[out, in]`` (transposed where
the graph stores ``[in, out]``); weights are None when the graph holds shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node
from compiler.model import MATRIX_ROLES, VECTOR_ROLES, DecoderSpec, LayerSpec
from compiler.passes.classify import Classify, _Graph, _same_table
from pimsim.errors import UserError


class RecogniseError(UserError):
    """The graph is not (or not recognisably) a GPT decoder."""

    default_fix = ("give the decode step of a GPT-style decoder (workloads.export."
                   "export_decode_onnx writes one)")


def recognise_decoder(graph: Graph, name: str = "decoder") -> DecoderSpec:
    """The :class:`DecoderSpec` of a graph after shape inference, fusion and classification."""
    if not any(n.role for n in graph.nodes):
        graph = Classify().run(graph)
    return _Recogniser(graph).run(name)


@dataclass(frozen=True)
class Recognise:
    """The last lowering step: graph -> :class:`DecoderSpec` (not a graph-to-graph pass)."""

    name: str = "recognise"
    model_name: str = "decoder"

    def run(self, graph: Graph) -> DecoderSpec:
        return recognise_decoder(graph, self.model_name)


def _fail(msg: str) -> RecogniseError:
    return RecogniseError(f"cannot recognise a GPT decoder: {msg}")


class _Recogniser:
    def __init__(self, g: Graph) -> None:
        self.g = g
        self.q = _Graph(g)

    # ---- small helpers ---------------------------------------------------------------------

    def one(self, nodes: list[Node], what: str, where: str) -> Node:
        if len(nodes) != 1:
            raise _fail(f"expected one {what} {where}, found {len(nodes)}")
        return nodes[0]

    def fwd(self, value: str, role: str) -> list[Node]:
        return [u for u in self.q.forward(value)[0] if u.role == role]

    def src(self, value: str) -> Node | None:
        return self.q.source(value)

    def matrix(self, n: Node) -> np.ndarray | None:
        w = self.g.const_value(n.inputs[1])
        if w is None:
            return None
        return np.ascontiguousarray(w.T) if n.attrs.get("w_layout") == "in_out" else w

    def out_in(self, n: Node) -> tuple[int, int]:
        r, c = self.g.const_shape(n.inputs[1])
        return (r, c) if n.attrs.get("w_layout") == "out_in" else (c, r)

    def vector(self, n: Node, idx: int, size: int, fill: float) -> np.ndarray | None:
        if len(n.inputs) <= idx:
            return np.full(size, fill, np.float32) if self._materialised else None
        name = n.inputs[idx]
        if not self.g.is_const(name):
            raise _fail(f"{self.g.pretty_node(n)}: input {idx} is not a constant")
        v = self.g.const_value(name)
        return None if v is None else v.reshape(-1)

    # ---- the walk --------------------------------------------------------------------------

    def run(self, name: str) -> DecoderSpec:
        g, q = self.g, self.q
        lm = self.one([n for n in g.nodes if n.role == "lm_head"], "LM head", "in the graph")
        if q.weight(lm) is None or lm.op != "linear":
            raise _fail("the LM head is not a linear with a constant weight")
        self._materialised = g.const_value(lm.inputs[1]) is not None
        gathers = [n for n in g.nodes if n.role == "embedding"]
        tok = [n for n in gathers
               if _same_table(g, lm.inputs[1], n.inputs[0], lm.attrs["w_layout"])]
        tok_g = self.one(tok, "token-embedding gather tied to the LM head", "")
        pos_g = self.one([n for n in gathers if n is not tok_g], "position-embedding gather", "")
        emb_add = self.one([n for n in g.nodes if n.role == "embedding_add"], "embedding sum", "")
        vocab, d_model = g.const_shape(tok_g.inputs[0])
        n_ctx, d_pos = g.const_shape(pos_g.inputs[0])
        if d_pos != d_model:
            raise _fail(f"position table width {d_pos} != token table width {d_model}")

        h = emb_add.outputs[0]
        layers: list[LayerSpec] = []
        heads: set[tuple[int, int]] = set()
        lns: list[Node] = []
        while True:
            ln1 = self.one(self.fwd(h, "layernorm"), "layernorm", f"reading %{h}")
            lns.append(ln1)
            if lm in self.q.forward(ln1.outputs[0])[0]:
                ln_f = ln1
                break
            layer, h, ln2, hd = self._block(h, ln1, len(layers))
            lns.append(ln2)
            layers.append(layer)
            heads.add(hd)
        if not layers:
            raise _fail("no decoder block between the embeddings and the LM head")
        if len(heads) != 1:
            raise _fail(f"layers disagree on (n_head, d_head): {sorted(heads)}")
        (n_head, d_head), = heads
        eps = {ln.attrs["eps"] for ln in lns}
        if len(eps) != 1:
            raise _fail(f"layernorms use different eps: {sorted(eps)}")
        d_ff = self._d_ff
        spec = DecoderSpec(
            name=name, n_layer=len(layers), d_model=d_model, n_head=n_head, d_head=d_head,
            d_ff=d_ff, vocab=vocab, n_ctx=n_ctx, eps=eps.pop(), layers=layers,
            wte=g.const_value(tok_g.inputs[0]), wpe=g.const_value(pos_g.inputs[0]),
            lnf_w=self.vector(ln_f, 1, d_model, 1.0), lnf_b=self.vector(ln_f, 2, d_model, 0.0),
        )
        try:
            spec.check()
        except ValueError as e:
            raise _fail(str(e)) from None
        return spec

    def _block(self, h: str, ln1: Node, i: int) -> tuple[LayerSpec, str, Node, tuple[int, int]]:
        g, q = self.g, self.q
        where = f"in layer {i}"
        proj = {}
        for role in ("qkv_q", "qkv_k", "qkv_v"):
            proj[role] = self.one(self.fwd(ln1.outputs[0], role), f"{role} linear", where)
        # residual 1: add(h, out_proj(...))
        r1 = self.one([u for u in q.users.get(h, []) if u.role == "residual"],
                      "residual add", f"reading %{h} {where}")
        other = r1.inputs[1] if r1.inputs[0] == h else r1.inputs[0]
        out_proj = self.src(other)
        if out_proj is None or out_proj.role != "out_proj":
            raise _fail(f"residual %{r1.outputs[0]} {where} does not add the attention output")
        n_head, d_head = self._attention(proj, out_proj, where)
        h2 = r1.outputs[0]
        ln2 = self.one(self.fwd(h2, "layernorm"), "second layernorm", where)
        up = self.one(self.fwd(ln2.outputs[0], "ffn_up"), "ffn_up linear", where)
        act = self.one(self.fwd(up.outputs[0], "gelu"), "gelu", where)
        down = self.one(self.fwd(act.outputs[0], "ffn_down"), "ffn_down linear", where)
        r2 = self.one([u for u in q.users.get(h2, []) if u.role == "residual"],
                      "second residual add", where)
        if {self.src(x) for x in r2.inputs if x != h2} != {down}:
            raise _fail(f"residual %{r2.outputs[0]} {where} does not add the FFN output")

        nodes = {"q": proj["qkv_q"], "k": proj["qkv_k"], "v": proj["qkv_v"],
                 "out_proj": out_proj, "ffn_up": up, "ffn_down": down}
        shapes = {role: self.out_in(n) for role, n in nodes.items()}
        d_model = g.shape_of(h)[-1]
        self._d_ff = shapes["ffn_up"][0]
        w: dict[str, np.ndarray | None] = {}
        for role in MATRIX_ROLES:
            w[role] = self.matrix(nodes[role])
        w["ln1_w"] = self.vector(ln1, 1, d_model, 1.0)
        w["ln1_b"] = self.vector(ln1, 2, d_model, 0.0)
        for role in ("q", "k", "v", "out_proj", "ffn_up", "ffn_down"):
            w[f"{role}_b"] = self.vector(nodes[role], 2, shapes[role][0], 0.0)
        w["ln2_w"] = self.vector(ln2, 1, d_model, 1.0)
        w["ln2_b"] = self.vector(ln2, 2, d_model, 0.0)
        layer = LayerSpec(weights={k: w[k] for k in MATRIX_ROLES + VECTOR_ROLES})
        return layer, r2.outputs[0], ln2, (n_head, d_head)

    def _attention(self, proj: dict[str, Node], out_proj: Node, where: str) -> tuple[int, int]:
        """Check q/k/v reach out_proj through the attention; returns (n_head, d_head)."""
        g, q = self.g, self.q
        av = self.src(out_proj.inputs[0])
        if av is None or av.role != "attn_value":
            raise _fail(f"out_proj {where} does not read the attention output")
        score = None
        for n in g.nodes:
            if n.role == "attn_score" and self.src(n.inputs[0]) is proj["qkv_q"]:
                score = n
        if score is None:
            raise _fail(f"no q.K^T product {where}")

        def projection(value: str) -> tuple[Node | None, Node | None]:
            s = self.src(value)
            if s is not None and s.role == "kv_concat":
                return self.src(s.inputs[1]), s
            return s, None

        k_proj, k_cat = projection(score.inputs[1])
        v_proj, v_cat = projection(av.inputs[1])
        if k_proj is not proj["qkv_k"] or v_proj is not proj["qkv_v"]:
            raise _fail(f"the attention products {where} do not read the k / v projections")
        d_attn = self.out_in(proj["qkv_q"])[0]
        # heads from the reshape of q into [.., n_head, d_head]
        from_reshape = None
        for n in q.forward(proj["qkv_q"].outputs[0])[1]:
            shape = g.shape_of(n.outputs[0])
            if n.op == "reshape" and shape is not None and len(shape) >= 2 and all(
                    isinstance(d, int) for d in shape[-2:]) and shape[-1] * shape[-2] == d_attn \
                    and shape[-1] != d_attn:
                from_reshape = (int(shape[-2]), int(shape[-1]))
                break
        from_cache = None
        if k_cat is not None:
            shape = g.shape_of(k_cat.inputs[0])
            if shape is not None and len(shape) >= 3 and isinstance(shape[-3], int) \
                    and isinstance(shape[-1], int):
                from_cache = (int(shape[-3]), int(shape[-1]))
        if from_reshape and from_cache and from_reshape != from_cache:
            raise _fail(f"q is split into {from_reshape} heads but the cache holds {from_cache} {where}")
        heads = from_reshape or from_cache
        if heads is None or heads[0] * heads[1] != d_attn:
            raise _fail(f"cannot find n_head, d_head {where} (d_attn {d_attn})")
        return heads
