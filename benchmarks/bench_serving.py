"""LLMServingSim's figure-10 serving workload on a PIM system and on the GPU model, timed.

    python benchmarks/bench_serving.py                        # the workload below
    python benchmarks/bench_serving.py --pim-cost serial      # sequences one after another
    python benchmarks/bench_serving.py --num-prompts 32 --output-len 16   # a smaller stream
    python benchmarks/bench_serving.py --plan                 # the schedule only, no simulation

The workload (LLMServingSim, figure 10): 256 requests, all at t = 0 (request rate inf), 128
prompt + 512 output tokens each, Llama-3.1-8B's shape: the zoo preset ``llama3-8b`` (hidden 4096,
32 layers, 32 query / 8 KV heads, vocab 128256; the preset's context is Llama 3's 8192 tokens,
Llama 3.1's 128K only changes the context, which is reserved here for 640 tokens, ``--context``,
so that more sequences' KV regions fit a batched step), on 8 GDDR6-AiM devices (``aim-gddr6
--devices 8``, one tensor-parallel group of 8), vLLM's scheduler limits (256 sequences, 2048
tokens a step). PIM steps are priced by :class:`workloads.serving.costs.PimBatchedCost` (or
``--pim-cost serial``); the same stream is then served on the analytic GPU model (``--gpu``,
H100 by default, ``--gpu-tp`` GPUs).

Printed: the schedule first (with every request at t = 0 the scheduler never waits on the clock,
so its steps do not depend on their times: it is run with a zero-time cost of the PIM system's
KV capacity and context): steps, decode sequence-steps, the distinct batched steps the PIM cost
has to simulate and their sizes; then the PIM serving summary (vLLM ``benchmark_serving`` keys)
with the batched steps simulated and the wall seconds spent in them; the GPU summary; the wall
time of the whole process. No timed assertions: a script that prints its figures.

Measured (``docs/benchmarks.md`` keeps the history): the whole workload on an idle 2-core machine,
two workers, the schedule planned ahead once every request has arrived: 53.9-67.3 s (three runs;
the code before, 94.0 s the same day) with whole channel segments replayed from a memo of their
own and the FR-FCFS choice without a division; 93.7 s
(176 s CPU) with memo keys of one word an item; 122.6, 120.7 and 120.5 s in three runs (241, 237 and 237 s CPU;
compile 0.2 s from the program cache), with pair runs stepped through refreshes as one memo unit;
139.8, 136.9 and 140.0 s (274, 269 and 275 s CPU) before that, with the FR-FCFS closed form
following every periodic stretch of a KV-cache write (a 256-token prefill step 2.05 -> 1.16 s CPU);
before it 175.4, 198.5 and 169.0 s (343, 389 and 332 s CPU), 183.3 and 190.9 s before the stream
building in place and the cached compile, and 896 s wall / 670 s CPU before compact streams, shared
batch caches and the workers; the same PIM summary to the digit (72.61 s, 1,805 output tok/s, TTFT
7,826 ms, TPOT 126.1 ms, 71.87 mJ/output token). ``--num-prompts 32 --jobs 1``: 61.5 s CPU against
109 s (before the FR-FCFS change). One 128-sequence step: about 0.16 s CPU alone (0.41 s before
compact streams). """

from __future__ import annotations

import argparse
import collections
import math
import time

T0 = time.perf_counter()


class _PlanCost:
    """A zero-time step cost with the KV capacity and context of another: for the schedule."""

    name, label = "plan", "schedule only (no time)"

    def __init__(self, like, record):
        self.n_ctx, self.kv_capacity_tokens, self.devices = like.n_ctx, like.kv_capacity_tokens, 1
        self.record = record

    def step(self, decode_ctx_lens, prefill_chunks):
        from workloads.serving.costs import StepTime

        self.record(decode_ctx_lens, prefill_chunks)
        return StepTime(0.0, 0.0, (0.0,))


def plan(cost, reqs, sched) -> None:
    """Print the steps the scheduler takes and what the PIM cost must simulate for them."""
    from workloads.serving.costs import PimBatchedCost
    from workloads.serving.scheduler import simulate_serving

    groups: set[tuple[int, ...]] = set()
    sizes: collections.Counter = collections.Counter()
    n = {"steps": 0, "decode": 0, "prefill_tokens": 0, "positions": set(), "prefill": set()}
    batched_prefill = getattr(cost, "prefill", "token-by-token") == "batched"

    def record(decode, chunks):
        n["steps"] += 1
        n["decode"] += len(decode)
        for s, k in chunks:
            n["prefill_tokens"] += k
            if not batched_prefill:
                n["positions"].update(range(s, s + k))
        if batched_prefill and chunks:
            ch = [tuple(c) for c in chunks]
            for i in range(0, len(ch), cost.max_batch):
                n["prefill"].add(tuple(ch[i:i + cost.max_batch]))
        if isinstance(cost, PimBatchedCost):
            for g in cost.groups(decode):
                if g not in groups:
                    groups.add(g)
                    sizes[len(g)] += 1
        else:
            n["positions"].update(decode)

    simulate_serving(reqs, _PlanCost(cost, record), sched)
    how = (f"batched prefill: {len(n['prefill'])} distinct prefill steps to simulate"
           if batched_prefill else f"token by token: {len(n['positions'])} distinct batch-1 "
                                   f"positions to simulate")
    print(f"schedule: {n['steps']} steps, {n['decode']:,} decode sequence-steps, "
          f"{n['prefill_tokens']:,} prompt tokens ({how})")
    if groups:
        seqs = sum(k * v for k, v in sizes.items())
        print(f"  batched decode steps to simulate: {len(groups)} distinct position tuples, "
              f"{seqs:,} sequences in them (max_batch {cost.max_batch}); sizes "
              f"{dict(sorted(sizes.items()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--hw", default="aim-gddr6")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--context", type=int, default=640,
                    help="KV caches reserved for this many tokens (default 640 = 128 + 512)")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--pim-cost", choices=["batched", "serial"], default="batched")
    ap.add_argument("--prefill", choices=["batched", "token-by-token"], default=None,
                    help="PIM prefill with the batched cost (default batched)")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--gpu-tp", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0,
                    help="processes simulating the PIM steps (default 0: one per core)")
    ap.add_argument("--plan", action="store_true", help="print the schedule only")
    a = ap.parse_args()

    from workloads import session
    from workloads.serving.costs import pim_cost
    from workloads.serving.requests import synthetic
    from workloads.serving.scheduler import SchedulerConfig

    cfg = session.hw_config(a.hw, devices=a.devices)
    t = time.perf_counter()
    c = session.compile_model(a.model, cfg, context=a.context)
    cost = pim_cost(a.pim_cost, c, cfg, prefill=a.prefill, jobs=a.jobs)
    print(f"{a.model} on {cfg.name} x {cfg.system.devices} devices (tp {cfg.system.tp}), "
          f"KV for {c.spec.n_ctx} tokens: compiled in {time.perf_counter() - t:.1f} s; "
          f"KV capacity {cost.kv_capacity_tokens:,} tokens"
          + (f", {cost.max_batch} sequences a batched step" if a.pim_cost == "batched" else ""))
    reqs = synthetic(a.num_prompts, request_rate=math.inf, input_len=a.input_len,
                     output_len=a.output_len)
    sched = SchedulerConfig(max_num_seqs=a.max_num_seqs,
                            max_num_batched_tokens=a.max_num_batched_tokens)
    plan(cost, reqs, sched)
    if a.plan:
        print(f"wall {time.perf_counter() - T0:.1f} s (whole process)")
        return

    kw = dict(requests=reqs, max_num_seqs=a.max_num_seqs,
              max_num_batched_tokens=a.max_num_batched_tokens)
    t = time.perf_counter()
    try:
        pim = session.serve(c, cfg, cost=cost, show_progress=True, **kw)
    finally:
        if hasattr(cost, "close"):
            cost.close()
    pim_wall = time.perf_counter() - t
    print(pim.summary())
    if a.pim_cost == "batched":
        print(f"  simulated {cost.simulated_batch_steps} batched steps in "
              f"{cost.simulated_s:.1f} s ({cost.simulated_s / max(cost.simulated_batch_steps, 1):.2f}"
              f" s each), {cost.positions_simulated} batch-1 positions; serving wall {pim_wall:.1f} s")
        print(f"  {getattr(cost, 'jobs', 1)} process(es) simulating; "
              f"{getattr(cost, 'wasted_steps', 0)} guessed next steps not asked for")
        mu = cost.memo_usage()
        print(f"  kernel memo: {mu['entries']:,} of {mu['max_entries']:,} entries, {mu['words']:,} of "
              f"{mu['capacity_words']:,} words; {mu['hits']:,} units replayed, {mu['misses']:,} "
              f"simulated; cleared {mu.get('cleared', 0):,} times when full, {mu['dropped']:,} "
              f"too large to keep")
    else:
        print(f"  simulated {cost.positions_simulated} batch-1 positions; serving wall {pim_wall:.1f} s")

    t = time.perf_counter()
    gpu = session.serve(a.model, cost=f"gpu:{a.gpu}", gpu_tp=a.gpu_tp, **kw)
    print(gpu.summary())
    print(f"  serving wall {time.perf_counter() - t:.1f} s")
    keys = ("duration", "output_throughput", "mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms",
            "energy_per_output_token_mj")
    print(f"{'':28s} {'PIM':>12s} {a.gpu:>12s}")
    for k in keys:
        p, g = pim.metrics[k], gpu.metrics[k]
        print(f"{k:28s} {p:12.4g} {g:12.4g}")
    print(f"wall {time.perf_counter() - T0:.1f} s (whole process)")


if __name__ == "__main__":
    main()
