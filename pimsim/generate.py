"""Token generation on the simulated PIM system: timing for every token, numbers if asked.

Processes a prompt one token at a time through the decode step (as PIM-GPT does; the prompt as
one batched step is :mod:`pimsim.prefill`), then generates tokens greedily. Timing comes from
:class:`pimsim.decode.DecodeSimulator`; with a functional executor the real logits are computed
too and the greedy tokens come from them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from pimsim.accounting import TimeAccount
from pimsim.config import HwConfig
from pimsim.decode import DecodeSimulator, TokenTiming
from pimsim.energy import EnergyReport, energy_of
from pimsim.errors import UserError
from pimsim.isa import Program
from pimsim.overlap import OverlappedTokens
from pimsim.report import BREAKDOWN_KEYS, RunReport, TimeTotals
from pimsim.timing import open_cyc_of

__all__ = ["BREAKDOWN_KEYS", "Executor", "TokenEnergy", "check_run", "prompt_ids", "run_generation", "tpot_ms"]


class Executor(Protocol):
    """A functional executor (:class:`pimsim.functional.FlowExecutor`): the logits of the
    decode step of ``token`` at ``pos``."""

    def step(self, token: int, pos: int) -> np.ndarray: ...

    def set_batch(self, batch: int, seq: int) -> None:
        """Compute as sequence ``seq`` of a batch (:mod:`pimsim.batch`)."""


def check_run(prog, prompt_lens: list[int], n_tokens: int, skip_prompt: bool,
              functional) -> None:
    """Refuse a run the program cannot make: an empty prompt, nothing to generate, more decode
    steps than the model's context, or skipped prompt steps in a functional run."""
    if skip_prompt and functional is not None:
        raise ValueError("skip_prompt is for timing runs; functional runs need every prompt step")
    n_ctx = prog.dims["n_ctx"]
    if min(prompt_lens) < 1:
        raise UserError("the prompt has no tokens" if len(prompt_lens) == 1
                        else "a sequence's prompt has no tokens",
                        "give at least one prompt token" if len(prompt_lens) == 1
                        else "give every sequence a prompt token")
    if n_tokens < 1:
        raise UserError(f"{n_tokens} tokens to generate", "generate at least one token")
    p = max(prompt_lens)
    if p + n_tokens - 1 > n_ctx:
        raise UserError(f"prompt ({p}) + generated ({n_tokens}) tokens need "
                        f"{p + n_tokens - 1} decode steps, more than the model's "
                        f"context of {n_ctx}", "generate fewer tokens or shorten the prompt")


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    """A deterministic prompt of ``n`` token ids."""
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


# timing runs prepare each step while the one before runs (pimsim.overlap; tests compare the
# same runs step after step, with this off)
OVERLAP_STEPS = True


def run_generation(
    prog: Program, cfg: HwConfig, *, prompt: Sequence[int], n_tokens: int,
    schedule: str = "serial", fast: bool = True, functional: Executor | None = None,
    progress: Callable[[int], None] | None = None, skip_prompt: bool = False,
    routing=None,
) -> RunReport:
    """Simulate a prompt processed token by token and ``n_tokens`` greedy tokens; returns the
    report (``ttft_ms``: the end of the step that generated the first token; ``tpot_ms``: the
    mean step time of the tokens after it). A prompt as one batched step
    (:mod:`pimsim.prefill`) runs through :func:`pimsim.batch.run_batched`.

    ``skip_prompt`` (timing only) simulates just the steps that generate tokens, at positions
    ``len(prompt) - 1`` onwards: the cost of a step depends on its position, not on the cached
    values, so this measures generation at a long context without simulating the prompt (the
    DRAM state, open rows and refresh phase, starts fresh instead of warmed up).

    A mixture-of-experts program runs only the chosen experts' steps: chosen by the functional
    executor's router, else by ``routing`` (a :class:`pimsim.moe.Routing`: a trace or seeded;
    default seeded uniform); the report's ``routing`` says which.
    """
    from pimsim.expert_parallel import ExpertLoad
    from pimsim.moe import Routing, active_steps, weight_bytes

    moe = bool(prog.moe)
    load = ExpertLoad(prog) if moe else None  # per-device expert load (EP and the TP split)
    if moe and functional is None and routing is None:
        routing = Routing.seeded()
    if moe and functional is not None and (routing is None or routing.kind != "functional"):
        routing = Routing.recorder()  # pass one in to keep its records (a routing trace)
    check_run(prog, [len(prompt)], n_tokens, skip_prompt, functional)
    t_wall = time.perf_counter()
    sim = DecodeSimulator(prog, cfg, schedule=schedule, fast=fast)
    acct = TimeAccount(sim)
    per_token_cyc: list[int] = []
    times = TimeTotals()
    generated: list[int] = []
    tok = int(prompt[0])
    with_energy = cfg.energy is not None
    e_sum = EnergyReport(table=cfg.energy.table) if with_energy else None
    meter = TokenEnergy(sim) if with_energy else None
    per_token_j: list[float] = []
    w_bytes: list[float] = []  # weight bytes read per generated step (one device)
    w_all = 0 if moe else weight_bytes(prog)  # every step runs
    first_end_cyc: int | None = None
    n_total = len(prompt) + n_tokens - 1  # the last generated token needs no decode step
    n_total = max(n_total, len(prompt))
    # a step's timing follows from its position (and the experts chosen) alone: the next one
    # is prepared, and its numbers computed, while the kernel runs this one (pimsim.overlap;
    # the same cycles, counts and joules)
    runner = OverlappedTokens(sim, meter.capture if with_energy else None) \
        if fast and OVERLAP_STEPS else None
    submitted: deque = deque()  # (pos, active) of the steps run and not yet accounted

    def account(done: list) -> None:
        nonlocal first_end_cyc
        for tt, snap in done:
            pos, active = submitted.popleft()
            if pos >= len(prompt) - 1:  # this step produced a generated token
                if first_end_cyc is None:
                    first_end_cyc = tt.end_cyc
                per_token_cyc.append(tt.end_cyc - tt.start_cyc)
                times.add(*acct.split(tt))
                if with_energy:
                    meter.active = active
                    er = meter.end(tt, snap=snap)
                    e_sum.add(er)
                    per_token_j.append(er.total_j)
            if with_energy:
                meter.begin(snap)  # the next step starts where this one ended
            if progress is not None:
                progress(pos)

    if with_energy:
        meter.begin()
    try:
        for pos in range(len(prompt) - 1 if skip_prompt else 0, n_total):
            if functional is not None:  # the numbers first: the router chooses the experts run
                logits = functional.step(tok, pos)
                nxt = int(np.argmax(logits))
            else:
                nxt = 0
            active = None
            if moe:
                choice = routing.choose(prog, pos, getattr(functional, "routing", None))
                active = active_steps(prog, choice)
            if pos >= len(prompt) - 1:  # one device's bytes (with experts: the devices' mean)
                w_bytes.append(load.add(routing.last) if moe else w_all)
            submitted.append((pos, active))
            if runner is not None:
                account(runner.run(pos, active))
            else:
                tt = sim.run_token(pos, active)
                account([(tt, meter.capture() if with_energy else None)])
            if pos + 1 < len(prompt):
                tok = int(prompt[pos + 1])
            else:
                generated.append(nxt)
                tok = nxt
        if runner is not None:
            account(runner.finish())
    finally:
        if runner is not None:
            runner.close()
    ns = cfg.timing.ns
    n_gen = len(per_token_cyc)
    per_token_ms = [ns(c) / 1e6 for c in per_token_cyc]
    ms_tok = float(np.mean(per_token_ms)) if per_token_ms else 0.0
    hits, misses = sim.row_hits, sim.row_misses
    return RunReport(
        model=prog.model, hw=cfg.name, schedule=schedule, refresh=cfg.refresh.enabled,
        functional=functional is not None, prompt_tokens=len(prompt),
        generated_tokens=n_gen, tCK_ps=cfg.tCK_ps, cycles=int(sim.now),
        ms_total=ns(sim.now) / 1e6, ms_per_token=ms_tok,
        tokens_per_s=1000.0 / ms_tok if ms_tok else 0.0, per_token_ms=per_token_ms,
        row_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        **times.report_fields(cfg, n_gen),
        commands=sim.command_counts,
        tokens=generated if functional is not None else [],
        energy=_energy_summary(e_sum, per_token_j, n_gen) if with_energy else {},
        wall_s=time.perf_counter() - t_wall,
        prompt_skipped=skip_prompt,
        ttft_ms=None if skip_prompt else ns(first_end_cyc) / 1e6,
        tpot_ms=tpot_ms(per_token_ms),
        routing=routing.describe() if moe else "",
        weight_bytes_per_step=float(np.mean(w_bytes)) if w_bytes else 0.0,
        expert_load=load.summary() if moe else {},
    )


def tpot_ms(per_token_ms: Sequence[float]) -> float | None:
    """Time per output token: the mean step time of the generated tokens after the first (None
    with fewer than two)."""
    return float(np.mean(per_token_ms[1:])) if len(per_token_ms) > 1 else None


class TokenEnergy:
    """Energy of one device's token: the commands issued, banks open, ASIC work and (for a
    device of a system) its share of the collectives' wire energy, between ``begin`` and
    ``end``."""

    def __init__(self, sim: DecodeSimulator):
        self.sim = sim
        ic = sim.cfg.system.interconnect
        # every device of the group sends and receives its share: the group's wire bits / tp
        self.comm_pj = sum(c.wire_bits for c in sim.steps.comm.values()) * ic.pj_per_bit / \
            max(sim.prog.tp, 1)
        self.active: np.ndarray | None = None  # the steps run this token (pimsim.moe)
        # a plain program's ASIC elements of every step: per op, those that do not depend on
        # the position, and the steps whose elements do (a batched program's follow its
        # vectors: asked step by step)
        self._fixed_elems: dict[str, int] = {}
        self._pos_steps = []
        plain = type(sim.prog).asic_elems is Program.asic_elems
        self._elems_prog = sim.prog if plain else None
        for st in sim.prog.steps if plain else ():
            if st.kind != "asic":
                continue
            # (ops in program order, as the energy table sums them)
            self._fixed_elems[st.op] = self._fixed_elems.get(st.op, 0)
            if st.per_pos_elems:
                self._pos_steps.append(st)
            else:
                self._fixed_elems[st.op] += st.n_elems

    def capture(self) -> tuple[np.ndarray, list[int]]:
        """The device's commands so far and each channel's open-bank cycles up to now."""
        sim = self.sim
        return sim.states.counts.sum(axis=0), open_cyc_of(sim.states.scal, sim.now).tolist()

    def begin(self, snap: tuple[np.ndarray, list[int]] | None = None) -> None:
        """The token starts from the device as it is now (or as ``snap``, a
        :meth:`capture` of the state it starts from)."""
        self.c0, self.o0 = snap if snap is not None else self.capture()

    def end(self, tt: TokenTiming, gap_cyc: int = 0,
            snap: tuple[np.ndarray, list[int]] | None = None) -> EnergyReport:
        """The token's energy: from :meth:`begin` to the device as it is now (or as ``snap``,
        a :meth:`capture` right after the token)."""
        from pimsim.spec.commands import COMMANDS

        sim, prog = self.sim, self.sim.prog
        c1, o1 = snap if snap is not None else self.capture()
        dc = c1 - self.c0
        cmds = {COMMANDS[i].name: int(n) for i, n in enumerate(dc) if n}
        opens = [b - a for b, a in zip(o1, self.o0)]
        elems: dict[str, int] = {}
        if self.active is None and prog is self._elems_prog:
            # every step: the fixed elements, then the position's
            elems.update(self._fixed_elems)
            for st in self._pos_steps:
                elems[st.op] = elems.get(st.op, 0) + prog.asic_elems(st, tt.pos)
        else:
            for st in prog.steps:
                if st.kind == "asic" and (self.active is None or self.active[st.index]):
                    elems[st.op] = elems.get(st.op, 0) + prog.asic_elems(st, tt.pos)
        er = energy_of(sim.cfg, cmds, open_cyc_per_channel=opens,
                       total_cyc=tt.end_cyc - tt.start_cyc + gap_cyc, asic_elems=elems)
        comm_pj = self.comm_pj
        if self.active is not None and sim.steps.comm:  # the collectives that ran
            ic = sim.cfg.system.interconnect
            comm_pj = sum(sim.steps.comm_of(i).wire_bits for i in sim.steps.comm
                          if self.active[i]) * ic.pj_per_bit / max(prog.tp, 1)
        if comm_pj:
            er.by_component["interconnect"] = er.by_component.get("interconnect", 0.0) + \
                comm_pj * 1e-12
            er.total_j += comm_pj * 1e-12
        return er


def _energy_summary(e: EnergyReport, per_token_j: list[float], n_gen: int) -> dict:
    n = max(n_gen, 1)
    return {
        "table": e.table,
        "j_per_token": e.total_j / n,
        "mj_per_token": e.total_j / n * 1e3,
        "per_token_j": per_token_j,
        "by_component": {k: v / n for k, v in e.by_component.items()},
        "by_command": {k: v / n for k, v in sorted(e.by_command.items(), key=lambda x: -x[1])},
    }
