"""Step costs: what one continuous-batching scheduler step costs on a system.

The scheduler (:mod:`workloads.serving.scheduler`) asks a :class:`StepCost` for every step::

    cost.step(decode_ctx_lens, prefill_chunks) -> StepTime(time_s, energy_j, per_device_busy_s)

``decode_ctx_lens``: one entry per sequence that decodes one token in the step, the tokens
already in its KV cache (= the position of the token it processes); ``prefill_chunks``: one
``(start_pos, n_tokens)`` per sequence that processes prompt tokens ``start_pos ..
start_pos + n_tokens - 1`` (chunked prefill). A cost also says how many KV-cache tokens the
system holds (``kv_capacity_tokens``) and the model's context (``n_ctx``).

Three costs here:

* :class:`PimBatchedCost` -- the default PIM cost, "PIM, batched decode (shared row activations
  where buffer/accumulators allow), batched prefill": the decode sequences of a step run as
  ONE batched decode step of :mod:`pimsim.batch` at their own positions (weight rows activated
  once for as many sequences as the global buffer and the accumulators hold, each sequence its
  own KV region), simulated exactly from a fresh device state and memoised per exact ordered
  tuple of positions (the simulation is a function of that tuple only; a test holds a memo hit
  equal to a fresh simulation). A step with more decode sequences than the device's KV regions
  hold (:func:`pimsim.batch.max_batch`) runs as the fewest consecutive batched steps that fit,
  in order, of sizes as equal as possible (the earlier ones one larger; equal sizes from step to
  step let the simulator reuse the weight items it built for that batch size). The cost keeps
  the batched programs of the last batch sizes, their streams and the timing kernels' memo of
  simulated units from step to step (:class:`pimsim.batch.BatchedSteps`; each step still
  starts from a fresh device state, and a test holds a step with a warm memo equal to one
  simulated with nothing kept). The step's
  prompt chunks then run as ONE batched prefill step (:meth:`PimBatchedCost.prefill_step`:
  chunk ``(s, n)`` is ``n`` vectors at positions ``s .. s+n-1`` in a KV region of their own,
  causal attention among them, :func:`pimsim.batch.step_cost`), or with ``prefill=
  "token-by-token"`` as ``n`` batch-1 steps each, as in :class:`PimSerialCost`;
* :class:`PimSerialCost` -- "PIM, no batching (sequences one after another)" (``--pim-cost
  serial``): one sequence's decode step at a time, so a step of ``B`` decode sequences costs
  the sum of ``B`` batch-1 decode steps at their positions, and a prefill chunk of ``n`` tokens
  costs ``n`` token-by-token steps (PIM-GPT's and CENT's way of processing a prompt). A batch-1
  step at position ``p`` is the simulator's run of one generating step at ``p`` from a fresh
  device state (``session.simulate(..., prompt=p + 1, tokens=1, skip_prompt=True)``, the same
  :func:`pimsim.pipeline.run_system` call): it depends on ``p`` only, so it is memoised per exact
  position (no bucketing); ``tests/test_serving.py`` holds a step of ``B`` sequences equal to
  ``B`` such simulations.
* :class:`GpuModelCost` -- the analytic GPU model of :mod:`workloads.gpu.model` extended to a
  batch: an uncalibrated roofline until batched measurements are fitted (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from pimsim.errors import UserError

PIM_SERIAL_LABEL = "PIM, no batching (sequences one after another)"
# what a decode step is priced as (compare --batch prices decode steps only)
PIM_BATCHED_LABEL = "PIM, batched decode (shared row activations where buffer/accumulators allow)"
PREFILL_LABELS = {"batched": "batched prefill (a step's prompt chunks as one batched step)",
                  "token-by-token": "token-by-token prefill"}
# the most prompt tokens one simulated batched prefill step holds: the simulator keeps a step's
# items in memory (about 13 MB a vector for llama2-7b on aim-gddr6 x 8), so more run as
# consecutive batched steps ([assumed] a controller's step size; on the shipped devices the
# global buffer holds far fewer vectors, so the weight rows are re-read per pass either way:
# two 128-token chunks in one step cost 2.000x one)
PREFILL_STEP_VECTORS = 256
PREFILL_COSTS = ("batched", "token-by-token")  # serve's ``--prefill``; the first is the default
PIM_COSTS = ("batched", "serial")  # what ``--pim-cost`` accepts; the first is the default


@dataclass(frozen=True)
class StepTime:
    """What one scheduler step cost: wall time (s), energy of the whole system (J; None when
    the cost has no energy model), the busy time of every device (s), and for PIM costs the
    device clock cycles (``cycles``; None otherwise)."""

    time_s: float
    energy_j: float | None
    per_device_busy_s: tuple[float, ...] = ()
    cycles: int | None = None


class StepCost(Protocol):
    """What the scheduler needs of a system (see the module docstring)."""

    name: str  # short, for tables: "pim" or "gpu:H100"
    label: str  # said in every report: what the cost models
    n_ctx: int  # positions the model has
    kv_capacity_tokens: int  # KV-cache tokens the system holds (all sequences together)
    devices: int

    def step(self, decode_ctx_lens: Sequence[int],
             prefill_chunks: Sequence[tuple[int, int]]) -> StepTime: ...


def _check_positions(decode_ctx_lens, prefill_chunks, n_ctx: int) -> None:
    for p in decode_ctx_lens:
        if not 0 <= p < n_ctx:
            raise ValueError(f"decode position {p} outside the context 0..{n_ctx - 1}")
    for s, n in prefill_chunks:
        if n < 1 or s < 0 or s + n > n_ctx:
            raise ValueError(f"prefill chunk ({s}, {n}) outside the context of {n_ctx}")


# ---------------------------------------------------------------- PIM, no batching

def pim_kv_capacity_tokens(compiled: Any) -> int:
    """KV-cache tokens one device system holds: the bytes of the rows the program's KV caches
    reserve plus every bank's free rows, over the K and V bytes of one token on one device
    (all layers; under tensor parallelism a device holds its heads of every token, so one
    device's figure is the system's). Row padding of a real multi-sequence layout is not
    counted: an upper estimate, the same for every position."""
    mp = compiled.mapping
    g = mp.geo
    n_ctx = mp.k_cache[0].n_ctx if mp.k_cache else mp.spec.n_ctx
    per_token_b = mp.kv_bytes() / n_ctx
    kv_rows = sum(k.rows_reserved + v.rows_reserved for k, v in zip(mp.k_cache, mp.v_cache))
    free_rows = g.rows - max(mp.rows_used)
    row_b = g.row_elems * g.elem_bytes * g.banks * g.channels
    return int((kv_rows + free_rows) * row_b // per_token_b)


class PimSerialCost:
    """PIM, no batching (sequences one after another); see the module docstring.

    ``compiled``: the model compiled for ``cfg``'s system (:func:`workloads.compiling.
    compile_model`); one pipeline stage (tensor parallelism is fine). ``kv_capacity_tokens``:
    None for :func:`pim_kv_capacity_tokens`. Energy: the simulator's energy of each batch-1
    step (all devices, the ``[energy]`` table of the config); None without one."""

    name = "pim"
    label = PIM_SERIAL_LABEL
    decode_label = PIM_SERIAL_LABEL  # what a decode step alone is priced as

    def __init__(self, compiled: Any, cfg: Any, *, schedule: str = "serial",
                 kv_capacity_tokens: int | None = None):
        from workloads.compiling import system_programs

        self.programs = system_programs(compiled, cfg)
        if len(self.programs) > 1:
            raise UserError(f"serving on {len(self.programs)} pipeline stages is not modelled "
                            "(sequences one after another would leave the stages idle)",
                            "serve on one stage (pp 1; --devices N with tp N is fine)")
        self.compiled, self.cfg, self.schedule = compiled, cfg, schedule
        self.n_ctx = int(self.programs[0].dims["n_ctx"])
        self.devices = self.programs[0].tp
        self.kv_capacity_tokens = (pim_kv_capacity_tokens(compiled) if kv_capacity_tokens is None
                                   else int(kv_capacity_tokens))
        self.has_energy = cfg.energy is not None
        self._memo: dict[int, tuple[int, float, float | None]] = {}  # pos -> (cyc, s, J)

    @property
    def positions_simulated(self) -> int:
        """Batch-1 positions simulated so far (each once)."""
        return len(self._memo)

    def position_step(self, pos: int) -> tuple[int, float, float | None]:
        """(cycles, seconds, joules) of one batch-1 decode step at ``pos``: the simulator's
        generating step at ``pos`` from a fresh device state, memoised per position."""
        got = self._memo.get(pos)
        if got is None:
            from pimsim.generate import prompt_ids
            from pimsim.pipeline import run_system

            rep = run_system(self.programs, self.cfg,
                             prompt=prompt_ids(pos + 1, self.compiled.spec.vocab),
                             n_tokens=1, schedule=self.schedule, skip_prompt=True)
            e = rep.energy["per_token_j"][0] if rep.energy else None
            got = self._memo[pos] = (int(rep.cycles), rep.per_token_ms[0] / 1e3, e)
        return got

    def step(self, decode_ctx_lens: Sequence[int],
             prefill_chunks: Sequence[tuple[int, int]]) -> StepTime:
        _check_positions(decode_ctx_lens, prefill_chunks, self.n_ctx)
        positions = list(decode_ctx_lens)
        for s, n in prefill_chunks:
            positions.extend(range(s, s + n))
        parts = [self.position_step(p) for p in positions]
        cyc = sum(c for c, _, _ in parts)
        t = self.cfg.timing.ns(cyc) / 1e9
        e = math.fsum(j for _, _, j in parts) if self.has_energy else None
        return StepTime(t, e, (t,) * self.devices, cyc)


# ---------------------------------------------------------------- PIM, batched decode

class PimBatchedCost(PimSerialCost):
    """PIM, batched decode and (by default) batched prefill; see the module docstring.

    Arguments as :class:`PimSerialCost`. ``max_batch``: the most decode sequences one batched
    step holds (their KV regions in the device's rows, :func:`pimsim.batch.max_batch`).
    ``prefill``: ``"batched"`` (the default; the prompt chunks of a scheduler step run as ONE
    batched step, :meth:`prefill_step`) or ``"token-by-token"`` (a chunk of ``n`` tokens costs
    ``n`` batch-1 decode steps, PIM-GPT's and CENT's way). ``jobs``: processes simulating the
    batched steps (:mod:`workloads.serving.parallel`: forked workers once this process has
    simulated a step; 1, the default, simulates here; 0 one per core); the numbers do not
    depend on it. :meth:`close` stops the workers."""

    def __init__(self, compiled: Any, cfg: Any, *, schedule: str = "serial",
                 kv_capacity_tokens: int | None = None, prefill: str = "batched",
                 prefill_step_vectors: int = PREFILL_STEP_VECTORS, jobs: int = 1):
        from pimsim.batch import BatchedSteps, max_batch

        super().__init__(compiled, cfg, schedule=schedule, kv_capacity_tokens=kv_capacity_tokens)
        if prefill not in PREFILL_COSTS:
            raise UserError(f"PIM prefill {prefill!r} is not known",
                            f"use one of {', '.join(PREFILL_COSTS)}")
        self.prefill = prefill
        self.prefill_step_vectors = int(prefill_step_vectors)
        self.label = f"{PIM_BATCHED_LABEL}, {PREFILL_LABELS[prefill]}"
        self.decode_label = PIM_BATCHED_LABEL
        self.max_batch = max_batch(self.programs[0])
        # batched programs, their streams and the kernels' memo, kept from step to step
        # (every step still simulated from a fresh device state: exact)
        self.reuse = BatchedSteps(self.programs[0], cfg)
        # exact ordered positions -> (cycles, seconds, joules of the whole step)
        self._batch_memo: dict[tuple[int, ...], tuple[int, float, float | None]] = {}
        self._prefill_memo: dict[tuple[tuple[int, int], ...], tuple[int, float, float | None]] = {}
        self.simulated_batch_steps = 0  # batched steps actually simulated (memo misses)
        self.simulated_s = 0.0  # wall seconds spent simulating them (summed over workers)
        self.jobs = check_jobs(jobs)
        self._pool = None  # workloads.serving.parallel.StepPool once jobs > 1 and warm
        self._worker_usage: dict[int, dict] = {}  # the stopped workers' memo usage
        self.wasted_steps = 0  # guessed next steps the workers simulated and no step asked for
        self._prompts: dict[int, list[int]] = {}  # position -> the prompt ids of a sequence there
        self._ahead: list[tuple[str, tuple]] = []  # steps planned ahead, not yet handed out

    def prefill_groups(self, chunks: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """The batched prefill steps a scheduler step's chunks run as, one after the other: each
        chunk cut into pieces of at most :attr:`prefill_step_vectors` tokens (a piece continues
        its sequence at its own positions), the pieces in order gathered into steps of at most
        that many vectors and :attr:`max_batch` regions."""
        cap = self.prefill_step_vectors
        pieces = [(a, min(cap, s + n - a)) for s, n in chunks for a in range(s, s + n, cap)]
        groups: list[list[tuple[int, int]]] = []
        vec = 0
        for p in pieces:
            if not groups or vec + p[1] > cap or len(groups[-1]) == self.max_batch:
                groups.append([])
                vec = 0
            groups[-1].append(p)
            vec += p[1]
        return groups

    def prefill_step(self, chunks: Sequence[tuple[int, int]]) -> tuple[int, float, float | None]:
        """(cycles, seconds, joules of the system) of ONE batched prefill step: chunk ``(s, n)``
        is one sequence's prompt tokens ``s .. s+n-1`` in a KV region of its own, attending
        causally over its positions ``0 ..`` its own (:func:`pimsim.batch.step_cost` from a fresh
        device state); at most :attr:`max_batch` chunks; memoised per exact ordered chunks."""
        key = tuple((int(s), int(n)) for s, n in chunks)
        if not 1 <= len(key) <= self.max_batch:
            raise ValueError(f"a prefill step of {len(key)} chunks: give 1 to {self.max_batch}")
        return self._get("prefill", key)

    def batch_step(self, positions: Sequence[int]) -> tuple[int, float, float | None]:
        """(cycles, seconds, joules) of one batched decode step, sequence ``b`` generating the
        token at ``positions[b]`` (at most :attr:`max_batch` sequences): the simulator's
        batched generating step from a fresh device state (:func:`pimsim.pipeline.run_system`
        with one prompt per sequence, ``skip_prompt``), memoised per exact ordered tuple."""
        key = tuple(int(p) for p in positions)
        if not 1 <= len(key) <= self.max_batch:
            raise ValueError(f"a batched step of {len(key)} sequences: give 1 to "
                             f"{self.max_batch}")
        return self._get("decode", key)

    def _memo_of(self, kind: str) -> dict:
        return self._batch_memo if kind == "decode" else self._prefill_memo

    def _get(self, kind: str, key: tuple) -> tuple[int, float, float | None]:
        """The memoised result of step ``key`` of ``kind`` ("decode" or "prefill"), simulated
        here or by a worker (:mod:`workloads.serving.parallel`; the same numbers) if new."""
        memo = self._memo_of(kind)
        got = memo.get(key)
        if got is None:
            import time

            t0 = time.perf_counter()
            if self._pool is not None:
                got, wall_s = self._pool.result(kind, key)
            else:
                got = self.simulate(kind, key)
                wall_s = time.perf_counter() - t0
            memo[key] = got
            self.simulated_batch_steps += 1
            self.simulated_s += wall_s
        return got

    def simulate(self, kind: str, key: tuple) -> tuple[int, float, float | None]:
        """(cycles, seconds, joules of the system) of step ``key``: a decode step (``key`` the
        positions) or a prefill step (``key`` the chunks), from a fresh device state; not
        memoised here (see :meth:`batch_step`, :meth:`prefill_step`)."""
        if kind == "prefill":
            from pimsim.batch import step_cost

            positions = [p for s, n in key for p in range(s, s + n)]
            regions = [r for r, (_, n) in enumerate(key) for _ in range(n)]
            cyc, j = step_cost(self.programs[0], self.cfg, positions, regions,
                               schedule=self.schedule, memo=self.reuse.memo)
            e = j * self.devices if j is not None else None  # every device of the tp group
            return cyc, self.cfg.timing.ns(cyc) / 1e9, e
        from pimsim.generate import prompt_ids
        from pimsim.pipeline import run_system

        vocab = self.compiled.spec.vocab
        prompts = self._prompts
        for p in set(key).difference(prompts):
            prompts[p] = prompt_ids(p + 1, vocab)
        rep = run_system(self.programs, self.cfg, prompt=prompts[key[0]],
                         n_tokens=1, schedule=self.schedule, skip_prompt=True,
                         batch_prompts=[prompts[p] for p in key], batch_reuse=self.reuse)
        # the report's energy per token is the step's energy over the batch
        e = rep.energy["per_token_j"][0] * len(key) if rep.energy else None
        return int(rep.cycles), rep.per_token_ms[0] / 1e3, e

    def plan_ahead(self, steps: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]]
                   ) -> None:
        """The scheduler's steps from now to the end (every request has arrived, so they no
        longer depend on the steps' times; :func:`workloads.serving.scheduler.simulate_serving`):
        with workers (``jobs > 1``), every new batched step of them is handed out at once, in
        order, so that both cores stay busy through prefill steps too. Each result is used only
        when a step asks for exactly its key."""
        if self.jobs < 2:
            return
        keys: dict[tuple[str, tuple], None] = {}
        for decode, chunks in steps:
            for g in self.groups(decode):
                keys["decode", g] = None
            if self.prefill == "batched":
                for g in self.prefill_groups(chunks):
                    keys["prefill", tuple(map(tuple, g))] = None
        self._ahead = list(keys)

    def _start_pool(self) -> None:
        """Fork the workers once this process has simulated a step (warm kernels; its memo
        entries go with the workers)."""
        from workloads.serving.parallel import StepPool, fork_available

        if (self._pool is None and self.jobs > 1 and self.simulated_batch_steps > 0
                and fork_available()):
            import gc

            self.reuse.drop_programs()  # each worker builds its own: not a copy of this one's
            gc.collect()
            self._pool = StepPool(self, self.jobs)

    def close(self) -> None:
        """Stop the worker processes, if any (the cost still works, in this process)."""
        if self._pool is not None:
            self._pool.close()
            self.wasted_steps += self._pool.wasted
            self._worker_usage.update(self._pool.usage)
            self._pool = None

    def memo_usage(self) -> dict[str, int]:
        """The kernel memo's usage (:func:`pimsim.timing.memo.memo_usage`), summed over this
        process and its workers."""
        out = dict(self.reuse.memo_usage())
        workers = dict(self._worker_usage)
        workers.update(self._pool.usage if self._pool is not None else {})
        for u in workers.values():
            for k, v in u.items():
                out[k] = out.get(k, 0) + v
        return out

    def groups(self, decode_ctx_lens: Sequence[int]) -> list[tuple[int, ...]]:
        """The batched steps a step's decode sequences run as: the fewest groups of at most
        :attr:`max_batch`, in order, sizes as equal as possible (earlier groups one larger)."""
        decode = tuple(int(p) for p in decode_ctx_lens)
        n = -(-len(decode) // self.max_batch)
        out, i = [], 0
        for g in range(n):
            size = len(decode) // n + (g < len(decode) % n)
            out.append(decode[i:i + size])
            i += size
        return out

    def step(self, decode_ctx_lens: Sequence[int],
             prefill_chunks: Sequence[tuple[int, int]]) -> StepTime:
        _check_positions(decode_ctx_lens, prefill_chunks, self.n_ctx)
        groups = self.groups(decode_ctx_lens)
        pre = self.prefill_groups(prefill_chunks) if self.prefill == "batched" else []
        self._start_pool()
        if self._pool is not None:  # every new step of this one to the workers, then guesses
            for kind, keys in (("decode", groups),
                               ("prefill", [tuple(map(tuple, g)) for g in pre])):
                for key in keys:
                    if key not in self._memo_of(kind):
                        self._pool.submit(kind, key)
            for kind, key in self._ahead:  # the schedule ahead, once known
                if key not in self._memo_of(kind):
                    self._pool.submit(kind, key)
            self._ahead = []
            from workloads.serving.parallel import next_decode_keys

            self._pool.speculate("decode", next_decode_keys(groups, self.n_ctx),
                                 self._batch_memo.__contains__)
        parts = [self.batch_step(g) for g in groups]
        if self.prefill == "batched":
            parts.extend(self.prefill_step(g) for g in pre)
        else:
            for s, n in prefill_chunks:
                parts.extend(self.position_step(p) for p in range(s, s + n))
        cyc = sum(c for c, _, _ in parts)
        t = self.cfg.timing.ns(cyc) / 1e9
        e = math.fsum(j for _, _, j in parts) if self.has_energy else None
        return StepTime(t, e, (t,) * self.devices, cyc)


def pim_cost(kind: str, compiled: Any, cfg: Any, *, prefill: str | None = None,
             jobs: int = 1, **kw) -> PimSerialCost:
    """The PIM step cost named ``kind`` (:data:`PIM_COSTS`: ``"batched"``, the default, or
    ``"serial"``) with ``prefill`` (:func:`check_pim_prefill`); ``jobs``: processes simulating
    the batched cost's steps (:func:`check_jobs`; the serial cost runs in this one); other
    arguments as :class:`PimSerialCost`."""
    kind = check_pim_cost(kind)
    prefill = check_pim_prefill(kind, prefill)
    jobs = check_jobs(jobs)
    if kind == "serial":
        return PimSerialCost(compiled, cfg, **kw)
    return PimBatchedCost(compiled, cfg, prefill=prefill, jobs=jobs, **kw)


def check_pim_prefill(kind: str, prefill: object) -> str:
    """The prefill of PIM cost ``kind``: ``prefill`` if the cost has it (None: the cost's
    default, batched for the batched cost), else a UserError."""
    if prefill is None:
        return PREFILL_COSTS[0] if kind == "batched" else "token-by-token"
    if prefill not in PREFILL_COSTS:
        raise UserError(f"PIM prefill {prefill!r} is not known",
                        f"use one of {', '.join(PREFILL_COSTS)}")
    if kind == "serial" and prefill != "token-by-token":
        raise UserError("a batched prefill with the serial PIM cost (sequences one after another)",
                        "use --pim-cost batched, or --prefill token-by-token")
    return str(prefill)


def check_jobs(jobs: object) -> int:
    """``jobs`` (processes simulating PIM steps, :mod:`workloads.serving.parallel`) if it is a
    whole number >= 1, else a UserError; 0 means every core of this machine."""
    import os

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise UserError(f"jobs {jobs!r} is not a whole number >= 0",
                        "give the processes to simulate with (1: this one; 0: every core)")
    return jobs or (os.cpu_count() or 1)


def check_pim_cost(kind: object) -> str:
    """``kind`` if it names a PIM cost (:data:`PIM_COSTS`), else a UserError."""
    if kind not in PIM_COSTS:
        raise UserError(f"PIM cost {kind!r} is not known",
                        "use batched (one batched decode step per scheduler step, the default) "
                        "or serial (sequences one after another)")
    return kind


# ---------------------------------------------------------------- GPU roofline, batched

@dataclass
class GpuModelCost:
    """A GPU (or ``tp`` GPUs over NVLink) from the analytic model of :mod:`workloads.gpu.model`,
    extended to a batch, with the shipped calibrations of that GPU
    (:func:`workloads.gpu.calibration.serving_preset`: the batched fit where a batched
    measurement of the GPU is shipped, else the batch-1 calibration; the label says which).

    One step is one forward pass over every scheduled token:
    :func:`workloads.gpu.model.predict_step` (weights once per step, each sequence's KV, every
    token's FLOPs, the roofline plus kernel overheads and collectives; energy from the GPU
    model's power model: ``power="util"``, the default, or ``"board"``, the board's datasheet
    power throughout the step, an upper bound, never the default).

    At batch 1 with no prefill this is :func:`workloads.gpu.model.predict` of that preset exactly. KV capacity:
    the GPU memory left after the fp16 weights (/ tp) and the model's [assumed] per-GPU reserve,
    over the KV bytes of one token per GPU."""

    gpu: str
    model: str
    tp: int = 1
    power: str = "util"
    kv_capacity_tokens: int | None = None
    name: str = field(init=False)
    label: str = field(init=False)

    def __post_init__(self):
        from workloads.gpu.calibration import serving_preset
        from workloads.gpu.model import _kv_share, check_fits
        from workloads.gpu.shapes import shape_for
        from workloads.models.shape import FP16_BYTES

        try:
            g, how = serving_preset(self.gpu)
            self.shape = shape_for(self.model)
            check_fits(g, self.shape, self.tp)
        except (ValueError, KeyError, OSError) as e:
            raise UserError(f"GPU cost for {self.model} on {self.gpu}: {e}",
                            "give a GPU preset (T4, A100, H100, H200) or a batched measurement "
                            "(e.g. workloads/gpu/data/gpu_measured_h100_batched.json) and a "
                            "preset model the GPU model knows") from None
        if self.power not in ("board", "util"):
            raise UserError(f"GPU power model {self.power!r} is not known", "use board or util")
        self.spec = g.for_shape(self.shape)
        self.name = f"gpu:{g.name}"
        self.label = (f"{g.name}{f' x {self.tp}' if self.tp > 1 else ''}, analytic roofline "
                      f"with batching ({how}), {self.power} power")
        self.devices = self.tp
        self.n_ctx = int(self.shape.n_ctx)
        self.has_energy = True
        self._kv_share = _kv_share(self.shape, self.tp)
        if self.kv_capacity_tokens is None:
            per_tok = self._kv_pos_bytes() * self._kv_share
            free = g.mem_bytes - self.shape.n_params * FP16_BYTES / self.tp - g.reserve_bytes
            self.kv_capacity_tokens = int(free // per_tok) if g.mem_bytes > 0 else 1 << 62

    def _kv_pos_bytes(self) -> int:
        from workloads.gpu.model import kv_bytes_read

        return kv_bytes_read(self.shape, 0)  # one position

    def step(self, decode_ctx_lens: Sequence[int],
             prefill_chunks: Sequence[tuple[int, int]]) -> StepTime:
        from workloads.gpu.model import predict_step

        _check_positions(decode_ctx_lens, prefill_chunks, self.n_ctx)
        if not decode_ctx_lens and not prefill_chunks:
            return StepTime(0.0, 0.0, (0.0,) * self.devices)
        r = predict_step(self.spec, self.shape, decode_ctx_lens, prefill_chunks,
                         power=self.power, tp=self.tp)
        t = r["ms"] / 1e3
        return StepTime(t, r["joules"], (t,) * self.tp)
