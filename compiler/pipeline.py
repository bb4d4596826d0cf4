"""The whole lowering, one screen: model -> IR -> graph passes -> lowering -> mapping + Program.

    import          ONNX graph / torch.export program -> IR          Import (compiler.frontends)
    shape_inference every value gets a shape                          ShapeInference
    fuse            LayerNorm / GELU decompositions, matmul+bias      Fuse
    fold            constant subgraphs evaluated, only the logits     Fold
    classify        each node's class (cache append, attention,       Classify
                    table read, matrix-vector product and role, ASIC
                    op, wiring) and layer: the only place decided
    -- per hardware config (compiler.passes.lower), over its state --
    partition       the classes read; pipeline stages; tensor-        Partition
                    parallel split of each product (during emit)
    emit            the Program's steps and dataflow                  Emit
    place           each stage on channels and banks, its Program     Place

:data:`GRAPH_PASSES` is the list from shape inference to classify, :data:`LOWERING_PASSES` from
partition to place (:data:`PASSES` all of them); each pass is a small named frozen dataclass
with ``run``. :func:`prepare` runs the import and the graph passes (once per model),
:func:`lower` the lowering (per hardware config); :func:`compile_model` both.
With the environment variable ``PIMSIM_PRINT_IR=1`` every stage's result is printed to stderr:
the IR after each graph pass, the placement (``GraphMapping.pretty()``) and the program at
position 0 after the lowering.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from compiler.frontends import import_graph
from compiler.ir import Graph
from compiler.passes.classify import Classify
from compiler.passes.fold import Fold
from compiler.passes.fuse import Fuse
from compiler.passes.lower import LOWERING_PASSES, LoweringError, lower_graph, lower_graph_system
from compiler.passes.shape_inference import ShapeInference
from pimsim.config import HwConfig
from pimsim.errors import UserError
from pimsim.isa import Program


@dataclass
class Compiled:
    """Everything the compiler produced for one model on one hardware config: the model's
    dimensions (a :class:`~compiler.passes.graph_mapping.GraphModel`), where everything lives
    (a :class:`~compiler.passes.graph_mapping.GraphMapping`) and the program."""

    spec: Any
    mapping: Any
    program: Program
    seconds: dict[str, float] = field(default_factory=dict)
    # a system of tp x pp devices: one (program, mapping) per pipeline stage (the first is
    # ``program`` / ``mapping``); empty for one device
    stages: list[Program] = field(default_factory=list)
    stage_mappings: list = field(default_factory=list)

    @property
    def programs(self) -> list[Program]:
        return self.stages or [self.program]

    def summary(self, pos: int | None = None) -> str:
        mp, prog, g = self.mapping, self.program, self.mapping.geo
        pos = min(mp.spec.n_ctx - 1, 511) if pos is None else pos
        per_ch = mp.bytes_per_channel()
        hit = expected_row_hit_rate(prog, pos)
        lines = [
            f"{mp.spec.name} -> {mp.hw}: {mp.spec.n_layer} layers, d_model {mp.spec.d_model}, "
            f"{mp.spec.n_head} heads x {mp.spec.d_head}"
            + (f" ({mp.spec.n_kv_head} KV heads)" if getattr(mp.spec, "n_kv_head", mp.spec.n_head)
               != mp.spec.n_head else "") + f", d_ff {mp.spec.d_ff}, vocab "
            f"{mp.spec.vocab}, context {mp.spec.n_ctx}",
            f"  weights placed      {mp.placed_weight_bytes():,} bytes (bf16), model "
            f"{mp.spec.weight_bytes(g.elem_bytes):,}",
            f"  bytes per channel   {min(per_ch):,} .. {max(per_ch):,} (rows reserved incl. "
            f"KV cache for {mp.spec.n_ctx} tokens and row padding)",
            f"  rows used           {min(mp.rows_used)} .. {max(mp.rows_used)} of {g.rows} per bank",
            f"  expected row hits   {hit:.2%} (column commands per row opened, token at pos {pos})",
            f"  instructions/token  {prog.instruction_count(pos):,} at pos {pos} "
            f"({sum(1 for s in prog.steps if s.kind == 'pim')} PIM steps, "
            f"{sum(1 for s in prog.steps if s.kind == 'asic')} ASIC steps)",
        ]
        if self.stages:
            tp = prog.tp
            n_comm = sum(1 for s in prog.steps if s.kind == "comm")
            lines[1:1] = [f"  system              {tp * len(self.stages)} devices: tensor-parallel "
                          f"groups of {tp} x {len(self.stages)} pipeline stage(s); per device "
                          f"(the figures below: stage 0's device 0)"]
            lines.append(f"  collectives/token   {n_comm} per device of stage 0 (all-reduce of "
                         f"row-parallel partial sums, gather of the logits)")
            if prog.ep > 1 and prog.moe:
                n_exp = prog.moe[0]["experts"]
                lines.append(f"  experts             whole, expert parallelism over {prog.ep} "
                             f"devices: expert e of {n_exp} on device e // {n_exp // prog.ep}, "
                             f"one all-reduce per MoE layer")
            for s, (p, m) in enumerate(zip(self.stages, self.stage_mappings)):
                layers = sorted({st.layer for st in p.steps if st.layer >= 0})
                span = f"layers {layers[0]}..{layers[-1]}" if layers else "no layers"
                lines.append(f"  stage {s}: {span}, rows used {max(m.rows_used)} of {g.rows}, "
                             f"hands on {p.send_elems} elements")
        if self.seconds:
            lines.append("  compile time        " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def expected_row_hit_rate(prog: Program, pos: int) -> float:
    """Static estimate: every PIM item's first column misses when it needs a different row than
    the previous item of its channel (and bank), every other column hits."""
    from pimsim.spec.commands import COMMANDS
    hits = misses = 0
    for st in prog.steps:
        if st.kind != "pim":
            continue
        for arr in prog.pim_items(st, pos):
            open_rows: dict[int, int] = {}
            for cmd, bank, row, count, _ in arr.tolist():
                if not COMMANDS[cmd].column:
                    continue
                key = bank
                if open_rows.get(key) == row or (bank >= 0 and open_rows.get(-1) == row):
                    hits += count
                else:
                    misses += 1
                    hits += count - 1
                if bank < 0:
                    open_rows = {-1: row}
                else:
                    open_rows.pop(-1, None)
                    open_rows[bank] = row
    return hits / (hits + misses) if hits + misses else 0.0


def _ours(source: Any) -> bool:
    """A model built by pimsim itself (a preset's module, an IR graph made in code)."""
    return isinstance(source, Graph) or type(source).__module__.startswith("workloads.")


@dataclass(frozen=True)
class Import:
    """The front end: a model (ONNX, torch.export, a module with ``decode_step``, an IR graph)
    -> IR graph (:func:`compiler.frontends.import_graph`)."""

    name: str = "import"

    def run(self, source: Any) -> Graph:
        return import_graph(source)


GRAPH_PASSES = (ShapeInference(), Fuse(), Fold(), Classify())
# then, per hardware config over the lowering's state, LOWERING_PASSES =
# (Partition(), Emit(), Place()), defined beside that state in compiler.passes.lower
PASSES = (Import(), *GRAPH_PASSES, *LOWERING_PASSES)  # the whole lowering, in order


def print_ir_wanted() -> bool:
    """Whether ``PIMSIM_PRINT_IR`` asks for every stage's result on stderr."""
    return os.environ.get("PIMSIM_PRINT_IR", "") not in ("", "0")


def _show(stage: str, text: str) -> None:
    print(f"==== after {stage} ====\n{text.rstrip()}", file=sys.stderr)


@dataclass
class Prepared:
    """A model imported and through the graph passes, ready to lower onto any hardware: the
    expensive part of a compile (torch.export, import, passes), done once per model."""

    graph: Graph
    name: str
    n_ctx: int | None  # the context the source's config (or ONNX metadata) gives
    ours: bool  # a model of pimsim's own: a failure to lower is a pimsim bug
    seconds: dict[str, float] = field(default_factory=dict)


def prepare(source: Any, *, name: str = "model") -> Prepared:
    """Import ``source`` and run the graph passes (:data:`GRAPH_PASSES`)."""
    t = {}
    show = print_ir_wanted()
    t0 = time.perf_counter()
    graph = Import().run(source)
    graph.name = name
    t["import"] = time.perf_counter() - t0
    if show:
        _show("import", graph.pretty())
    t0 = time.perf_counter()
    ours = _ours(source)
    try:
        for p in GRAPH_PASSES:
            graph = p.run(graph)
            if show:
                _show(p.name, graph.pretty())
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        if ours:
            raise  # a preset that does not go through the passes: a pimsim bug
        from compiler.passes.lower import LoweringError

        raise LoweringError(
            f"{name}: the model's graph cannot be lowered to a decoder ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]})") from None
    t["passes"] = time.perf_counter() - t0
    return Prepared(graph, name, _context(source), ours, t)


def compile_model(source: Any, cfg: HwConfig, *, name: str = "model", tp: int | None = None,
                  pp: int | None = None, n_ctx: int | None = None) -> Compiled:
    """Run the whole pipeline; raises a clear error for unsupported ops or a model too large.

    The graph is lowered op by op (:mod:`compiler.passes.lower`), any decoder, one device or a
    system: ``tp`` x ``pp`` devices (tensor-parallel group size, pipeline stages; default: the
    config's ``[system]``); ``n_ctx``: the context the KV caches are reserved for, instead of
    the model's own (a model with learned positions cannot go past its table)."""
    return lower(prepare(source, name=name), cfg, tp=tp, pp=pp, n_ctx=n_ctx)


def lower(prep: Prepared, cfg: HwConfig, *, tp: int | None = None, pp: int | None = None,
          n_ctx: int | None = None) -> Compiled:
    """Lower a model from :func:`prepare` onto ``cfg`` (see :func:`compile_model`); the prepared
    graph is not changed, so one may be lowered onto many configs."""
    tp = cfg.system.tp if tp is None else tp
    pp = cfg.system.pp if pp is None else pp
    t = dict(prep.seconds)
    t0 = time.perf_counter()
    c = _compile_graph(prep.graph, cfg, prep.name, n_ctx or prep.n_ctx, t, t0, ours=prep.ours,
                       tp=tp, pp=pp)
    if print_ir_wanted():
        _show(f"place ({cfg.name})", c.mapping.pretty())
        _show(f"emit ({cfg.name})", c.program.to_text(0))
    return c


def _context(source: Any) -> int | None:
    """The context length a module's config gives, or an ONNX file's ``n_ctx`` metadata, or
    the ``config.json`` beside the file (optimum's export directory), or a static-cache
    program's cache length (graph lowering needs it to reserve the KV cache)."""
    import json
    import os

    if isinstance(source, (str, os.PathLike)) or type(source).__module__.startswith("onnx"):
        try:
            import onnx

            mp = source if not isinstance(source, (str, os.PathLike)) else \
                onnx.load(os.fspath(source), load_external_data=False)
            meta = {p.key: p.value for p in mp.metadata_props}
            for key in ("n_ctx", "max_position_embeddings"):
                if meta.get(key, "").isdigit():
                    return int(meta[key])
            cfg_path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(source))),
                                    "config.json") if isinstance(source, (str, os.PathLike)) \
                else None
            if cfg_path and os.path.isfile(cfg_path):
                with open(cfg_path) as f:
                    hf = json.load(f)
                hf = hf.get("text_config", hf) if isinstance(hf, dict) else {}
                for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
                    v = hf.get(key)
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                        return v
        except Exception:  # noqa: BLE001 - unreadable here: the front end reports it
            return None
        return None
    if type(source).__name__ == "ExportedProgram":  # a static cache: its own length
        from compiler.frontends.torch_kv_cache import analyse

        try:
            sc = analyse(source)
        except Exception:  # noqa: BLE001 - the front end reports it
            return None
        if sc is not None and sc.max_len:
            return sc.max_len
        if sc is not None:  # a dynamic past: the longest the export allows, plus the new token
            uppers = [source.range_constraints[s].upper for s in sc.past_symbols
                      if s in source.range_constraints]
            finite = [int(u) for u in uppers if getattr(u, "is_Integer", False)]
            return min(finite) + 1 if finite and min(finite) < 1 << 30 else None
        return None
    for attr in ("cfg", "config"):
        c = getattr(source, attr, None)
        for n in ("n_ctx", "max_position_embeddings", "n_positions"):
            v = getattr(c, n, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _compile_graph(graph: Graph, cfg: HwConfig, name: str, n_ctx: int | None, t: dict,
                   t0: float, ours: bool = False, tp: int = 1, pp: int = 1) -> Compiled:
    from compiler.passes.mapping import CapacityError, MappingError

    try:
        if tp * pp > 1:
            stages = lower_graph_system(graph, cfg, name=name, n_ctx=n_ctx, tp=tp, pp=pp,
                                        attention=cfg.system.attention,
                                        ep=cfg.system.ep)
            for _, mp in stages:
                mp.check()
            t["lower+place"] = time.perf_counter() - t0
            return Compiled(stages[0][1].model, stages[0][1], stages[0][0], t,
                            stages=[p for p, _ in stages], stage_mappings=[m for _, m in stages])
        program, mapping = lower_graph(graph, cfg, name=name, n_ctx=n_ctx)
    except (UserError, CapacityError, MappingError):
        raise
    except Exception as e:  # noqa: BLE001
        if ours:
            raise  # a model of our own that does not lower: a pimsim bug
        raise LoweringError(f"{name}: the graph cannot be lowered ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]})") from None
    mapping.check()
    t["lower+place"] = time.perf_counter() - t0
    return Compiled(mapping.model, mapping, program, t)


def run_passes(graph: Any, passes: Any = None) -> Any:
    """Run ``passes`` (default :data:`GRAPH_PASSES`) over an imported graph, in order."""
    for p in GRAPH_PASSES if passes is None else passes:
        graph = p.run(graph)
    return graph
