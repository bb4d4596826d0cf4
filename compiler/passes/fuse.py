"""Fusion: recognise written-out LayerNorm, GELU and Linear and replace each by one node.

Each rule is a small expression pattern matched at a root node (commutative for ``add`` and
``mul``), plus a rewrite that builds the fused node. A match is only taken when every interior
node of it is used by the match alone (nothing outside reads an intermediate), so fusing never
changes what the graph computes. Roots are visited from the last node backwards, so the largest
pattern (ending at the bias ``add``) wins over its sub-patterns.

* layernorm: ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * w + b`` (``pow(d, 2)`` or
  ``d * d``; the affine ``* w`` and ``+ b`` optional) -> ``layernorm(x, w, b) {axis=-1, eps}``.
* rmsnorm: ``x * rsqrt(mean(x^2) + eps) * w`` (or ``x / sqrt(..)``; ``* w`` optional) ->
  ``rmsnorm(x, w) {axis=-1, eps}``.
* gelu: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (``x^3`` as ``pow`` or
  two ``mul`` s; the ``0.5`` in any position of the product) -> ``gelu {approximate=tanh}``, and
  ``0.5 * x * (1 + erf(x / sqrt(2)))`` -> ``gelu {approximate=none}``.
* linear: ``gemm(x, W, b)`` with alpha = beta = 1 and no transposed ``x``, ``matmul(x, W)``, and
  either followed by ``+ b`` with a 1-D constant ``b``, where ``W`` is a 2-D constant or a
  ``transpose`` of one -> ``linear(x, W, b) {w_layout}``: ``out_in`` when ``W`` is stored
  ``[out, in]`` (ONNX ``Gemm transB=1``, ``x @ W.T``), ``in_out`` when stored ``[in, out]``
  (ONNX ``MatMul`` initializer, HF ``Conv1D``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

from compiler.ir import Graph, Node, f32_attr

# ---- patterns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """Any value (``const=False``: not a constant); bound to ``name``."""

    name: str
    const: bool | None = False


def ConstVar(name: str) -> Var:
    """A constant, bound to ``name``."""
    return Var(name, const=True)


@dataclass(frozen=True)
class Lit:
    """A one-element constant equal to ``value`` (relative tolerance ``rtol``)."""

    value: float
    rtol: float = 1e-5


@dataclass(frozen=True)
class P:
    """A node ``op(*args)``; ``bind`` names its output (a second occurrence must be the same)."""

    op: str
    args: tuple
    check: Callable[[Graph, Node], bool] | None = None
    bind: str | None = None


@dataclass(frozen=True)
class Alt:
    options: tuple


Pat = Union[Var, Lit, P, Alt]
Env = dict
_COMMUTATIVE = ("add", "mul")


class Matcher:
    def __init__(self, g: Graph) -> None:
        self.g = g
        self.prod = g.producers()

    def match(self, pat: Pat, value: str, env: Env) -> Iterator[tuple[Env, tuple[Node, ...]]]:
        g = self.g
        if isinstance(pat, Var):
            if pat.const is not None and g.is_const(value) != pat.const:
                return
            if pat.name in env:
                if env[pat.name] == value:
                    yield env, ()
                return
            yield {**env, pat.name: value}, ()
        elif isinstance(pat, Lit):
            x = g.scalar(value)
            if x is not None and math.isclose(x, pat.value, rel_tol=pat.rtol):
                yield env, ()
        elif isinstance(pat, Alt):
            for option in pat.options:
                yield from self.match(option, value, env)
        else:
            if pat.bind is not None and pat.bind in env:
                if env[pat.bind] == value:
                    yield env, ()
                return
            node = self.prod.get(value)
            if node is None or node.op != pat.op or len(node.inputs) != len(pat.args):
                return
            if pat.check is not None and not pat.check(g, node):
                return
            orders = [node.inputs]
            if pat.op in _COMMUTATIVE and len(node.inputs) == 2 and node.inputs[0] != node.inputs[1]:
                orders.append(node.inputs[::-1])
            if pat.bind is not None:
                env = {**env, pat.bind: value}
            for ins in orders:
                for env2, nodes in self._seq(pat.args, list(ins), env):
                    yield env2, nodes + (node,)

    def _seq(self, pats: tuple, values: list[str], env: Env) -> Iterator[tuple[Env, tuple[Node, ...]]]:
        if not pats:
            yield env, ()
            return
        for env1, n1 in self.match(pats[0], values[0], env):
            for env2, n2 in self._seq(pats[1:], values[1:], env1):
                yield env2, n1 + n2


@dataclass(frozen=True)
class Rule:
    """A pattern rooted at a node, and the fused node that replaces the match (None: reject).

    ``rewrite(graph, env, nodes)`` gets the bindings and the matched nodes (the root last).
    """

    name: str
    pattern: P
    rewrite: Callable[[Graph, Env, tuple[Node, ...]], Node | None]


# ---- the fuse pass -----------------------------------------------------------------------------


def fuse(graph: Graph, rules: tuple[Rule, ...]) -> Graph:
    """Apply ``rules`` until none matches; returns a new graph."""
    g = graph.copy()
    while True:
        g, changed = _sweep(g, rules)
        if not changed:
            return g.prune().verify()


def _sweep(g: Graph, rules: tuple[Rule, ...]) -> tuple[Graph, bool]:
    m = Matcher(g)
    users = g.users()
    outputs = set(g.outputs)
    consumed: set[int] = set()
    replace: dict[int, Node] = {}
    for root in reversed(g.nodes):
        if id(root) in consumed or len(root.outputs) != 1:
            continue
        for rule in rules:
            new = _first_match(g, m, rule, root, users, outputs, consumed)
            if new is not None:
                new_node, nodes = new
                replace[id(root)] = new_node
                consumed.update(id(n) for n in nodes)
                break
    if not replace:
        return g, False
    kept = []
    for n in g.nodes:
        if id(n) in replace:
            kept.append(replace[id(n)])
        elif id(n) not in consumed:
            kept.append(n)
    g.nodes = kept
    return g.prune(), True


def _first_match(g: Graph, m: Matcher, rule: Rule, root: Node, users: dict, outputs: set,
                 consumed: set) -> tuple[Node, tuple[Node, ...]] | None:
    for env, nodes in m.match(rule.pattern, root.outputs[0], {}):
        ids = {id(n) for n in nodes}
        if ids & consumed:
            continue
        interior_ok = all(
            o not in outputs and all(id(u) in ids for u in users.get(o, ()))
            for n in nodes if n is not root for o in n.outputs
        )
        if not interior_ok:
            continue
        new = rule.rewrite(g, env, nodes)
        if new is not None:
            new.outputs = list(root.outputs)
            new.name = new.name or root.name
            return new, nodes
    return None


# ---- layernorm ---------------------------------------------------------------------------------


def _last_axis_mean(g: Graph, n: Node) -> bool:
    if not n.attrs.get("keepdim"):
        return False
    axes = n.attrs.get("axes")
    shape = g.shape_of(n.inputs[0])
    if axes == [-1]:
        return True
    return shape is not None and axes == [len(shape) - 1]


def _layernorm_pattern(affine: str) -> P:
    x = Var("x")
    d = P("sub", (x, P("reduce_mean", (x,), _last_axis_mean)), bind="d")
    sq = Alt((P("pow", (d, Lit(2.0))), P("mul", (d, d))))
    var = P("reduce_mean", (sq,), _last_axis_mean)
    norm = P("div", (d, P("sqrt", (P("add", (var, ConstVar("eps"))),))))
    if affine == "none":
        return norm
    scaled = P("mul", (norm, ConstVar("w")))
    return scaled if affine == "w" else P("add", (scaled, ConstVar("b")))


def _layernorm_rewrite(g: Graph, env: Env, nodes: tuple[Node, ...]) -> Node | None:
    eps = g.scalar(env["eps"])
    shape = g.shape_of(env["x"])
    if eps is None:
        return None
    ins = [env["x"]]
    for key in ("w", "b"):
        if key in env:
            if shape is not None and g.const_shape(env[key]) not in ((shape[-1],),):
                return None
            ins.append(env[key])
    return Node("layernorm", ins, [], {"axis": -1, "eps": f32_attr(eps)})


LAYERNORM_RULES = tuple(Rule(f"layernorm_{a}", _layernorm_pattern(a), _layernorm_rewrite)
                        for a in ("wb", "w", "none"))


# ---- rmsnorm -----------------------------------------------------------------------------------


def _rmsnorm_pattern(affine: bool) -> P:
    x = Var("x")
    sq = Alt((P("pow", (x, Lit(2.0))), P("mul", (x, x))))
    ms = P("add", (P("reduce_mean", (sq,), _last_axis_mean), ConstVar("eps")))
    norm = Alt((P("mul", (x, P("rsqrt", (ms,)))), P("div", (x, P("sqrt", (ms,))))))
    return P("mul", (norm, ConstVar("w"))) if affine else norm


def _rmsnorm_rewrite(g: Graph, env: Env, nodes: tuple[Node, ...]) -> Node | None:
    eps = g.scalar(env["eps"])
    shape = g.shape_of(env["x"])
    if eps is None:
        return None
    ins = [env["x"]]
    if "w" in env:
        if shape is not None and g.const_shape(env["w"]) != (shape[-1],):
            return None
        ins.append(env["w"])
    return Node("rmsnorm", ins, [], {"axis": -1, "eps": f32_attr(eps)})


RMSNORM_RULES = (Rule("rmsnorm_w", _rmsnorm_pattern(True), _rmsnorm_rewrite),
                 Rule("rmsnorm", _rmsnorm_pattern(False), _rmsnorm_rewrite))


# ---- gelu --------------------------------------------------------------------------------------


def _gelu_patterns(approximate: str) -> tuple[P, ...]:
    x = Var("x")
    if approximate == "tanh":
        cube = Alt((P("pow", (x, Lit(3.0))), P("mul", (x, P("mul", (x, x)))),
                    P("mul", (P("mul", (x, x)), x))))
        inner = P("mul", (Lit(math.sqrt(2.0 / math.pi)),
                          P("add", (x, P("mul", (Lit(0.044715), cube))))))
        t = P("add", (Lit(1.0), P("tanh", (inner,))))
    else:
        arg = Alt((P("div", (x, Lit(math.sqrt(2.0)))), P("mul", (x, Lit(1.0 / math.sqrt(2.0))))))
        t = P("add", (Lit(1.0), P("erf", (arg,))))
    half = Lit(0.5)
    return (P("mul", (half, P("mul", (x, t)))), P("mul", (P("mul", (half, x)), t)),
            P("mul", (x, P("mul", (half, t)))))


def _gelu_rewrite(approximate: str) -> Callable[[Graph, Env, tuple[Node, ...]], Node | None]:
    def rewrite(g: Graph, env: Env, nodes: tuple[Node, ...]) -> Node | None:
        return Node("gelu", [env["x"]], [], {"approximate": approximate})
    return rewrite


GELU_RULES = tuple(Rule(f"gelu_{a}_{i}", p, _gelu_rewrite(a))
                   for a in ("tanh", "none") for i, p in enumerate(_gelu_patterns(a)))


# ---- linear ------------------------------------------------------------------------------------


def _perm10(g: Graph, n: Node) -> bool:
    return list(n.attrs.get("perm", ())) == [1, 0]


def _gemm_ok(g: Graph, n: Node) -> bool:
    a = n.attrs
    return a["alpha"] == 1.0 and a["trans_a"] == 0 and (len(n.inputs) == 2 or a["beta"] == 1.0)


def _no_bias(g: Graph, n: Node) -> bool:
    return len(n.inputs) == 2


_W = Alt((P("transpose", (ConstVar("w"),), _perm10, bind="w_t"), ConstVar("w")))
_CORE = Alt((
    P("gemm", (Var("x"), _W), _gemm_ok, bind="core"),
    P("matmul", (Var("x"), _W), bind="core"),
    P("linear", (Var("x"), ConstVar("w")), _no_bias, bind="core"),
))


def _linear_rewrite(g: Graph, env: Env, nodes: tuple[Node, ...]) -> Node | None:
    core = next(n for n in nodes if n.outputs[0] == env["core"])
    w = env["w"]
    wshape = g.const_shape(w)
    if len(wshape) != 2:
        return None
    if core.op == "linear":
        layout = core.attrs["w_layout"]
    else:
        stored_out_in = core.op == "gemm" and bool(core.attrs["trans_b"])
        if "w_t" in env:
            stored_out_in = not stored_out_in
        layout = "out_in" if stored_out_in else "in_out"
    out_dim = wshape[0] if layout == "out_in" else wshape[1]
    ins = [env["x"], w]
    if "b" in env:
        if g.const_shape(env["b"]) != (out_dim,):
            return None
        ins.append(env["b"])
    if core.op == "linear" and "b" not in env:
        return None  # already a linear
    return Node("linear", ins, [], {"w_layout": layout})


LINEAR_RULES = (
    Rule("linear_bias_add", P("add", (_CORE, ConstVar("b"))), _linear_rewrite),
    Rule("linear_gemm_bias", P("gemm", (Var("x"), _W, ConstVar("b")), _gemm_ok, bind="core"),
         _linear_rewrite),
    Rule("linear_core", _CORE.options[0], _linear_rewrite),
    Rule("linear_matmul", _CORE.options[1], _linear_rewrite),
)


# ---- passes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fuse:
    """All fusions: LayerNorm, RMSNorm, then GELU, then Linear."""

    name: str = "fuse"
    rules: tuple[tuple[Rule, ...], ...] = field(
        default=(LAYERNORM_RULES, RMSNORM_RULES, GELU_RULES, LINEAR_RULES), repr=False)

    def run(self, graph: Graph) -> Graph:
        for group in self.rules:
            graph = fuse(graph, group)
        return graph


@dataclass(frozen=True)
class FuseLayerNorm(Fuse):
    name: str = "fuse_layernorm"
    rules: tuple[tuple[Rule, ...], ...] = field(default=(LAYERNORM_RULES,), repr=False)


@dataclass(frozen=True)
class FuseGelu(Fuse):
    name: str = "fuse_gelu"
    rules: tuple[tuple[Rule, ...], ...] = field(default=(GELU_RULES,), repr=False)


@dataclass(frozen=True)
class FuseLinear(Fuse):
    name: str = "fuse_linear"
    rules: tuple[tuple[Rule, ...], ...] = field(default=(LINEAR_RULES,), repr=False)

