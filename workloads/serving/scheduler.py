"""A vLLM-v1-like continuous-batching scheduler, simulated in time over a request stream.

Each step (one forward pass of the system):

1. requests that have arrived by the step's start join the waiting queue (first come, first
   served); a request whose ``prompt_len + output_len - 1`` KV tokens exceed the system's KV
   capacity, or whose positions exceed the model's context, can never run: it is *refused*
   (reported with the reason) instead of waiting forever;
2. running requests are scheduled first, in the order they started, sharing a token budget of
   ``max_num_batched_tokens``: a decoding request takes one token, a request still in its
   prompt takes a chunk of it (chunked prefill: as much as the budget leaves);
3. when the KV cache cannot hold a running request's new tokens, the newest running request is
   preempted (vLLM's default, recompute): its KV is freed and it goes back to the front of the
   waiting queue; when it runs again it recomputes its prompt and the tokens it had generated.
   Preemptions are counted per request;
4. if nothing was preempted, waiting requests are admitted in order while fewer than
   ``max_num_seqs`` run, the token budget lasts and the KV cache holds their first chunk;
5. the step costs ``cost.step(decode_ctx_lens, prefill_chunks)``
   (:class:`~workloads.serving.costs.StepCost`); the clock advances by its time; a request
   whose computed tokens reach all its known tokens samples one output token at the step's end
   (the first one ends its prefill); a request with all its output tokens finishes and frees
   its KV.

KV is kept per token (no blocks): a request holds one slot per computed token. When nothing
runs and nothing waits, the clock jumps to the next arrival; idle time costs no energy here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pimsim.errors import UserError
from workloads.serving.costs import StepCost
from workloads.serving.requests import Request


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM's scheduler limits: sequences running at once, tokens per step."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048

    def __post_init__(self):
        for k in ("max_num_seqs", "max_num_batched_tokens"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"{k} {v!r} is not a whole number >= 1",
                                f"give {k} as a positive integer")


@dataclass
class RequestState:
    """A request as the scheduler sees it, and what happened to it."""

    req: Request
    num_computed: int = 0  # tokens in its KV cache
    num_output: int = 0  # output tokens sampled
    token_times_s: list[float] = field(default_factory=list)  # when each output token came
    preemptions: int = 0
    refused: str | None = None  # why it can never run
    finish_s: float | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens known: the prompt and the outputs so far."""
        return self.req.prompt_len + self.num_output

    @property
    def done(self) -> bool:
        return self.num_output >= self.req.output_len


@dataclass(frozen=True)
class StepRecord:
    """One scheduler step: when, what ran, what it cost."""

    start_s: float
    time_s: float
    energy_j: float | None
    decode_ctx_lens: tuple[int, ...]
    prefill_chunks: tuple[tuple[int, int], ...]
    num_seqs: int  # sequences with tokens in the step
    num_running: int  # running after scheduling (some may have had no budget left)
    num_batched_tokens: int
    kv_used_tokens: int  # after the step's allocation
    num_preempted: int
    output_tokens: int  # tokens sampled at the step's end
    per_device_busy_s: tuple[float, ...] = ()


def refusal(req: Request, kv_capacity: int, n_ctx: int,
            context_label: str = "the model's context") -> str | None:
    """Why ``req`` can never run on the system, or None. ``context_label`` names where
    ``n_ctx`` comes from (the model's own context, or a context reserved by the caller)."""
    need = req.kv_tokens_needed
    if need > n_ctx:
        return (f"prompt_len {req.prompt_len} + output_len {req.output_len} - 1 = {need} "
                f"positions exceed {context_label} of {n_ctx}")
    if need > kv_capacity:
        return (f"prompt_len {req.prompt_len} + output_len {req.output_len} - 1 = {need} KV "
                f"tokens exceed the system's KV capacity of {kv_capacity} tokens")
    return None


def simulate_serving(requests: list[Request], cost: StepCost, sched: SchedulerConfig, *,
                     progress: Callable[[int], None] | None = None,
                     context_label: str = "the model's context"
                     ) -> tuple[list[RequestState], list[StepRecord]]:
    """Run the stream through the scheduler (module docstring); returns every request's state
    (in arrival order) and every step. ``progress(n)``: called with the output tokens of each
    step. ``context_label``: where the cost's context comes from, for refusals."""
    cap, n_ctx = int(cost.kv_capacity_tokens), int(cost.n_ctx)
    states = [RequestState(r) for r in sorted(requests, key=lambda r: (r.arrival_s, r.id))]
    steps: list[StepRecord] = []
    _run(_Queues(deque(states), deque(), [], 0, 0.0), cost, sched, cap, n_ctx, steps, progress,
         context_label, plan=hasattr(cost, "plan_ahead"))
    return states, steps


@dataclass
class _Queues:
    """The scheduler's state between steps."""

    pending: deque  # not yet arrived, in arrival order
    waiting: deque
    running: list
    kv_used: int
    now: float


class _PlanCost:
    """A zero-time step cost that records the steps asked of it (the schedule ahead)."""

    def __init__(self):
        self.asked: list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = []

    def step(self, decode, chunks):
        from workloads.serving.costs import StepTime

        self.asked.append((tuple(decode), tuple(chunks)))
        return StepTime(0.0, None)


def _run(q: _Queues, cost, sched: SchedulerConfig, cap: int, n_ctx: int,
         steps: list[StepRecord], progress, context_label: str, plan: bool = False) -> None:
    """The scheduler's loop from state ``q`` to the end of the stream. ``plan``: once every
    request has arrived, the rest of the schedule no longer depends on the steps' times (only
    arrivals read the clock), so it is run ahead on a copy of the state with a zero-time cost
    and handed to ``cost.plan_ahead(steps)`` (a cost that simulates may start on them early;
    it is still asked for every step in order)."""
    pending, waiting, running = q.pending, q.waiting, q.running
    kv_used, now = q.kv_used, q.now
    while pending or waiting or running:
        while pending and pending[0].req.arrival_s <= now:
            s = pending.popleft()
            s.refused = refusal(s.req, cap, n_ctx, context_label)
            if s.refused is None:
                waiting.append(s)
        if plan and not pending:
            import copy

            plan = False
            ahead = _PlanCost()
            _run(copy.deepcopy(_Queues(deque(), waiting, running, kv_used, now)), ahead, sched,
                 cap, n_ctx, [], None, context_label)
            cost.plan_ahead(ahead.asked)
        if not waiting and not running:
            if pending:
                now = max(now, pending[0].req.arrival_s)
            continue

        budget = sched.max_num_batched_tokens
        sched_new: dict[int, int] = {}  # id(state) -> tokens this step
        order: list[RequestState] = []
        preempted = 0
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            n = min(s.num_tokens - s.num_computed, budget)
            while kv_used + n > cap:
                victim = running.pop()
                kv_used -= victim.num_computed
                victim.num_computed = 0
                victim.preemptions += 1
                preempted += 1
                waiting.appendleft(victim)
                if victim is s:
                    break
            else:
                kv_used += n
                sched_new[id(s)] = n
                order.append(s)
                budget -= n
                i += 1
                continue
            break
        if not preempted:
            while waiting and budget > 0 and len(running) < sched.max_num_seqs:
                s = waiting[0]
                n = min(s.num_tokens - s.num_computed, budget)
                if kv_used + n > cap:
                    break
                waiting.popleft()
                running.append(s)
                kv_used += n
                sched_new[id(s)] = n
                order.append(s)
                budget -= n
        if not order:
            raise RuntimeError("scheduler made no progress: a request fits alone but nothing "
                               "could be scheduled (a bug in the scheduler)")

        decode, chunks = [], []
        for s in order:
            n = sched_new[id(s)]
            if n == 1 and s.num_output >= 1 and s.num_computed == s.num_tokens - 1:
                decode.append(s.num_computed)
            else:
                chunks.append((s.num_computed, n))
        st = cost.step(decode, chunks)
        end = now + st.time_s
        sampled = 0
        for s in order:
            s.num_computed += sched_new[id(s)]
            if s.num_computed == s.num_tokens:
                s.num_output += 1
                s.token_times_s.append(end)
                sampled += 1
        steps.append(StepRecord(
            start_s=now, time_s=st.time_s, energy_j=st.energy_j, decode_ctx_lens=tuple(decode),
            prefill_chunks=tuple(chunks), num_seqs=len(order), num_running=len(running),
            num_batched_tokens=sched.max_num_batched_tokens - budget, kv_used_tokens=kv_used,
            num_preempted=preempted, output_tokens=sampled,
            per_device_busy_s=tuple(st.per_device_busy_s)))
        for s in [s for s in running if s.done]:
            s.finish_s = end
            kv_used -= s.num_computed
            running.remove(s)
        now = end
        if progress is not None and sampled:
            progress(sampled)
        if not math.isfinite(now):
            raise RuntimeError(f"step time {st.time_s!r} is not finite")
