"""CENT's published Llama 2 results against pimsim with CENT's mapping options and pimsim's
default mapping (issue 23; docs/validation.md, "CENT's system results").

CENT (Chen et al., ASPLOS'25) publishes, per model, the per-token latency of tensor parallelism
over all devices (the TP rows) and the throughput of a pipeline of one transformer block per
stage, several stages per device (the PP rows), at sequence lengths 128..4096
(Yufeng98/CENT@9b4165f cent_simulation/simulation_results.csv; throughput = stages x 1000 /
token latency). pimsim simulates one token at each position (the earlier positions' KV caches
filled, ``skip_prompt``) on examples/cent/cent-<devices>.toml (CENT's options: ``attention =
"master"``, ``host_sample_ns``, ``lowering = "cent"``, ``placement = "cent"``, ``host_lines =
"device"``, CENT's lanes per device, ``unicast_bw_factor = 0.5`` and the device's ``[pim]`` with
CENT's 32 latches per bank, the attention reading one at a time) and on
the same devices as shipped (``aim-gddr6``: ``attention = "split"``, native GQA, no host time,
the default fabric; PP rows: one stage per device).
PP rows: pimsim's throughput is CENT's steady state of a full pipeline, stages / (token latency
+ the token's return with the host's sampling), the token latency being each stage's job (the
mean of the position's jobs, the pipeline filling with the other sequences' tokens; where stages
share a device they wait for its ASIC, ``pimsim.pipeline.DeviceAsics``) plus the sends between
stages (the report's ``system["stage_job_cyc"]``, ``["stage_send_cyc"]``,
``["token_return_cyc"]``). CENT multiplies every block's accelerator time by the blocks on its
device (Yufeng98/CENT@9b4165f cent_simulation/run_sim.py:201).

    python benchmarks/reproduce_cent.py [--models llama2-7b] [--seqs 128,4096] [--rows tp,pp]

Prints one line per point as it finishes (a 7B point takes about half a minute on one core;
70B's compile takes minutes)."""

from __future__ import annotations

import argparse
import time

CENT_COMMIT = "9b4165f2192b1abd8fc755c172ea5e39c788cda4"
# (model, pp, tp, seq) -> (token latency ms, throughput tokens/s), CENT@9b4165f
CENT = {
    ("llama2-7b", 1, 8, 128): (0.9806, 1019.8), ("llama2-7b", 1, 8, 512): (1.1050, 905.0),
    ("llama2-7b", 1, 8, 1024): (1.2709, 786.8), ("llama2-7b", 1, 8, 2048): (1.6271, 614.6),
    ("llama2-7b", 1, 8, 4096): (2.3371, 427.9),
    ("llama2-7b", 32, 1, 128): (7.5057, 4263.4), ("llama2-7b", 32, 1, 512): (8.1723, 3915.7),
    ("llama2-7b", 32, 1, 1024): (9.0611, 3531.6), ("llama2-7b", 32, 1, 2048): (10.9236, 2929.4),
    ("llama2-7b", 32, 1, 4096): (14.6467, 2184.8),
    ("llama2-13b", 1, 20, 128): (1.5844, 631.2), ("llama2-13b", 1, 20, 512): (1.7831, 560.8),
    ("llama2-13b", 1, 20, 1024): (2.0503, 487.7), ("llama2-13b", 1, 20, 2048): (2.6403, 378.7),
    ("llama2-13b", 1, 20, 4096): (3.8177, 261.9),
    ("llama2-13b", 40, 1, 128): (7.2106, 5547.4), ("llama2-13b", 40, 1, 512): (7.6920, 5200.2),
    ("llama2-13b", 40, 1, 1024): (8.3931, 4765.8), ("llama2-13b", 40, 1, 2048): (9.8761, 4050.2),
    ("llama2-13b", 40, 1, 4096): (12.8398, 3115.3),
    ("llama2-70b", 1, 32, 128): (5.4135, 184.7), ("llama2-70b", 1, 32, 512): (6.1353, 163.0),
    ("llama2-70b", 1, 32, 1024): (7.0979, 140.9), ("llama2-70b", 1, 32, 2048): (9.4373, 106.0),
    ("llama2-70b", 1, 32, 4096): (14.1115, 70.9),
    ("llama2-70b", 80, 1, 128): (54.7950, 1460.0), ("llama2-70b", 80, 1, 512): (57.4738, 1391.9),
    ("llama2-70b", 80, 1, 1024): (60.7816, 1316.2), ("llama2-70b", 80, 1, 2048): (67.8174, 1179.6),
    ("llama2-70b", 80, 1, 4096): (82.1519, 973.8),
}
DEVICES = {"llama2-7b": 8, "llama2-13b": 20, "llama2-70b": 32}
LAYERS = {"llama2-7b": 32, "llama2-13b": 40, "llama2-70b": 80}


def point(model: str, hw: str, seq: int, tp: int, pp: int, attention: str | None = None):
    """(ms per token, tokens/s) of one token at position ``seq`` (steady-state pipeline
    throughput with ``pp`` stages)."""
    from workloads.session import simulate

    r = simulate(model, hw, tp=tp, pp=pp, tp_attention=attention, prompt=seq, tokens=1,
                 skip_prompt=True, context=4096)
    ms = r.report.ms_per_token
    if pp == 1:
        return ms, 1000.0 / ms
    sy = r.report.system
    cyc = sum(sy["stage_job_cyc"]) + sum(sy["stage_send_cyc"]) + sy["token_return_cyc"]
    return ms, pp * 1000.0 / (r.cfg.timing.ns(cyc) / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama2-7b,llama2-13b,llama2-70b")
    ap.add_argument("--seqs", default="128,512,1024,2048,4096")
    ap.add_argument("--rows", default="tp,pp", help="tp (latency rows), pp (throughput rows)")
    ap.add_argument("--no-default", action="store_true", help="skip pimsim's default mapping")
    a = ap.parse_args()
    print(f"CENT figures: Yufeng98/CENT@{CENT_COMMIT[:7]} cent_simulation/simulation_results.csv")
    print(f"{'model':11} {'row':4} {'seq':>5} {'CENT':>9} {'CENT opts':>9} {'diff':>7} "
          f"{'default':>9}  unit      wall s")
    for model in a.models.split(","):
        n = DEVICES[model]
        hw = f"examples/cent/cent-{n}.toml"
        for row in a.rows.split(","):
            tp, pp = (n, 1) if row == "tp" else (1, LAYERS[model])
            for seq in (int(s) for s in a.seqs.split(",")):
                t0 = time.time()
                lat, thr = CENT[(model, pp, tp, seq)]
                ms, tps = point(model, hw, seq, tp, pp)
                want, got = (lat, ms) if row == "tp" else (thr, tps)
                dflt = ""
                if not a.no_default:  # aim-gddr6 devices as they ship: tp over all, or pp = n
                    dms, dtps = point(model, "aim-gddr6", seq, n if row == "tp" else 1,
                                      1 if row == "tp" else n, "split")
                    dflt = f"{dms:9.3f}" if row == "tp" else f"{dtps:9.1f}"
                unit = "ms/token" if row == "tp" else "tokens/s"
                print(f"{model:11} {row:4} {seq:5d} {want:9.3f} {got:9.3f} "
                      f"{(got - want) / want * 100:+6.1f}% {dflt:>9}  {unit}  "
                      f"{time.time() - t0:6.0f}", flush=True)


if __name__ == "__main__":
    main()
