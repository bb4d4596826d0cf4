"""Mixtures of experts on a PIM system against the GPU model, at batch 1 and a larger batch.

    python benchmarks/bench_moe.py                          # mixtral-8x7b, qwen3-30b-a3b; 1, 64
    python benchmarks/bench_moe.py --models olmoe-1b-7b --batches 1,8 --devices 4

For each model: the zoo preset (shapes from the public config.json, meta weights) on
``aim-gddr6`` devices (one tensor-parallel group; the experts split over the devices, or placed
whole, expert parallelism, where the split does not fit), decode at context ``--context`` (the
prompt skipped: generation at that position), experts chosen by seeded uniform routing (the
report's ``routing``), ``--tokens`` generated tokens. A batched step runs each chosen expert
for the sequences routed to it only (:mod:`pimsim.batch`). ``--devices`` devices, doubled up to
``--max-devices`` while the batch's KV caches do not fit (the row names the devices). Printed:
ms per step, tokens/s, the weight bytes the system reads per step; the analytic GPU model
(``workloads.gpu.model.predict_step``, H100, the fewest GPUs of
``workloads.gpu.model.TP_CHOICES`` (powers of two) that hold the fp16 weights and a full-context
cache: DeepSeek-V3 32, where 20 would hold it but do not divide its 128 heads) at the same
batch and position, which counts the expected union of the batch's experts under uniform
routing, with its preset parameters and fitted to the shipped measured H100 MoE baseline
(``workloads/gpu/data/gpu_measured_h100_moe.json``, Qwen3-30B-A3B's shape; its held-out error:
``python -m workloads.gpu predict --batched`` on that file), and the measured point itself
where one was taken (its KV length is ``--context``). No timed assertions: a script that
prints its figures.

    python benchmarks/bench_moe.py --models deepseek-v3     # 118 devices, tp 2 x pp 59

A model of :data:`SYSTEMS` runs on its own system instead (DeepSeek-V3: the fewest aim-gddr6
devices found that hold it, tp 2 x pp 59, its KV caches reserved for 4,096 tokens; the first
compile takes 30 min, then the compile cache serves it): batch B is B sequences in flight
(vLLM's meaning), split into the pp micro-batches as evenly as possible, each micro-batch a
job of its own size through the stages (:mod:`pimsim.pipeline`, ``in_flight``); where their
caches do not fit, the most sequences that fit run instead, said so. Its ms/step is a round
(every sequence one token: each sequence's time per token), tokens/s B over it (micro-batch
0's latency, stage 0 to the last, in a comment before the row).

    python benchmarks/bench_moe.py --ep --batches 1,32      # TP split against EP
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
import os
import time

from workloads.gpu.model import min_gpus, predict_step

# models run on a system of their own: devices, tp, pp and the KV-cache context compiled for
# (README: the fewest aim-gddr6 devices found for DeepSeek-V3 at a 4,096-token context)
SYSTEMS = {"deepseek-v3": {"devices": 118, "tp": 2, "pp": 59, "context": 4096}}

MOE_MEASURED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "workloads", "gpu", "data", "gpu_measured_h100_moe.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mixtral-8x7b,qwen3-30b-a3b")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--max-devices", type=int, default=16,
                    help="double the devices up to this many until the batch's KV caches fit")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--ep", action="store_true", help="the TP split against expert parallelism")
    ap.add_argument("--routing", choices=["uniform", "skewed"], default="uniform")
    ap.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of skewed routing")
    args = ap.parse_args(argv)
    if args.ep:
        return ep_table(args)
    fitted = gpu_fitted_to_moe()
    measured = measured_moe_points()
    print(f"| model | batch | PIM system | PIM ms/step | PIM tokens/s | PIM weight GB/step | "
          f"{args.gpu} GPUs | {args.gpu} model ms/step | tokens/s | fitted to the measured MoE "
          f"ms/step | tokens/s | measured {args.gpu} ms/step | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        placement = {"ep": False}  # the model's placement, kept from batch to batch
        for b in (int(x) for x in args.batches.split(",")):
            t0 = time.perf_counter()
            pim = pim_row(name, b, args, placement)
            gpu, tp = None, min_gpus(args.gpu, name)  # the fewest of TP_CHOICES that hold it
            if tp is not None:
                gpu = predict_step(args.gpu, name, [args.context - 1] * b, tp=tp)
                least = min_gpus(args.gpu, name, range(1, tp + 1))
                if least != tp:
                    print(f"<!-- {name}: {tp} {args.gpu} GPUs in tensor parallelism (the fewest "
                          f"power of two that holds its fp16 weights and a full cache; at "
                          f"least {least} hold them) -->", flush=True)
            g = f"{tp} | {gpu['ms']:.3f} | {gpu['tokens_per_s']:,.0f}" if gpu else "- | - | -"
            f = "- | -"
            if gpu is not None and fitted is not None:
                fp = predict_step(fitted, name, [args.context - 1] * b, tp=tp)
                f = f"{fp['ms']:.3f} | {fp['tokens_per_s']:,.0f}"
            m = measured.get((name, b, args.context))
            meas = f"{m['ms_per_step']:.3f} | {m['tokens_per_s']:,.0f}" if m else "- | -"
            print(f"| {name} | {b} | {pim} | {g} | {f} | {meas} |  "
                  f"<!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
    return 0


def pim_row(name: str, b: int, args, placement: dict) -> str:
    """The PIM columns of one model and batch: the TP split on ``--devices`` aim-gddr6 devices
    (expert parallelism where the split does not fit), the devices doubled up to
    ``--max-devices`` while the batch's KV caches do not fit (the largest batch that fits the
    most devices run instead, said so)."""
    from pimsim.batch import BatchCapacityError
    from pimsim.errors import HardwareFitError, UserError
    from workloads.session import hw_config, simulate

    if name in SYSTEMS:
        return system_row(name, b, args)
    dev, ep, last = args.devices, placement["ep"], ""
    while dev <= args.max_devices:
        try:
            cfg = hw_config("aim-gddr6", devices=dev, expert_parallel=ep)
            rep = simulate(name, cfg, tokens=args.tokens, prompt=args.context, skip_prompt=True,
                           context=args.context + 8, batch=b if b > 1 else None).report
        except BatchCapacityError as e:
            last = str(e).split(";")[0]
            dev *= 2
            continue
        except (HardwareFitError, UserError) as e:
            if not ep:  # the split does not fit: whole experts on the devices
                ep = placement["ep"] = True
                last = str(e).split(";")[0]
                continue
            return f"- ({str(e).split(';')[0][:80]}) | - | - | -"
        step_ms = rep.extra.get("batch", {}).get("ms_per_step", rep.ms_per_token)
        where = f"{dev} x aim-gddr6, {'ep' if ep else 'tp'} {dev}"
        return (f"{where} | {step_ms:.3f} | {1000 * b / step_ms:,.0f} | "
                f"{rep.weight_bytes_per_step / 1e9:.2f}")
    return f"- ({last[:120]}) | - | - | -"


def system_row(name: str, b: int, args) -> str:
    """The PIM columns of a model of :data:`SYSTEMS` on its own system (a pipeline: ``b``
    sequences in flight, split into its micro-batches), the most sequences that fit where
    ``b`` do not."""
    from pimsim.batch import max_batch
    from workloads.compiling import system_programs
    from workloads.session import compile_model, hw_config, simulate

    sy = SYSTEMS[name]
    cfg = hw_config("aim-gddr6", devices=sy["devices"], tp=sy["tp"], pp=sy["pp"])
    c = compile_model(name, cfg, context=sy["context"])
    fits = sy["pp"] * min(max_batch(p) for p in system_programs(c, cfg))
    run_b = min(b, fits)
    rep = simulate(c, cfg, tokens=args.tokens, prompt=args.context, skip_prompt=True,
                   batch=run_b, in_flight=True).report
    x = rep.extra["batch"]
    sizes = x["micro_batch_sizes"]
    print(f"<!-- {name} {run_b} in flight (micro-batches {max(sizes)} x "
          f"{sizes.count(max(sizes))} + {min(sizes)} x {len(sizes) - sizes.count(max(sizes))}"
          f"): micro-batch 0 {x['ms_per_step']:.3f} ms stage 0 to the last, a round "
          f"{x['round_ms']:.3f} ms, {rep.throughput_tokens_per_s:,.0f} tokens/s of the system, "
          f"{rep.wall_s:.0f} s -->", flush=True)
    where = f"{sy['devices']} devices, tp {sy['tp']} x pp {sy['pp']}"
    if run_b < b:
        where += f" ({run_b} in flight: the most whose KV caches fit)"
    return (f"{where} | {x['round_ms']:.3f} | {rep.throughput_tokens_per_s:,.0f} | "
            f"{rep.weight_bytes_per_step / 1e9:.2f}")


def gpu_fitted_to_moe():
    """The GPU model fitted to the shipped measured MoE baseline
    (``workloads/gpu/data/gpu_measured_h100_moe.json``,
    :func:`workloads.gpu.batched_calibration.calibrate_batched`), None without it."""
    from workloads.gpu.batched_calibration import calibrate_batched, load_batched

    try:
        return calibrate_batched(load_batched(MOE_MEASURED))["gpu"]
    except OSError:
        return None


def measured_moe_points() -> dict:
    """(model, batch, KV length) -> the shipped measured MoE point."""
    import json

    try:
        with open(MOE_MEASURED) as f:
            doc = json.load(f)
    except OSError:
        return {}
    return {(doc["model"], p["batch"], p["kv_len"]): p for p in doc["points"]}


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
