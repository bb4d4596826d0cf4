"""Placement: one pipeline stage's vectors, KV caches, tables and matrices on channels and banks.

PIM-GPT's placement (:mod:`pimsim.isa` layouts): the vectors of every layer striped over all
banks first, then each attention's K cache (row-major) and V cache (column-major) reserved for
the full context (one more pair per sequence in flight on a pipeline), then the gathered tables
and the matrices in program order, each dealt over all channels and banks. A model that does not
fit raises :class:`~compiler.passes.mapping.CapacityError` naming the bytes needed and present.
The stage's steps are renumbered, bound to their layouts, and become its :class:`Program`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.passes import partition
from compiler.passes.decode_step import shape0
from compiler.passes.graph_mapping import GraphMapping, GraphModel
from compiler.passes.lowering_error import LoweringError
from compiler.passes.mapping import CapacityError, MappingError, buffer_limits
from pimsim.cent_ops import cent_part_slots, scratch_rows
from pimsim.isa import KLayout, MatrixLayout, Program, VectorLayout, VLayout


class Placement:
    """The placement half of the lowering (mixed into :class:`compiler.passes.lower._Lowering`)."""

    # ---------------------------------------------------------------- placement
    def place(self, steps, flow, immediates, vec_consts, matrices_w, mat_shapes, mat_order,
              table_of, tables_first, tied, vocab, d_ff, logits, stage=0):
        g, geo, cfg = self.g, self.geo, self.cfg
        tp = self.tp
        other = self._ep_other_steps()
        mine = [i for i, layer in enumerate(self.step_layer)
                if self.stage_of(layer) == stage and i not in other]
        new = {old: k for k, old in enumerate(mine)}
        if other:  # a dependency on another device's expert: on the steps before it
            via: dict[int, set[int]] = {}
            for i in sorted(other):  # (its dependencies come before it)
                via[i] = set().union(*({new[d]} if d in new else via.get(d, set())
                                       for d in steps[i].deps))
            steps = [dataclasses.replace(steps[i], index=new[i], deps=tuple(sorted(set().union(
                *({new[d]} if d in new else via.get(d, set()) for d in steps[i].deps)))))
                for i in mine]
        elif self.pp > 1:  # this stage's steps, renumbered; a dependency on an earlier stage
            steps = [dataclasses.replace(steps[i], index=new[i], deps=tuple(  # is met by its
                new[d] for d in steps[i].deps if d in new)) for i in mine]  # activations
        if self.pp > 1:
            vec_consts = {k: v for k, v in vec_consts.items() if self.stage_of(k) == stage}
            mat_order = [m for m in mat_order if self.stage_of(self.mat_layer[m]) == stage]
            if stage:
                tables_first = []
        attns = [a for a in self.attns if self.stage_of(a.index) == stage]
        if cfg.pim.mac_lanes_per_bank != geo.col_elems:
            raise MappingError(f"{cfg.name}: {cfg.pim.mac_lanes_per_bank} MAC lanes per bank but "
                               f"a column holds {geo.col_elems} elements; the mapping needs them "
                               f"equal")
        n_ctx = self.n_ctx
        tabs = [g.const_shape(t)[0] for t in tables_first if self._gathered_by_position(t)]
        if n_ctx is None:
            n_ctx = tabs[0] if tabs else None
        elif tabs and n_ctx > min(tabs):
            raise LoweringError(f"{self.name}: a context of {n_ctx} tokens, but the model has "
                                f"learned positions for {min(tabs)}",
                                f"give a context of at most {min(tabs)} tokens")
        if n_ctx is None:
            raise LoweringError(f"{self.name}: the context length is unknown",
                                "give the model's n_ctx (its config's max_position_embeddings; "
                                "pimsim compile / run --context N)")
        for a in attns:
            if a.k_concat is None or a.v_concat is None or a.n_head == 0:
                raise LoweringError(f"{self.name}: attention {a.index} lacks a key, a value or a "
                                    f"q.K^T product")
            if a.n_head % a.n_kv:
                raise LoweringError(f"{self.name}: attention {a.index} has {a.n_head} query heads "
                                    f"for {a.n_kv} KV heads")
            bad = [d for d in (a.d_head, a.d_v)
                   if d % geo.banks or d % geo.col_elems or d > geo.row_elems]
            if bad:
                raise MappingError(
                    f"{self.name} on {cfg.name}: the head dimension d_head = {bad[0]} does not "
                    f"split over the config's {geo.banks} banks per channel ([organization] "
                    f"bankgroups x banks_per_group) and {geo.col_elems}-element columns: the "
                    f"KV-cache mapping needs d_head to be a multiple of both and at most a row "
                    f"({geo.row_elems} elements); use a config whose banks per channel and "
                    f"column width divide d_head (the shipped configs have 16 banks per channel)")
        layers = sorted(vec_consts)

        def lname(layer):
            return "embed" if layer < 0 else ("final" if layer >= self.n_layer else f"L{layer}")

        entries, vector_refs, vector_values = [], {}, {}
        fetch: dict[str, tuple[str, ...]] = {}  # param_fetch vector -> the entries it reads
        for layer in layers:
            ename = f"{lname(layer)}.params"
            inside = 0 <= layer < self.n_layer
            groups = [vec_consts[layer]] if inside else [[c] for c in vec_consts[layer]]
            names = []
            for k, group in enumerate(groups):  # a layer's vectors are one entry (one fetch)
                en = ename if inside else f"{lname(layer)}.v{k}"
                off, parts = 0, []
                for c in group:
                    shape = g.const_shape(c)
                    vector_refs[c] = (en, off, tuple(shape))
                    v = g.const_value(c)
                    parts.append(None if v is None else np.asarray(v, np.float32).reshape(-1))
                    off += int(np.prod(shape))
                entries.append((en, off))
                names.append(en)
                vector_values[en] = None if any(p is None for p in parts) else np.concatenate(parts)
            fetch[ename] = tuple(names)
        for st in steps:
            if st.op == "param_fetch":
                st.vectors = fetch.get(st.vectors[0], ()) if st.vectors else ()
        model = GraphModel(
            name=self.name, n_layer=self.n_layer,
            d_model=int(g.const_shape(tables_first[0])[1]) if tables_first else 0,
            n_head=self.attns[0].n_head, n_kv_head=self.attns[0].n_kv,
            d_head=self.attns[0].d_head, d_ff=d_ff, vocab=vocab, n_ctx=int(n_ctx),
            n_weight_elems=sum(o * i for o, i in mat_shapes.values())
            + sum(int(np.prod(g.const_shape(t))) for t in tables_first
                  if table_of[t] not in tied)
            + sum(n for _, n in entries),
            has_weights=all(w is not None for w in matrices_w.values()))
        gb_cols, acc = buffer_limits(cfg, self.attns[0].d_head if self.attns else geo.col_elems)
        acc_attn = cfg.pim.attention_accumulators or acc  # q.K^T and s.V (CENT's: one)
        mp = GraphMapping(model=model, hw=cfg.name, geo=geo, n_stages=self.pp, gb_cols=gb_cols,
                          accumulators=acc, order=cfg.pim.mapping)
        C = geo.channels
        row = 0
        mp.vectors = VectorLayout.build("vectors", entries, row, geo)
        row += mp.vectors.rows_reserved
        for a in attns:
            # CENT's GQA unrolled per query head ([system] gqa = "unrolled"): each query head
            # has its own copy of its group's K/V head, read once per query head
            a_kv = a.n_head if cfg.system.gqa == "unrolled" else a.n_kv
            n_head, n_kv = a.n_head, a_kv
            if tp > 1:  # this device's query heads and the KV heads they read
                try:
                    a.q_ranks = partition.head_ranks(a.n_head, tp, "query", self.attn_one)
                    a.kv_ranks = partition.head_ranks(a_kv, tp, "KV", self.attn_one)
                except ValueError as e:
                    raise LoweringError(f"{self.name}: attention {a.index}: {e}",
                                        "choose --tp dividing the head counts") from None
                n_head, n_kv = len(a.q_ranks[0]), len(a.kv_ranks[0])
            hpc = max(1, min(n_kv, geo.row_elems // a.d_head))
            # a sliding window: a ring of the window's slots (token t in slot t % window)
            slots = min(int(n_ctx), a.window) if a.window else int(n_ctx)
            win = a.window if a.window and a.window < int(n_ctx) else 0
            kl = KLayout(a.index, n_head, a.d_head, slots, hpc, row, geo,
                         heads_per_fill=gb_cols * geo.col_elems // a.d_head, accumulators=acc_attn,
                         n_kv_head=n_kv, window=win)
            row += kl.rows_reserved
            vl = VLayout(a.index, n_head, a.d_v, slots, row, geo, gb_cols, acc_attn,
                         n_kv_head=n_kv, window=win)
            row += vl.rows_reserved
            # with pipeline stages, pp sequences are in flight: a cache for each of them
            row += (self.pp - 1) * (kl.rows_reserved + vl.rows_reserved)
            mp.k_cache.append(kl)
            mp.v_cache.append(vl)
        scratch_row = row
        if any(st.cent for st in steps):  # CENT's vectors in the banks (pimsim.cent_ops)
            row += scratch_rows(max((a.n_head for a in attns), default=1), int(n_ctx), C,
                                geo.row_elems)
        next_row = [row] * C

        def place(name, out_dim, in_dim, at=None):
            parts, af, part_rows = self.mat_cent.get(name, (0, -1, ()))
            pad = ()
            if parts and cfg.system.placement == "cent":  # CENT's padded placement
                split = self.tp_rows.get(name, ("",))[0] == "col"  # its rows over the devices
                pad = cent_part_slots(part_rows, tp if split else 1, C, geo.banks)
                if sum(pad) * C * geo.banks < out_dim:
                    raise MappingError(
                        f"{self.name} on {cfg.name}: {name}'s {out_dim} rows on this device do "
                        f"not fit CENT's placement of its matrices ({sum(pad)} slots per "
                        f"channel): CENT splits each matrix's rows evenly over the devices",
                        'use attention = "master" with placement = "cent", or placement = '
                        '"dense"')
            m = MatrixLayout(name, name.split(".")[-1].rstrip("0123456789"), out_dim, in_dim,
                             geo.row_elems, tuple(next_row) if at is None else at, geo, gb_cols,
                             acc, cfg.pim.mapping, cent_parts=parts, cent_af_part=af,
                             cent_slots=pad)
            if at is None:
                for c in range(C):
                    next_row[c] += m.rows_used(c)
            return m

        tables: dict[str, MatrixLayout] = {}
        for t in tables_first:  # gather-only tables first (position tables), as PIM-GPT's wpe
            tn = table_of[t]
            if tn in tied:
                continue
            r, c = g.const_shape(t)
            tables[tn] = mp.matrices[tn] = place(tn, r, c)
            mp.weights[tn] = g.const_value(t)
        slot_rows: dict[tuple, tuple[int, ...]] = {}  # expert parallelism: a slot's rows
        for mname in mat_order:
            o, i = self.mat_local[mname]
            slot = self.ep_slot.get(mname)
            if slot is not None and slot in slot_rows:  # another device's expert, same rows
                mp.matrices[mname] = place(mname, o, i, at=slot_rows[slot])
            else:
                if slot is not None:
                    slot_rows[slot] = tuple(next_row)
                mp.matrices[mname] = place(mname, o, i)
            mp.weights[mname] = matrices_w[mname]
            if mname in self.tp_rows:
                mp.tp_rows[mname] = self.tp_rows[mname]
        for tn, mname in tied.items():
            tables[tn] = mp.matrices[mname]
        mp.tables = {tn: m.name for tn, m in tables.items()}
        mp.rows_used = list(next_row)
        mp.vector_values = vector_values
        need = max(next_row)
        if need > geo.rows:
            row_bytes = geo.row_elems * geo.elem_bytes
            raise CapacityError(
                f"{self.name} does not fit {cfg.name}: it needs "
                f"{need * row_bytes * geo.banks * C:,} bytes ({need} rows per bank: "
                f"{model.weight_bytes(geo.elem_bytes):,} bytes of weights plus KV cache for "
                f"{n_ctx} tokens and row padding) but {cfg.name} has "
                f"{geo.rows * row_bytes * geo.banks * C:,} bytes"
                + (f" per device ({tp} x {self.pp} devices)" if tp * self.pp > 1 else "")
                + "; use more devices (--devices N), more channels or larger banks")
        kv = list(zip(mp.k_cache, mp.v_cache))
        kv_of = {kl.layer: (kl, vl) for kl, vl in kv}
        for st in steps:
            if st.matrix is not None:
                st.matrix = mp.matrices[st.matrix]
            if st.kv is not None:
                st.kv = kv_of[st.kv[0]]
        # the ASIC adds the partial sums RD_MAC hands out: out x n_reads of the matrix's layout
        # (its fills under pim-gpt's order, 1 under the reuse order)
        renum = new if self.pp > 1 or other else None
        for i, mname in self.reduce_of.items():
            k = i if renum is None else renum.get(i)
            if k is not None:
                m = mp.matrices[mname]
                steps[k].n_elems = m.out_dim * m.n_reads
        for f in flow:
            if f.op in ("k_write", "v_write"):
                f.step = self.attns[f.attrs["attn"]].write_step
        prog = Program(
            model=self.name, hw=cfg.name, geo=geo,
            dims=dict(n_layer=model.n_layer, d_model=model.d_model, n_head=model.n_head,
                      n_kv_head=model.n_kv_head, d_head=model.d_head, d_ff=model.d_ff,
                      vocab=vocab, n_ctx=int(n_ctx)),
            steps=steps, vec_layout=mp.vectors,
            matrices={k: v for k, v in mp.matrices.items() if k not in tables},
            kv_layouts=kv, flow=flow,
            inputs={"token": self.token, "position": self.position}, logits=logits,
            immediates=immediates, vector_refs=vector_refs, tables=tables,
            position_tables=tuple(table_of[t] for t in tables_first
                                  if self._gathered_by_position(t)),
            tp=tp, stage=stage, n_stages=self.pp, tp_rows=dict(mp.tp_rows),
            tp_heads={a.index: (a.q_ranks, a.kv_ranks) for a in attns if a.q_ranks},
            send_elems=self.crossing_elems(stage) if stage < self.pp - 1 else 0,
            moe=[dict(m) for m in self.moe], scratch_row=scratch_row, ep=self.ep)
        mp.tp, mp.stage = tp, stage
        return prog, mp

    def _ep_other_steps(self) -> set[int]:
        """Expert parallelism (:mod:`pimsim.expert_parallel`): the steps of the experts other
        devices hold (expert ``e >= E / ep``). A device's program has the steps of its own
        experts, one per local slot; another device's expert runs the same GEMVs at the same
        rows (its matrices stay in the program, aliased, for the functional executor)."""
        if self.ep <= 1:
            return set()
        return {i for i, st in enumerate(self.steps) if st.expert is not None and
                st.expert[1] >= int(self.moe[st.expert[0]]["experts"]) // self.ep}

    def place_stages(self) -> list[tuple[Program, GraphMapping]]:
        """Every pipeline stage placed: one (program, mapping) each."""
        return [self.place(self.steps, self.flow, self.immediates, self.vec_consts,
                           self.matrices_w, self.mat_shapes, self.mat_order, self.table_of,
                           self.tables_first, self.tied, self.vocab, self.d_ff, self.logits, s)
                for s in range(self.pp)]

    def crossing_elems(self, stage: int) -> int:
        """Elements of the values a stage hands to the next (made at or before it, used
        after it): the residual stream, and whatever else crosses the cut."""
        g, seen, n = self.g, set(), 0
        made = {o: self.stage_of(self.layer_of[id(nd)]) for nd in g.nodes for o in nd.outputs}
        for nd in g.nodes:
            if self.stage_of(self.layer_of[id(nd)]) <= stage:
                continue
            for i in nd.inputs:
                if i in made and made[i] <= stage and i not in seen:
                    seen.add(i)
                    n += int(np.prod(shape0(self.g, i)))
        return n

    def _gathered_by_position(self, table: str) -> bool:
        for n in self.g.nodes:
            if n.op == "gather" and n.inputs[0] == table and n.inputs[1] in self.pos_only:
                return True
        return False


@dataclass(frozen=True)
class Place:
    """The lowering's placement: each pipeline stage's vectors, caches, tables and matrices on
    channels and banks, and its :class:`Program` (``low.placed``)."""

    name: str = "place"

    def run(self, low):
        low.placed = low.place_stages()
        return low
