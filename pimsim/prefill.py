"""Prefill on the PIM device: the prompt's tokens processed before the first generated token.

Two modes (:data:`PREFILL_MODES`):

* ``"token-by-token"`` (the default, as PIM-GPT and CENT do): the prompt's ``P`` tokens are
  ``P`` decode steps at positions ``0 .. P-1``, one after the other; the step of the last
  prompt token generates the first token;
* ``"batched"``: the prompt is ONE batched step of ``P`` vectors
  (:func:`pimsim.batch.prefill_program`, run by :func:`pimsim.batch.run_batched`, for one
  sequence or several): the prompt's tokens at positions ``0 .. P-1`` sharing their
  sequence's KV region. The weight matrix-vector products share every row activation as a
  batched decode step's do; token ``p`` writes its K/V at position ``p`` and attends over
  ``0 .. p`` (causal attention among the prompt's tokens); the ASIC works on ``P`` vectors
  (softmax over ``p + 1`` scores for token ``p``). The logits of the last prompt token give
  the first generated token. A prompt of one token is the same single decode step either way.

The step or steps up to the first generated token give the time to first token (TTFT, from
the start of the run to the end of that step); the decode steps after it give the time per
output token (TPOT). The DRAM state (open rows, refresh phase) carries from the prefill step
into the decode steps: one :class:`~pimsim.decode.DecodeSimulator` runs both
(:func:`use_program`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pimsim.decode import DecodeSimulator, StepTable, StreamBuilder
from pimsim.errors import UserError
from pimsim.isa import Program

PREFILL_MODES = ("token-by-token", "batched")
DEFAULT_PREFILL = "token-by-token"


def check_prefill(prefill: object) -> str:
    """``prefill`` as one of :data:`PREFILL_MODES`, else a UserError."""
    if prefill not in PREFILL_MODES:
        raise UserError(f"prefill {prefill!r}: not a prefill mode",
                        f"give one of {', '.join(PREFILL_MODES)}")
    return str(prefill)


def prefill_positions(prompt_len: int, sequences: int = 1) -> tuple[int, ...]:
    """The positions of :func:`prefill_program`'s vectors: ``0 .. prompt_len-1`` per sequence."""
    return tuple(p for _ in range(sequences) for p in range(prompt_len))


def use_program(sim: DecodeSimulator, prog: Program) -> None:
    """Run ``prog``'s steps on ``sim`` from now on, keeping its DRAM state (open rows, refresh,
    the clock): the decode steps after a prefill step. ``prog`` must place its data on the
    same device geometry."""
    if prog.geo != sim.prog.geo:
        raise ValueError(f"{prog.model}: another device geometry than the simulated program's")
    sim.prog = prog
    sim.steps = StepTable(prog, sim.cfg)
    sim.streams = StreamBuilder(prog, compact=sim.fast)


def prefill_functional(executors: Sequence, prompts: Sequence[Sequence[int]],
                       decode_batch: int, routes: dict | None = None) -> list[int]:
    """The numbers of the prefill step of ``prompts`` (one executor per sequence): executor
    ``s`` computes its prompt's tokens in order, each as vector ``s x P + p`` of the prefill
    batch (its accumulators read where the batched loop order reads them), writing its K/V at
    ``p`` and attending over ``0 .. p``; then it is set back to its place in the decode batch of
    ``decode_batch`` sequences. Returns each sequence's first generated token (the argmax of its
    last prompt token's logits). ``routes`` (a mixture of experts): filled with each MoE
    layer's experts per vector, in the prefill batch's order (the routers' choices)."""
    import numpy as np

    n = len(prompts[0])
    vectors = n * len(prompts)
    first = []
    for s, (fx, prompt) in enumerate(zip(executors, prompts)):
        logits = None
        for p, tok in enumerate(prompt):
            fx.set_batch(vectors, s * n + p)
            logits = fx.step(int(tok), p)
            if routes is not None:
                for m, toks in fx.routing.items():
                    routes.setdefault(m, []).extend(toks)
        fx.set_batch(decode_batch, s if decode_batch > 1 else 0)
        first.append(int(np.argmax(logits)))
    return first
