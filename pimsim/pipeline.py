"""Token generation on a system of PIM devices: tensor-parallel groups in pipeline stages.

Each stage is a group of ``tp`` devices that run the same program on their shares of the
weights (all alike: one device's DRAM and ASIC are simulated, command by command, and stands
for the group; the collectives between them are steps of its program, timed on the
interconnect, :mod:`pimsim.system`). With ``pp`` stages, ``pp`` sequences are in flight (the
same prompt, so the same tokens): stage ``s`` takes the jobs (token, sequence) in order; a
job starts when the stage is free and its activations have arrived from stage ``s - 1`` (or,
at stage 0, when the sequence's previous token has come back from the last stage). Every job is
simulated on its stage's device, so DRAM state (open rows, refresh, idle time between jobs)
carries through.

Batched decode on a pipeline (``run_system(..., batch_prompts=...)``): each of the ``pp``
jobs in flight is a micro-batch of ``B`` sequences (one prompt length, the same positions)
instead of one sequence; a job is the stage's batched step (:class:`pimsim.batch.BatchedProgram`:
its weight reads shared by the ``B`` vectors, each sequence its own KV region; a mixture of
experts' experts run for the sequences routed to them); the stage sends ``B`` activation
vectors, and ``B`` sampled tokens come back. Latency (``ms_per_token``) is micro-batch 0's
step, stage 0 to the last; throughput counts the ``pp x B`` sequences. Batch 1 is the
unbatched pipeline.

Sequences in flight (``run_system(..., in_flight=True)``, vLLM's meaning of a batch,
``--max-num-seqs``): the ``N`` sequences of ``batch_prompts`` are all the sequences in flight,
split into ``pp`` micro-batches as evenly as possible (:func:`micro_batches`: sizes differing
by at most 1, the larger first; fewer sequences than stages, one micro-batch of 1 each), each
micro-batch a job of its own size (its batched step, its sends and its sampled tokens). ``N``
a multiple of ``pp`` is the run of micro-batches of ``N / pp`` above. A round (every
micro-batch one token, ``N`` tokens) is ``extra["batch"]["round_ms"]``; the system's
throughput ``N`` over it.

Several stages on one device (``[system] stages_per_device`` > 1, CENT's pipeline): each runs
on its share of the device's channels, and all of them on the device's one ASIC
(:class:`DeviceAsics`): a stage's ASIC step waits while another stage's step holds it.

Reported: per-token latency of one sequence (``ms_per_token``), the whole system's throughput
(``throughput_tokens_per_s``: tokens of all sequences per second), each stage's utilisation
(busy time over the run) and the bubble (one minus their mean), energy of all devices plus the
interconnect, and average power. With one stage this is :func:`pimsim.generate.run_generation`
with the system's figures added (one device and one stage: the same report, to the cycle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from pimsim.accounting import TimeAccount
from pimsim.config import HwConfig
from pimsim.decode import DecodeSimulator
from pimsim.energy import EnergyReport
from pimsim.errors import UserError
from pimsim.generate import TokenEnergy, _energy_summary, run_generation, tpot_ms
from pimsim.isa import Program
from pimsim.report import BREAKDOWN_KEYS, RunReport, TimeTotals
from pimsim.system import TOKEN_BYTES, CommCost, collective


def stage_send(cfg: HwConfig, prog: Program, vectors: int = 1) -> CommCost:
    """A stage's activations to the next stage (every device of the group sends to its
    partner over its own port, in parallel): the time of one such send, its wire bits.
    ``vectors``: a micro-batch's activation vectors, in one send."""
    return collective(cfg.system.interconnect, "send", 2,
                      vectors * prog.send_elems * prog.geo.elem_bytes)


def token_return_cyc(cfg: HwConfig, tokens: int = 1) -> int:
    """The sampled token's way back to stage 0: the host's sampling time (``[system]
    host_sample_ns``, CENT's top-k on the host CPU) and the send. ``tokens``: a micro-batch's
    tokens, in one send after one sampling call ([assumed]: the host samples the micro-batch's
    rows in the time of one)."""
    c = collective(cfg.system.interconnect, "send", 2, tokens * TOKEN_BYTES)
    return CommCost(c.ns + cfg.system.host_sample_ns, c.wire_bits).cycles(cfg.tCK_ps)


def micro_batches(sequences: int, pp: int) -> list[int]:
    """``sequences`` in flight on ``pp`` stages as micro-batches, as evenly as possible: sizes
    differing by at most 1, the larger first (64 over 59: 5 of 2, then 54 of 1); fewer
    sequences than stages: one micro-batch of 1 each."""
    if sequences < 1 or pp < 1:
        raise UserError(f"{sequences} sequences in flight on {pp} pipeline stages",
                        "give at least one sequence and one stage")
    q, r = divmod(sequences, pp)
    return [q + 1] * r + [q] * (pp - r) if q else [1] * sequences


def check_system(programs: Sequence[Program], cfg: HwConfig) -> None:
    """A UserError when ``programs`` were compiled for another tensor / pipeline parallelism
    than ``cfg``'s ``[system]`` (tp from the programs, pp their number)."""
    if not programs:
        raise UserError("no stage programs to simulate",
                        "give the programs of a compiled model (one per pipeline stage)")
    tp, pp = programs[0].tp, len(programs)
    sy = cfg.system
    if (tp, pp) != (sy.tp, sy.pp):
        raise UserError(
            f"the program was compiled for tp {tp} x pp {pp}, but the system of {cfg.name} is "
            f"tp {sy.tp} x pp {sy.pp}",
            "compile for the config you simulate (compile_model(model, cfg) with the same cfg), "
            "or give both the same tp / pp")
    if programs[0].ep != sy.ep:
        raise UserError(
            f"the program was compiled with expert parallelism {programs[0].ep}, but the system "
            f"of {cfg.name} has {sy.ep}",
            "compile for the config you simulate (the same --ep / --enable-expert-parallel)")


def run_system(programs: Sequence[Program], cfg: HwConfig, *, prompt: Sequence[int],
               n_tokens: int, schedule: str = "serial", fast: bool = True, functional=None,
               progress: Callable[[int], None] | None = None,
               skip_prompt: bool = False,
               batch_prompts: Sequence[Sequence[int]] | None = None,
               prefill: str = "token-by-token", batch_reuse=None, routing=None,
               in_flight: bool = False) -> RunReport:
    """Simulate a prompt and ``n_tokens`` greedy tokens on the system the programs describe
    (one program per pipeline stage), which must be ``cfg``'s ``[system]``
    (:func:`check_system`).

    ``prefill`` (:mod:`pimsim.prefill`): the prompt token by token (``"token-by-token"``, one
    decode step per token) or as one batched step (``"batched"``; a system of one stage only).
    The report has the time to first token (``ttft_ms``) and per output token (``tpot_ms``).

    ``batch_prompts``: batched decode (:mod:`pimsim.batch`) of one sequence per prompt
    (``prompt`` is then unused, ``functional`` one executor per sequence); on a pipeline
    (timing only, prompts of one length) each of the ``pp`` jobs in flight is a micro-batch
    of these sequences (the module's docstring); with ``in_flight``, these are all the
    sequences in flight, split into ``pp`` micro-batches (:func:`micro_batches`; one stage:
    the batch itself, so the same run). ``batch_reuse``: a
    :class:`pimsim.batch.BatchedSteps` of the program for the batched run (``run_batched``'s
    ``reuse``; one stage). ``routing``: a :class:`pimsim.moe.Routing` for a mixture-of-experts
    program (one stage: :func:`~pimsim.generate.run_generation`'s; on a
    pipeline the stages' timing follows it, a trace or seeded, also in functional runs)."""
    from pimsim.prefill import check_prefill

    prefill = check_prefill(prefill)
    programs = list(programs)
    check_system(programs, cfg)
    tp, pp = programs[0].tp, len(programs)
    if prefill == "batched" and pp > 1:
        raise UserError(f"a batched prefill on {pp} pipeline stages",
                        "use prefill token-by-token on a pipeline, or a system without "
                        "pipeline stages (pp 1)")
    if batch_prompts is not None and pp > 1:
        if functional is not None:
            raise UserError(f"a functional batched decode on {pp} pipeline stages (the numbers "
                            f"of a micro-batch are not computed stage by stage)",
                            "run the batch as a timing run, or functionally on a system "
                            "without pipeline stages (pp 1)")
        lens = {len(p) for p in batch_prompts}
        if len(lens) != 1:
            raise UserError(f"prompts of lengths {sorted(lens)} in one batch on a pipeline",
                            "give the sequences prompts of one length")
        n = len(batch_prompts)
        return _run_pipeline(programs, cfg, prompt=batch_prompts[0], n_tokens=n_tokens,
                             schedule=schedule, fast=fast, functional=None, progress=progress,
                             skip_prompt=skip_prompt, routing=routing,
                             sizes=micro_batches(n, pp) if in_flight else [n] * pp)
    if batch_prompts is not None:
        from pimsim.batch import run_batched

        rep = run_batched(programs[0], cfg, prompts=batch_prompts, n_tokens=n_tokens,
                          schedule=schedule, fast=fast, functional=functional,
                          progress=progress, skip_prompt=skip_prompt, prefill=prefill,
                          reuse=batch_reuse, routing=routing)
        return _one_stage(rep, tp, len(batch_prompts), programs[0].ep)
    if pp == 1 and prefill == "batched":  # a batched step of one sequence, then its decode
        from pimsim.batch import run_batched

        rep = run_batched(programs[0], cfg, prompts=[prompt], n_tokens=n_tokens,
                          schedule=schedule, fast=fast,
                          functional=None if functional is None else [functional],
                          progress=progress, skip_prompt=skip_prompt, prefill=prefill)
        del rep.extra["batch"]  # one sequence: the unbatched report's fields
        return _one_stage(rep, tp, 1, programs[0].ep)
    if pp == 1:
        rep = run_generation(programs[0], cfg, prompt=prompt, n_tokens=n_tokens,
                             schedule=schedule, fast=fast, functional=functional,
                             progress=progress, skip_prompt=skip_prompt, routing=routing)
        return _one_stage(rep, tp, 1, programs[0].ep)
    return _run_pipeline(programs, cfg, prompt=prompt, n_tokens=n_tokens, schedule=schedule,
                         fast=fast, functional=functional, progress=progress,
                         skip_prompt=skip_prompt, routing=routing)


def _one_stage(rep: RunReport, tp: int, sequences: int, ep: int = 1) -> RunReport:
    """A one-stage report for the whole group of ``tp`` alike devices (``ep``: the experts
    placed whole over them, :mod:`pimsim.expert_parallel`)."""
    rep.throughput_tokens_per_s = rep.tokens_per_s
    rep.commands = {k: v * tp for k, v in rep.commands.items()}  # all devices
    rep.weight_bytes_per_step *= tp
    rep.system = {"devices": tp, "tp": tp, "pp": 1, "ep": ep, "sequences": sequences,
                  "utilisation": [1.0], "bubble": 0.0}
    if rep.energy:
        _scale_energy(rep.energy, tp)
        rep.energy["avg_power_w"] = rep.energy["j_per_token"] * rep.tokens_per_s
    return rep


def _scale_energy(e: dict, k: int) -> None:
    """A stage's energy summary times its ``k`` alike devices (the collectives' wire energy
    was charged per device, a 1/k share each)."""
    if k == 1:
        return
    for key in ("j_per_token", "mj_per_token"):
        e[key] *= k
    e["per_token_j"] = [v * k for v in e["per_token_j"]]
    for d in ("by_component", "by_command"):
        e[d] = {n: v * k for n, v in e[d].items()}


def _run_pipeline(programs, cfg, *, prompt, n_tokens, schedule, fast, functional, progress,
                  skip_prompt, routing=None, sizes: Sequence[int] | None = None) -> RunReport:
    """The pipeline's run; ``sizes``: the micro-batches in flight, job ``j`` a batched step of
    ``sizes[j]`` sequences at the same positions, the largest first (None: ``pp`` jobs of one
    sequence, the unbatched pipeline)."""
    tp, pp = programs[0].tp, len(programs)
    sizes = None if sizes is None else [int(b) for b in sizes]
    if sizes is not None and (not 1 <= len(sizes) <= pp or min(sizes) < 1
                              or sizes[0] != max(sizes)):
        raise ValueError(f"micro-batches {sizes}: 1..{pp} sizes >= 1, the largest first")
    n_jobs = pp if sizes is None else len(sizes)
    B = 1 if sizes is None else sizes[0]  # micro-batch 0: its latency is the report's
    n_ctx = programs[0].dims["n_ctx"]
    if len(prompt) < 1 or n_tokens < 1:
        raise UserError("nothing to generate", "give at least one prompt token and one token")
    if len(prompt) + n_tokens - 1 > n_ctx:
        raise UserError(f"prompt ({len(prompt)}) + generated ({n_tokens}) tokens exceed the "
                        f"context of {n_ctx}", "generate fewer tokens or shorten the prompt")
    t_wall = time.perf_counter()
    bprogs = None
    if sizes is not None:
        from pimsim.batch import MAC_BOUND_FORMULA, BatchedProgram, mac_bound_cyc, max_batch
        from pimsim.decode import StepTable, StreamBuilder

        # per stage, the batched program of each micro-batch size (the largest first: it
        # refuses KV caches that do not fit)
        bprogs = [{b: BatchedProgram(p, b) for b in sorted(set(sizes), reverse=True)}
                  for p in programs]
    sims = [DecodeSimulator(p, cfg, schedule=schedule, fast=fast)
            for p in ([bp[B] for bp in bprogs] if bprogs else programs)]
    # per stage, the step table and stream builder of each size, swapped in for its jobs (the
    # device state carries on from job to job whatever the size)
    run_as = [{B: (s.prog, s.steps, s.streams)} for s in sims]

    def use_size(s: int, b: int) -> None:
        sim = sims[s]
        if bprogs is None or sim.prog is bprogs[s][b]:
            return
        if b not in run_as[s]:
            bp = bprogs[s][b]
            run_as[s][b] = (bp, StepTable(bp, cfg), StreamBuilder(bp, compact=sim.fast))
        sim.prog, sim.steps, sim.streams = run_as[s][b]

    accts = [TimeAccount(s) for s in sims]
    job_sizes = sizes or [1] * pp
    by_size = {}  # micro-batch size -> (its sends' costs, cycles per send, token return cycles)
    for b in set(job_sizes):
        sends_b = [stage_send(cfg, p, b) for p in programs[:-1]]
        by_size[b] = (sends_b, [c.cycles(cfg.tCK_ps) for c in sends_b],
                      token_return_cyc(cfg, b))
    sends, send, back = by_size[B]
    with_energy = cfg.energy is not None
    meters = [TokenEnergy(s) for s in sims] if with_energy else []
    e_sum = EnergyReport(table=cfg.energy.table) if with_energy else None
    ic_pj = cfg.system.interconnect.pj_per_bit
    send_pj_of = {b: sum(c.wire_bits for c in v[0]) * tp * ic_pj for b, v in by_size.items()}
    send_pj = send_pj_of[B]
    n_total = max(len(prompt) + n_tokens - 1, len(prompt))
    first = len(prompt) - 1 if skip_prompt else 0
    tok = int(prompt[0])
    generated: list[int] = []
    per_token_j: list[float] = []
    times = TimeTotals()
    tok_j = [0.0]

    from pimsim.expert_parallel import ExpertLoad
    from pimsim.moe import Routing, active_steps, routed_steps, weight_bytes

    moe = bool(programs[0].moe)
    routing = (routing or Routing.seeded()) if moe else None
    choices: dict[int, dict] = {}  # pos -> the experts chosen (a timing source: see below)
    chosen: dict[int, dict] = {}  # pos -> MoE layer -> the experts of each token
    loads = [ExpertLoad(p) for p in programs] if moe else []
    w_bytes: dict[int, int] = {}
    # (stage, micro-batch size) -> (pos, its steps' mask, the routed vectors)
    routed: dict[tuple[int, int], tuple] = {}
    bound_cyc: dict[int, float] = {}  # pos -> the stages' MAC-rate bounds, summed (batched)
    asic = DeviceAsics(sims, cfg.system.stages_per_device)
    # each stage's jobs at the last position: cycles from start to end (its own work and its
    # waits for a shared ASIC, not its waits for the stage)
    job_cyc: list[list[int]] = [[] for _ in programs]
    last_pos = [None]

    def job(s: int, pos: int, j: int, start: int) -> int:
        sim = sims[s]
        b = job_sizes[j]
        use_size(s, b)
        active = None
        if moe:  # the stages' timing runs before the functional step: a trace or seeded choice
            if pos not in choices:
                choices[pos] = routing.choose(programs[0], pos, batch=B)
                chosen[pos] = routing.last
            if bprogs is None:
                active = active_steps(programs[s], choices[pos])
            else:  # each expert for the micro-batch's sequences routed to it (a smaller
                # micro-batch: the first of the largest one's sequences)
                if routed.get((s, b), (None,))[0] != pos:
                    mine = {m: t[:b] for m, t in chosen[pos].items()}
                    routed[(s, b)] = (pos, *routed_steps(bprogs[s][b], mine))
                active = routed[(s, b)][1]
                bprogs[s][b].route(routed[(s, b)][2])
        if j == 0 and pos >= len(prompt) - 1:
            if moe:
                one = float(loads[s].device_bytes(chosen[pos], loads[s].placement).mean())
            else:
                one = weight_bytes(bprogs[s][B] if bprogs else programs[s], active)
            w_bytes[pos] = w_bytes.get(pos, 0) + one * tp
            if bprogs is not None:
                bound_cyc[pos] = bound_cyc.get(pos, 0.0) + mac_bound_cyc(bprogs[s][B], cfg)
        start = max(start, sim.now)
        gap = start - sim.now
        sim.now = start
        gen = pos >= len(prompt) - 1
        if with_energy:
            meters[s].begin()
        if with_energy:
            meters[s].active = active
        asic.before(s)
        tt = sim.run_token((pos,) * b if bprogs else pos, active)
        asic.after(s, tt, active)
        if pos != last_pos[0]:
            last_pos[0] = pos
            for x in job_cyc:
                x.clear()
        job_cyc[s].append(tt.end_cyc - start)
        if with_energy:
            er = meters[s].end(tt, gap)
            if j == 0:
                tok_j[0] += er.total_j * tp
            if gen:
                e_sum.add(_times(er, tp))
        if gen and j == 0:  # sequence 0's latency: its jobs, the sends, the waits between
            times.add(*accts[s].split(tt))
            if s < pp - 1:
                times.add(*_only("interconnect", "stage_send", send[s]))
        return tt.end_cyc

    def token_done(pos: int) -> None:
        nonlocal tok
        if pos >= len(prompt) - 1 and with_energy:
            per_token_j.append((tok_j[0] + send_pj * 1e-12) / B)  # a micro-batch's, per token
            for b in job_sizes:
                e_sum.total_j += send_pj_of[b] * 1e-12
                e_sum.by_component["interconnect"] = \
                    e_sum.by_component.get("interconnect", 0.0) + send_pj_of[b] * 1e-12
        tok_j[0] = 0.0
        nxt = int(np.argmax(functional.step(tok, pos))) if functional is not None else 0
        if pos + 1 < len(prompt):
            tok = int(prompt[pos + 1])
        else:
            generated.append(nxt)
            tok = nxt
        if progress is not None:
            progress(pos)

    clock = pipeline_schedule(pp, range(first, n_total), send, back, job, token_done,
                              first_gen=len(prompt) - 1, jobs=n_jobs,
                              job_send=[by_size[b][1] for b in job_sizes],
                              job_back=[by_size[b][2] for b in job_sizes])
    latency, busy, end_all, gen_t0 = clock.latency, clock.busy, clock.end, clock.gen_start
    ns = cfg.timing.ns
    n_gen = len(latency)
    per_token_ms = [ns(c) / 1e6 for c in latency]
    ms_tok = float(np.mean(per_token_ms)) if per_token_ms else 0.0
    n_seq = sum(job_sizes)  # the sequences in flight
    n_seq_tokens = n_gen * n_seq
    gen_span_ms = ns(max(end_all - (gen_t0 or 0), 1)) / 1e6
    util = [b / max(end_all, 1) for b in busy]
    # the rest of sequence 0's latency: its jobs waiting for stages busy with other sequences
    wait_cyc = sum(latency) - float(times.shares.sum())
    if abs(wait_cyc) > 1e-6 * max(sum(latency), 1):
        times.add(*_only("queueing", "pipeline_wait", wait_cyc))
    hits = sum(s.row_hits for s in sims)
    misses = sum(s.row_misses for s in sims)
    cmds: dict[str, int] = {}
    for s in sims:
        for k, v in s.command_counts.items():
            cmds[k] = cmds.get(k, 0) + v * tp
    energy = {}
    if with_energy:
        energy = _energy_summary(e_sum, per_token_j, n_seq_tokens)
        energy["per_token_j"] = per_token_j
    thr = n_seq_tokens / (gen_span_ms / 1e3) if n_gen else 0.0
    if energy:
        energy["avg_power_w"] = energy["j_per_token"] * thr
    extra = {}
    if bprogs is not None:
        for bp in bprogs:
            for b in bp.values():
                b.route(None)
        bound_ms = ns(float(np.mean(list(bound_cyc.values()))) if bound_cyc else 0.0) / 1e6
        extra["batch"] = {
            "batch": B, "micro_batches": n_jobs, "micro_batch_sizes": job_sizes,
            "in_flight": n_seq, "ms_per_step": ms_tok,
            "tokens_per_s": 1000.0 * B / ms_tok if ms_tok else 0.0,
            "round_ms": gen_span_ms / n_gen if n_gen else 0.0,
            "mac_bound_ms_per_step": bound_ms, "mac_bound": MAC_BOUND_FORMULA + ", summed "
            "over the stages", "weight_macs_per_sequence": sum(bp[B].weight_macs() for bp in bprogs),
            "max_batch": min(max_batch(p) for p in programs),
            "positions_last_step": [n_total - 1] * B}
    return RunReport(
        model=programs[0].model, hw=cfg.name, schedule=schedule, refresh=cfg.refresh.enabled,
        functional=functional is not None, prompt_tokens=len(prompt),
        generated_tokens=n_gen * B, tCK_ps=cfg.tCK_ps, cycles=int(end_all),
        ms_total=ns(end_all) / 1e6,
        ms_per_token=ms_tok, tokens_per_s=1000.0 * B / ms_tok if ms_tok else 0.0,
        per_token_ms=per_token_ms,
        row_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        **times.report_fields(cfg, n_gen),
        commands=cmds, tokens=generated if functional is not None else [], energy=energy,
        wall_s=time.perf_counter() - t_wall, throughput_tokens_per_s=thr,
        prompt_skipped=skip_prompt,
        ttft_ms=None if skip_prompt or clock.first_token_end is None
        else ns(clock.first_token_end) / 1e6,
        tpot_ms=tpot_ms(per_token_ms),
        system={"devices": cfg.system.devices, "tp": tp, "pp": pp, "ep": programs[0].ep,
                "sequences": n_seq,
                "stages_per_device": cfg.system.stages_per_device,
                "utilisation": util, "bubble": 1.0 - float(np.mean(util)),
                "stage_send_cyc": send, "token_return_cyc": back,
                "round_cyc": clock.rounds[-1] if clock.rounds else None,
                "stage_job_cyc": [float(np.mean(x)) for x in job_cyc]},
        routing=routing.describe() if moe else "",
        weight_bytes_per_step=float(np.mean(list(w_bytes.values()))) if w_bytes else 0.0,
        extra=extra)


class DeviceAsics:
    """The ASIC of each device that holds several pipeline stages (``[system]
    stages_per_device`` = ``k`` > 1, CENT's pipeline): one ASIC for the device's ``k`` stages
    (stage ``s`` on device ``s // k``), so a stage's ASIC steps cannot overlap another
    co-located stage's. Each device keeps the ASIC cycles its stages' jobs took; a job's ASIC
    steps wait for a gap that holds them (:func:`pimsim.timing.token_runner.asic_gap`), the jobs
    taking the ASIC in the order they are simulated (a position's sequences in order, each
    through the stages). CENT multiplies a block's accelerator time by the blocks on its
    device (Yufeng98/CENT@9b4165f cent_simulation/run_sim.py:201,
    ``acc_latency * blocks_per_device``): every block waits for all the others' ASIC work; here
    a step waits only where another stage's step holds the ASIC. With one stage per device,
    nothing is kept or waited for."""

    def __init__(self, sims: Sequence[DecodeSimulator], k: int):
        self.sims, self.k = sims, k
        self.busy = [np.zeros((0, 2), np.int64) for _ in range(-(-len(sims) // k))] \
            if k > 1 else []

    def before(self, s: int) -> None:
        """Give stage ``s``'s simulator its device's ASIC as the other jobs left it (rows that
        end before every stage of the device has moved past them dropped: no later job of
        theirs can start before)."""
        if self.k == 1:
            return
        d = s // self.k
        t = min(x.now for x in self.sims[d * self.k:(d + 1) * self.k])
        b = self.busy[d]
        self.busy[d] = b = b[np.searchsorted(b[:, 1], t, side="right"):]
        self.sims[s].asic_busy = b

    def after(self, s: int, tt, active: np.ndarray | None) -> None:
        """Add the ASIC steps of stage ``s``'s job ``tt`` to its device's ASIC."""
        if self.k == 1:
            return
        kind = self.sims[s].steps.kind
        run = (kind == 0) & (tt.step_end > tt.step_start)
        if active is not None:
            run &= active
        new = np.stack([tt.step_start[run], tt.step_end[run]], axis=1)
        b = np.concatenate([self.busy[s // self.k], new])
        self.busy[s // self.k] = b[np.argsort(b[:, 0], kind="stable")]


def _only(share: str, op: str, cyc: float) -> tuple[np.ndarray, dict[str, float]]:
    """``cyc`` cycles in one time share and one per-op entry (what TimeTotals.add takes)."""
    v = np.zeros(len(BREAKDOWN_KEYS))
    v[BREAKDOWN_KEYS.index(share)] = cyc
    return v, {op: float(cyc)}


class Schedule:
    """What :func:`pipeline_schedule` found (cycles)."""

    def __init__(self, pp: int):
        self.latency: list[int] = []  # per generated token of sequence 0, stage 0 to the last
        self.busy = [0] * pp  # per stage
        self.end = 0  # the last job's end
        self.gen_start = 0  # when the first generating job could start
        self.first_token_end: int | None = None  # sequence 0's first token left the last stage
        # rounds: from each position's first job at stage 0 to the next position's (sequence
        # 0's token back at stage 0 and the stage free; after the last position, when it
        # could start): the last one is the steady state's period once the pipeline is full
        self.rounds: list[int] = []


def pipeline_schedule(pp: int, positions, send: Sequence[int], back: int,
                      job: Callable[[int, int, int, int], int],
                      token_done: Callable[[int], None] | None = None, *,
                      first_gen: int = 0, jobs: int | None = None,
                      job_send: Sequence[Sequence[int]] | None = None,
                      job_back: Sequence[int] | None = None) -> Schedule:
    """The jobs of ``pp`` sequences through ``pp`` stages, position by position (``jobs``:
    that many instead, at most ``pp``; ``job_send`` / ``job_back``: each job's own ``send``
    and ``back``, a micro-batch's sends of its own size).

    Stage ``s`` takes the jobs (position, sequence) in order; job (pos, j) at stage ``s``
    starts when the stage has finished its previous job and the activations have arrived
    (``send[s - 1]`` cycles after stage ``s - 1`` ended it); at stage 0, when the sequence's
    previous token has come back from the last stage (``back`` cycles). ``job(s, pos, j,
    start)`` runs it and returns its end (it may start later than ``start``: the caller's
    device may still be busy); ``token_done(pos)`` is called after each position. For equal
    stages of ``d`` cycles the period of a round is ``max(pp * d, pp * d + sum(send) +
    back)``: throughput ``pp / period`` tokens per cycle (``Schedule.rounds``: each
    position's period). Jobs are simulated position by position, each sequence through the
    stages in turn (the order in which co-located stages' jobs take a shared ASIC,
    :class:`DeviceAsics`)."""
    sch = Schedule(pp)
    n_jobs = pp if jobs is None else jobs
    free = [0] * pp
    ready = [0] * n_jobs  # when each sequence's next token is at stage 0
    started = False
    first_start = None  # the previous position's first job at stage 0
    for pos in positions:
        gen = pos >= first_gen
        for j in range(n_jobs):
            if job_send is not None:
                send = job_send[j]
            if job_back is not None:
                back = job_back[j]
            t = t0 = ready[j]
            if gen and not started:
                sch.gen_start, started = t, True
            for s in range(pp):
                start = max(t, free[s])
                if s == 0 and j == 0:
                    if first_start is not None:
                        sch.rounds.append(start - first_start)
                    first_start = start
                end = job(s, pos, j, start)
                sch.busy[s] += end - max(start, free[s])
                free[s] = end
                t = end + (send[s] if s < pp - 1 else back)
            ready[j] = t
            sch.end = max(sch.end, t - back)
            if gen and j == 0:
                sch.latency.append(t - back - t0)
                if sch.first_token_end is None:
                    sch.first_token_end = t - back
        if token_done is not None:
            token_done(pos)
    if first_start is not None:  # the last round: to when the next position could start
        sch.rounds.append(max(ready[0], free[0]) - first_start)
    return sch


def _times(er: EnergyReport, k: int) -> EnergyReport:
    out = EnergyReport(table=er.table, total_j=er.total_j * k)
    out.by_component = {n: v * k for n, v in er.by_component.items()}
    out.by_command = {n: v * k for n, v in er.by_command.items()}
    return out
