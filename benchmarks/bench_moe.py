"""Mixtures of experts on a PIM system against the GPU model, at batch 1 and a larger batch.

    python benchmarks/bench_moe.py                          # mixtral-8x7b, qwen3-30b-a3b
    python benchmarks/bench_moe.py --models olmoe-1b-7b --batches 1,8 --devices 4

For each model: the zoo preset (shapes from the public config.json, meta weights) on
``aim-gddr6`` devices (one tensor-parallel group), decode at context ``--context`` (the prompt
skipped: generation at that position), experts chosen by seeded uniform routing (the report's
``routing``), ``--tokens`` generated tokens; printed: ms per step, tokens/s, the weight bytes the
system reads per step, and the analytic GPU model (``workloads.gpu.model.predict_step``, H100,
the fewest GPUs the fp16 weights fit) at the same batch and position, which counts the expected
union of the batch's experts under uniform routing. A batch whose KV regions do not fit the
devices is reported as such. No timed assertions: a script that prints its figures.

    python benchmarks/bench_moe.py --ep                     # TP split against EP
    python benchmarks/bench_moe.py --ep --routing skewed --skew 1.2

``--ep``: instead, each model and batch on the same devices with the experts split tensor-
parallel and with expert parallelism (``--enable-expert-parallel``: whole experts, expert e of
E on device e // (E / devices)), the same seeded routing for both; printed: ms per step of
each, the EP run's expert-load imbalance (max / mean over the devices of the token x expert
pairs, and of the weight bytes each device reads; 1.00 under the TP split) and the weight bytes
the system reads per step (the same under both placements).
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    from pimsim.errors import UserError
    from workloads.gpu.model import predict_step
    from workloads.session import simulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mixtral-8x7b,qwen3-30b-a3b")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--batches", default="1,32")  # 43 mixtral-8x7b sequences fit 8 devices
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--ep", action="store_true", help="the TP split against expert parallelism")
    ap.add_argument("--routing", choices=["uniform", "skewed"], default="uniform")
    ap.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of skewed routing")
    args = ap.parse_args(argv)
    if args.ep:
        return ep_table(args)
    print(f"| model | batch | PIM ({args.devices} x aim-gddr6) ms/step | PIM tokens/s | "
          f"PIM weight GB/step | {args.gpu} GPUs | {args.gpu} ms/step | {args.gpu} tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            t0 = time.perf_counter()
            try:
                res = simulate(name, "aim-gddr6", devices=args.devices, tokens=args.tokens,
                               prompt=args.context, skip_prompt=True, context=args.context + 8,
                               batch=b if b > 1 else None)
                rep = res.report
                step_ms = rep.extra.get("batch", {}).get("ms_per_step", rep.ms_per_token)
                pim = (f"{step_ms:.3f} | {1000 * b / step_ms:,.0f} | "
                       f"{rep.weight_bytes_per_step / 1e9:.2f}")
            except UserError as e:
                pim = f"- ({str(e).split(';')[0][:60]}) | - | -"
            gpu, tp = None, 1
            while gpu is None and tp <= 8:
                try:
                    gpu = predict_step(args.gpu, name, [args.context - 1] * b, tp=tp)
                except ValueError:
                    tp *= 2
            g = f"{tp} | {gpu['ms']:.3f} | {gpu['tokens_per_s']:,.0f}" if gpu else "- | - | -"
            print(f"| {name} | {b} | {pim} | {g} |  <!-- {time.perf_counter() - t0:.0f} s -->",
                  flush=True)
    return 0


def ep_table(args) -> int:
    """The TP split against expert parallelism, one row per model and batch."""
    from pimsim.errors import HardwareFitError, UserError
    from pimsim.moe import Routing
    from workloads.session import hw_config, simulate

    print("| model | batch | routing | TP ms/step | EP ms/step | EP / TP | EP imbalance "
          "(tokens x experts) | EP imbalance (weight bytes) | weight GB/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            t0 = time.perf_counter()
            ms = []
            for ep in (False, True):
                try:
                    cfg = hw_config("aim-gddr6", devices=args.devices, expert_parallel=ep)
                    rep = simulate(name, cfg, tokens=args.tokens, prompt=args.context,
                                   skip_prompt=True, context=args.context + 8,
                                   batch=b if b > 1 else None,
                                   routing=Routing.seeded(0, args.routing, args.skew)).report
                    ms.append(rep.extra.get("batch", {}).get("ms_per_step", rep.ms_per_token))
                except (UserError, HardwareFitError) as e:
                    ms.append(None)
                    print(f"<!-- {name} batch {b} {'EP' if ep else 'TP'}: "
                          f"{str(e).split(';')[0][:160]} -->", flush=True)
            if ms[1] is None:
                print(f"| {name} | {b} | - | - | - | - | - | - | - |", flush=True)
                continue
            tp, ep = ms
            tp_s = "does not fit" if tp is None else f"{tp:.3f}"
            ratio = "-" if tp is None else f"{ep / tp:.2f}"
            load = rep.expert_load["ep"]
            print(f"| {name} | {b} | {rep.routing} | {tp_s} | {ep:.3f} | {ratio} | "
                  f"{load['imbalance']:.2f} | {load['weight_bytes_imbalance']:.2f} | "
                  f"{rep.weight_bytes_per_step / 1e9:.2f} |  "
                  f"<!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
