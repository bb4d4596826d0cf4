"""PIM system against a GPU under serving load, at several batch sizes: the README's table.

    python examples/serving_table.py                          # llama2-7b, aim-gddr6 x 8 vs H100
    python examples/serving_table.py --model tiny --hw pim-gpt --devices 1 --batches 1 4 \\
        --input-len 8 --output-len 4                          # a quick look

For every batch size B: B requests arrive at t = 0 (``--input-len`` prompt and ``--output-len``
output tokens each) and are served with ``--max-num-seqs B`` by :func:`workloads.session.serve`,
once on the PIM system (the simulator; the default PIM cost: batched decode, batched prefill)
and once on the GPU model (``gpu:NAME``; calibrated on the shipped batched measurement of that
GPU where there is one, the label says). Printed per B and system: output tokens/s, mJ per
output token, mean TTFT and TPOT (ms), vLLM ``benchmark_serving``'s names in the JSON
(``--json FILE``); then the crossover: the smallest B of the list at which the GPU's output
tokens/s exceed the PIM system's. Every number is a serving run's metric; nothing is fitted here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--hw", default="aim-gddr6")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--context", type=int, default=None,
                    help="PIM: reserve the KV caches for this many tokens (default: input + output)")
    ap.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    ap.add_argument("--pim-rows", metavar="FILE",
                    help="take the PIM rows from an earlier --json of the same model, system and "
                         "lengths instead of simulating them again (the GPU rows are priced anew)")
    a = ap.parse_args(argv)
    same = {"model": a.model, "hw": a.hw, "devices": a.devices, "input_len": a.input_len,
            "output_len": a.output_len}
    earlier = {}
    if a.pim_rows:
        with open(a.pim_rows) as f:
            doc = json.load(f)
        if any(doc.get(k) != v for k, v in same.items()):
            raise SystemExit(f"{a.pim_rows} was written for "
                             f"{ {k: doc.get(k) for k in same} }, not {same}")
        earlier = {r["batch"]: r for r in doc["rows"] if r["system"] == "pim"}

    from workloads import session

    context = a.context or a.input_len + a.output_len
    cfg = session.hw_config(a.hw, devices=a.devices)
    compiled = None if all(b in earlier for b in a.batches) else \
        session.compile_model(a.model, cfg, context=context, show_progress=True)
    keys = ("output_throughput", "energy_per_output_token_mj", "mean_ttft_ms", "mean_tpot_ms")
    rows = []
    for b in a.batches:
        kw = dict(num_prompts=b, request_rate=float("inf"), input_len=a.input_len,
                  output_len=a.output_len, max_num_seqs=b)
        for side in ("pim", "gpu"):
            t0 = time.perf_counter()
            if side == "pim" and b in earlier:
                rows.append(earlier[b])
                continue
            if side == "pim":
                res = session.serve(compiled, cfg, **kw)
            else:
                res = session.serve(a.model, cost=f"gpu:{a.gpu}", **kw)
            m = res.metrics
            rows.append({"batch": b, "system": side, "label": res.config["cost_label"],
                         **{k: m[k] for k in keys}, "wall_s": time.perf_counter() - t0})
            print(f"  batch {b:4d} {side}: {m['output_throughput']:,.0f} tok/s "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            if a.json:  # kept as it grows: a long run's finished rows survive an interruption
                with open(a.json, "w") as f:
                    json.dump({**same, "gpu": a.gpu, "rows": rows, "crossover_batch": None}, f,
                              indent=1)
    pim_name = f"{a.hw} x {a.devices}" if a.devices > 1 else a.hw
    print(f"{a.model}: {a.input_len} prompt + {a.output_len} output tokens per request, B requests "
          f"at t = 0, --max-num-seqs B")
    print(f"| batch | {pim_name} tok/s | {a.gpu} tok/s | {pim_name} mJ/token | {a.gpu} mJ/token "
          f"| {pim_name} TTFT ms | {a.gpu} TTFT ms | {pim_name} TPOT ms | {a.gpu} TPOT ms |")
    print("|---:" * 9 + "|")
    by = {(r["batch"], r["system"]): r for r in rows}
    for b in a.batches:
        p, g = by[b, "pim"], by[b, "gpu"]
        print(f"| {b} | {p['output_throughput']:,.0f} | {g['output_throughput']:,.0f} | "
              f"{p['energy_per_output_token_mj']:.3g} | {g['energy_per_output_token_mj']:.3g} | "
              f"{p['mean_ttft_ms']:.3g} | {g['mean_ttft_ms']:.3g} | {p['mean_tpot_ms']:.3g} | "
              f"{g['mean_tpot_ms']:.3g} |")
    cross = next((b for b in a.batches
                  if by[b, "gpu"]["output_throughput"] > by[b, "pim"]["output_throughput"]), None)
    print("crossover: " + (f"GPU output tokens/s exceed PIM's from batch {cross}" if cross
                           else "none in these batches"))
    print(f"PIM: {by[a.batches[0], 'pim']['label']}")
    print(f"GPU: {by[a.batches[0], 'gpu']['label']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**same, "gpu": a.gpu, "rows": rows, "crossover_batch": cross}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
