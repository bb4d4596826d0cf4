"""What the lowering keeps per attention and per packed matrix-vector product while it emits and
places a program (read from the node classes the classify pass wrote)."""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Node


@dataclass
class Matvec:
    """Products with a constant weight sharing one input: one PIM matrix."""

    nodes: list[Node]  # packed members, same input
    input: str
    role: str = ""


@dataclass
class Attn:
    """One attention over a KV cache: its appends, head counts and, once emitted, the step
    writing its new key and value."""

    index: int
    k_concat: Node | None = None
    v_concat: Node | None = None
    n_head: int = 0
    n_kv: int = 0
    d_head: int = 0  # key elements per head
    d_v: int = 0  # value elements per head (multi-head latent attention: not d_head)
    write_step: int = -1
    window: int = 0  # a sliding window of that many tokens (0: the whole context)
    q_ranks: list | None = None  # tensor parallelism: query heads / KV heads of each device
    kv_ranks: list | None = None
