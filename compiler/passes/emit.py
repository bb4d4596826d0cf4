"""Instruction emission: the decode step of a mapped decoder as a :class:`pimsim.isa.Program`.

Every weight matrix-vector product and both attention products become PIM steps (per-channel
instruction streams, instantiated per position by the ISA); LayerNorm, softmax, GELU, residual
adds, partial-sum reduction (with the bias), the embedding add and the final argmax become ASIC
steps. Dependencies are explicit, so an executor may overlap independent work (e.g. fetching the
next layer's LayerNorm parameters while the ASIC is busy).

PIM-GPT's path only (``compile_model(..., lowering="pim-gpt")``); the default graph lowering
(:mod:`compiler.passes.lower`) emits the same steps and instructions, its steps named after
the graph's ops.
"""

from __future__ import annotations

from compiler.passes.mapping import Mapping
from pimsim.isa import Program, Step


def emit_program(mp: Mapping) -> Program:
    s = mp.spec
    prog = Program(
        model=s.name, hw=mp.hw, geo=mp.geo,
        dims=dict(n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head, d_head=s.d_head,
                  d_ff=s.d_ff, vocab=s.vocab, n_ctx=s.n_ctx),
        vec_layout=mp.vectors, wpe_layout=mp.wpe, lm_head=mp.lm_head,
        matrices=dict(mp.matrices), kv_layouts=list(zip(mp.k_cache, mp.v_cache)), eps=s.eps,
    )
    steps = prog.steps

    def add(name: str, op: str, layer: int, kind: str, deps: list[int], **kw) -> int:
        steps.append(Step(len(steps), name, op, layer, kind, tuple(sorted(set(deps))), **kw))
        return len(steps) - 1

    d, a, f = s.d_model, s.d_attn, s.d_ff
    emb = add("embed.read", "embedding", -1, "pim", [], vectors=("wte", "wpe"))
    h = add("embed.add", "embedding", -1, "asic", [emb], n_elems=d)
    for i in range(s.n_layer):
        L = f"L{i}"
        kl, vl = mp.k_cache[i], mp.v_cache[i]
        qkv_m = mp.matrices[f"{L}.qkv"]
        out_m = mp.matrices[f"{L}.out_proj"]
        up_m = mp.matrices[f"{L}.ffn_up"]
        down_m = mp.matrices[f"{L}.ffn_down"]
        par = add(f"{L}.params", "param_fetch", i, "pim", [], vectors=(f"{L}.params",))
        ln1 = add(f"{L}.ln1", "layernorm", i, "asic", [h, par], n_elems=d)
        qkv = add(f"{L}.qkv", "qkv", i, "pim", [ln1], matrix=qkv_m)
        qkv_r = add(f"{L}.qkv.reduce", "reduction", i, "asic", [qkv],
                    n_elems=3 * a * qkv_m.n_reads)
        kvw = add(f"{L}.kv_write", "kv_write", i, "pim", [qkv_r], kv=(kl, vl))
        sc = add(f"{L}.attn_score", "attn_score", i, "pim", [qkv_r, kvw], kv=(kl, vl))
        sm = add(f"{L}.softmax", "softmax", i, "asic", [sc], per_pos_elems=s.n_head)
        av = add(f"{L}.attn_value", "attn_value", i, "pim", [sm, kvw], kv=(kl, vl))
        out = add(f"{L}.out_proj", "out_proj", i, "pim", [av], matrix=out_m)
        out_r = add(f"{L}.out_proj.reduce", "reduction", i, "asic", [out],
                    n_elems=d * out_m.n_reads)
        r1 = add(f"{L}.residual1", "residual", i, "asic", [out_r, h], n_elems=d)
        ln2 = add(f"{L}.ln2", "layernorm", i, "asic", [r1, par], n_elems=d)
        up = add(f"{L}.ffn_up", "ffn_up", i, "pim", [ln2], matrix=up_m)
        up_r = add(f"{L}.ffn_up.reduce", "reduction", i, "asic", [up], n_elems=f * up_m.n_reads)
        ge = add(f"{L}.gelu", "gelu", i, "asic", [up_r], n_elems=f)
        dn = add(f"{L}.ffn_down", "ffn_down", i, "pim", [ge], matrix=down_m)
        dn_r = add(f"{L}.ffn_down.reduce", "reduction", i, "asic", [dn],
                   n_elems=d * down_m.n_reads)
        h = add(f"{L}.residual2", "residual", i, "asic", [dn_r, r1], n_elems=d)
    par = add("lnf.params", "param_fetch", -1, "pim", [], vectors=("lnf_w", "lnf_b"))
    lnf = add("lnf", "layernorm", -1, "asic", [h, par], n_elems=d)
    lm = add("lm_head", "lm_head", -1, "pim", [lnf], matrix=mp.lm_head)
    lm_r = add("lm_head.reduce", "reduction", -1, "asic", [lm],
               n_elems=s.vocab * mp.lm_head.n_reads)
    add("argmax", "argmax", -1, "asic", [lm_r], n_elems=s.vocab)
    return prog
