"""LLMServingSim's figure-10 workload: an H100 alone against an H100 with attention on PIM.

    python benchmarks/bench_xpu_pim.py                          # 256 requests of 128 + 512
    python benchmarks/bench_xpu_pim.py --num-prompts 32         # a smaller stream
    python benchmarks/bench_xpu_pim.py --hw hbm3-pim --overlap  # one PIM device, overlapped too

The workload (LLMServingSim 2.0, evaluation/figure_10): 256 requests, all at t = 0, 128 prompt +
512 output tokens each, Llama-3.1-8B's shape (the zoo preset ``llama3-8b``; its KV caches
reserved for 640 tokens), vLLM's limits (256 sequences, 2048 tokens a step). The same stream is
served on:

* the H100 of the analytic GPU model alone (``serve --gpu H100``);
* the H100 with attention offloaded to PIM (``serve --xpu H100 --offload attention``) on
  ``--pim-devices`` devices (8; tensor-parallel heads) of each ``--hw`` config: ``hbm3-pim``
  (AttAcc's HBM3-PIM stacks on the GPU's package, ``--link package``) and ``aim-gddr6``
  (GDDR6-AiM devices behind CXL, ``--link cxl``).

The PIM attention is priced per sequence (``attention_cost="per-sequence"``, memoised per
position: the full stream needs one simulation per position instead of one per distinct batch of
positions); the script first prints, on one sampled step, the batched simulation beside it.

Printed per system: output tokens/s, mean TPOT, J per output token, each side's busy time; then
the changes against the H100 alone next to LLMServingSim's published figure-10 changes (one A6000
+ an HBM2 PIM pool: +15.2 % throughput, -19.6 % TPOT, -12.8 % J/token; 2,501.6 -> 2,881.9 tokens/s,
63.29 -> 50.86 ms, 0.282 -> 0.246 J/token). No timed assertions: figures to read.

Measured on a loaded 2-core machine, ``--overlap``, the whole stream on 8 PIM devices: 513 s
(hbm3-pim 69 s, aim-gddr6 427 s): H100 alone 16,347 tokens/s; + hbm3-pim x 8 7,784, overlapped
9,720; + aim-gddr6 x 8 9,774, overlapped 10,047 (85 preemptions each: the devices' KV regions
hold 108,800 of the stream's 163,840 tokens; the figures and the reasons are in
docs/guide.md). On 2 devices (65,536 tokens) the full stream did not finish in 40 minutes,
every recomputed chunk's K/V writes being a new simulation; ``--pim-devices 2 --output-len
128`` took 405 s.
"""

from __future__ import annotations

import argparse
import time

T0 = time.perf_counter()

PUBLISHED = {"output_throughput": (2501.6, 2881.9), "mean_tpot_ms": (63.29, 50.86),
             "j_per_token": (0.282, 0.246)}  # LLMServingSim figure 10 (GPU only, PIM attention)
LINK_FOR = {"hbm3-pim": "package", "hbm3-pim-power": "package", "hbm-pim": "package"}


def metrics(res) -> dict:
    m = res.metrics
    return {"output_throughput": m["output_throughput"], "mean_tpot_ms": m["mean_tpot_ms"],
            "j_per_token": m["energy_per_output_token_mj"] / 1e3,
            "duration": m["duration"], "preemptions": m["num_preemptions"]}


def line(name: str, m: dict, base: dict | None, extra: str = "") -> str:
    out = (f"{name:<44} {m['output_throughput']:>9,.0f} tok/s  TPOT {m['mean_tpot_ms']:>7.2f} ms  "
           f"{m['j_per_token']:.4f} J/tok  ({m['preemptions']} preemptions)")
    if base is not None:
        d = [100 * (m[k] / base[k] - 1) for k in ("output_throughput", "mean_tpot_ms",
                                                    "j_per_token")]
        out += f"\n{'':<44} vs H100 alone: {d[0]:+.1f} % tok/s, {d[1]:+.1f} % TPOT, {d[2]:+.1f} % J/tok"
    return out + extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--xpu", default="H100")
    ap.add_argument("--hw", default="hbm3-pim,aim-gddr6", help="PIM configs, comma-separated")
    ap.add_argument("--pim-devices", type=int, default=8,
                    help="PIM devices per system, heads split over them (default 8: their KV "
                         "regions hold 108,800 tokens at a 640-token reservation; two hold "
                         "65,536, and the stream's preempted requests then take too long)")
    ap.add_argument("--overlap", action="store_true", help="also the overlapped sub-batches")
    ap.add_argument("--no-sample", action="store_true",
                    help="skip the batched-vs-per-sequence check on one step")
    a = ap.parse_args()

    from workloads import session
    from workloads.compiling import compile_model, hw_config
    from workloads.serving.requests import synthetic
    from workloads.xpu.cost import XpuPimCost

    ctx = a.input_len + a.output_len
    reqs = synthetic(a.num_prompts, input_len=a.input_len, output_len=a.output_len)
    print(f"{a.num_prompts} requests of {a.input_len} + {a.output_len} tokens at t = 0, "
          f"{a.model}, max_num_seqs 256, max_num_batched_tokens 2048")
    t = time.perf_counter()
    base_res = session.serve(a.model, cost=f"gpu:{a.xpu}", requests=reqs)
    base = metrics(base_res)
    print(line(f"{a.xpu} alone", base, None, f"  [{time.perf_counter() - t:.0f} s]"))
    for hw in a.hw.split(","):
        link = LINK_FOR.get(hw, "cxl")
        cfg = hw_config(hw, devices=a.pim_devices, tp=a.pim_devices)
        t = time.perf_counter()
        c = compile_model(a.model, cfg, context=ctx)
        print(f"  compiled {a.model} for {hw} x {a.pim_devices} in {time.perf_counter() - t:.0f} s")
        if not a.no_sample:
            fast = XpuPimCost(c, cfg, a.model, xpu=a.xpu, link=link,
                              attention_cost="per-sequence")
            exact = XpuPimCost(c, cfg, a.model, xpu=a.xpu, link=link)
            pos = [a.input_len - 1 + i * (a.output_len - 1) // 15 for i in range(16)]
            t = time.perf_counter()
            pe = exact.pim_attention(pos)[0]
            te = time.perf_counter() - t
            t = time.perf_counter()
            pf = fast.pim_attention(pos)[0]
            tf = time.perf_counter() - t
            print(f"  sampled step, 16 sequences at {pos[0]}..{pos[-1]}: PIM attention batched "
                  f"{pe * 1e3:.3f} ms ({te:.1f} s to simulate), per sequence {pf * 1e3:.3f} ms "
                  f"({tf:.1f} s): {100 * (pf / pe - 1):+.2f} %")
        prev = None
        for overlap in ((False, True) if a.overlap else (False,)):
            cost = XpuPimCost(c, cfg, a.model, xpu=a.xpu, link=link, placement="attention",
                              overlap=overlap, attention_cost="per-sequence")
            if prev is not None:
                cost.share_simulations(prev)  # the same positions: simulated once
            prev = cost
            t = time.perf_counter()
            res = session.serve(a.model, cost=cost, requests=reqs)
            m = metrics(res)
            b, e = cost.totals.busy_s, cost.totals.energy_j
            name = f"{a.xpu} + attention on {hw} x {a.pim_devices} ({link})" + \
                (", overlap" if overlap else "")
            print(line(name, m, base, f"  [{time.perf_counter() - t:.0f} s]"))
            print(f"{'':<44} busy: xPU {b['xpu']:.2f} s, PIM {b['pim']:.2f} s, link "
                  f"{b['link_to_pim'] + b['link_from_pim']:.3f} s of {cost.totals.time_s:.2f} s; "
                  f"energy xPU {e['xpu']:.0f} J, PIM {e['pim']:.1f} J, link {e['link']:.2f} J; "
                  f"KV capacity {cost.kv_capacity_tokens:,} tokens")
    p = PUBLISHED
    print("LLMServingSim figure 10 (A6000 + HBM2 PIM pool): "
          f"{100 * (p['output_throughput'][1] / p['output_throughput'][0] - 1):+.1f} % tok/s, "
          f"{100 * (p['mean_tpot_ms'][1] / p['mean_tpot_ms'][0] - 1):+.1f} % TPOT, "
          f"{100 * (p['j_per_token'][1] / p['j_per_token'][0] - 1):+.1f} % J/tok")
    print(f"wall {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    main()
