"""The command line of the GPU baselines: ``python -m workloads.gpu COMMAND``.

* ``predict [MEASURED] [--tp 1,2,4,8]`` -- the analytic model against the shipped (or given) GPT
  measurement, against the Llama measurement, and modelled for every zoo preset on 1..N GPUs
  (:mod:`workloads.gpu.tables`); no GPU needed;
* ``predict --batched FILE`` -- the batched model fitted to a ``measure batched`` JSON, with the
  error on the held-out batch sizes and prompt lengths
  (:mod:`workloads.gpu.batched_calibration`);
* ``measure gpt -o FILE`` -- the measured GPT baseline (:mod:`workloads.gpu.baseline`);
* ``measure llama -o FILE`` -- the measured Llama-family baseline on one GPU
  (:mod:`workloads.gpu.llama`);
* ``measure llama-tp --tp N -o FILE`` -- the same, tensor parallel over N GPUs of one host
  (:mod:`workloads.gpu.llama_tp`);
* ``measure batched -o FILE`` -- Llama-family batched decode and prefill at every batch size
  (:mod:`workloads.gpu.batched`).

Every ``measure`` command has ``--dry-run``: the same code path on the CPU with tiny configs.
Bad input gives one line, ``pimsim: error: <problem>; <fix>``, and exit status 2 (the handler
is :func:`pimsim.cli.run_command`). The measurement modules are imported only by the command
that needs them, so ``predict`` and ``--help`` do not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from pimsim.cli import Parser, add_debug_flags, int_in, run_command
from pimsim.errors import UserError
from workloads.gpu.llama_shapes import (
    DEFAULT_BATCHES,
    DEFAULT_KV_LENS,
    DEFAULT_MODELS,
    DEFAULT_PREFILL_BATCHED,
    DEFAULT_PROMPTS,
    DRY_RUN_BATCHES,
    DRY_RUN_KV_LENS,
    DRY_RUN_MODELS,
    DRY_RUN_PREFILL_BATCHED,
    DRY_RUN_PROMPTS,
    SHAPES,
    TP_DEFAULT_MODELS,
    VALIDATION_CONFIGS,
    get_shape,
)

MEASURED_FIX = "give a JSON written by python -m workloads.gpu measure gpt (or measure llama)"


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def _gpu_counts(text: str) -> list[int]:
    """``--tp``: comma-separated positive GPU counts."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--tp {text!r} is not a comma-separated list of GPU counts",
                        "give e.g. --tp 1,2,4,8") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--tp {text!r} has a GPU count below 1", "give e.g. --tp 1,2,4,8")
    return counts


BATCHED_FIX = "give a JSON written by python -m workloads.gpu measure batched"


def _predict_batched(path: str) -> int:
    """``predict --batched FILE``: the batched fit and its held-out error table."""
    from workloads.gpu.batched_calibration import batched_table, calibrate_batched, load_batched

    try:
        doc = load_batched(path)
    except OSError as e:
        raise UserError(f"batched measurement {path!r} cannot be read ({e.strerror})",
                        BATCHED_FIX) from None
    except ValueError as e:
        raise UserError(f"batched measurement {path!r}: {e}", BATCHED_FIX) from None
    try:
        cal = calibrate_batched(doc)
    except ValueError as e:
        raise UserError(f"batched measurement {path!r}: {e}", BATCHED_FIX) from None
    print(f"Batched decode and prefill, measured vs model ({path}):")
    print(batched_table(cal))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from workloads.gpu.calibration import load_measured
    from workloads.gpu.tables import batch_zoo_table, compare_table, llama_table, zoo_table

    if args.batched is not None:
        return _predict_batched(args.batched)
    tps = _gpu_counts(args.tp)
    measured = None
    if args.measured is not None:
        try:
            measured = load_measured(args.measured)
        except OSError as e:
            raise UserError(f"measured file {args.measured!r} cannot be read ({e.strerror})",
                            MEASURED_FIX) from None
        except UserError:  # a figure that no GPU can have: the message names the file
            raise
        except ValueError as e:
            raise UserError(f"measured file {args.measured!r}: {e}", MEASURED_FIX) from None
    print(compare_table(measured))
    try:
        print()
        print("Llama-family decode (gated path), measured vs model:")
        print(llama_table())
    except FileNotFoundError:
        pass
    print()
    print("Zoo presets, modelled:")
    print(zoo_table(tps=tps))
    print()
    print("Batched decode, modelled:")
    print(batch_zoo_table())
    return 0


# --------------------------------------------------------------------------------------------
# measure gpt2 / llama / llama-tp / batched
# --------------------------------------------------------------------------------------------


def _no_cuda(tp: int = 1) -> UserError:
    return UserError("no CUDA device" if tp == 1 else f"--tp {tp} needs {tp} CUDA GPUs",
                     "run on a GPU machine, or use --dry-run on a CPU")


def _save_json(doc: dict[str, Any], path: str) -> None:
    from pimsim.outputs import atomic_write

    with atomic_write(path, "output JSON (-o)") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def cmd_measure_gpt(args: argparse.Namespace) -> int:
    import torch

    from workloads.gpu.baseline import ALL_MODELS, gpu_slug, run_baseline, summary_table
    from workloads.models.presets import PRESETS

    if args.dry_run:
        models = ["tiny"] if args.models == ["all"] else list(args.models)
        device = "cpu"
    else:
        models = list(ALL_MODELS) if args.models == ["all"] else list(args.models)
        if not torch.cuda.is_available():
            raise _no_cuda()
        device = "cuda"
    for m in models:
        if m not in PRESETS:
            raise UserError(f"unknown preset {m!r}", f"use one of {', '.join(PRESETS)} (or all)")
    doc = run_baseline(models, device=device, repeats=args.repeats,
                       power_s=args.power_seconds, eager_power_s=args.eager_power_seconds,
                       idle_s=args.idle_seconds, seed=args.seed, batch_s=args.batch_seconds)
    out = args.output.replace("{gpu}", gpu_slug(doc["info"].get("gpu")))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    _save_json(doc, out)
    print(summary_table(doc))
    print(f"wrote {out}")
    return 0


def _check_shapes(models: Sequence[str]) -> None:
    for m in models:
        if m not in SHAPES:
            raise UserError(f"unknown shape {m!r}", f"use one of {', '.join(SHAPES)}")


def cmd_measure_llama(args: argparse.Namespace) -> int:
    import torch

    from workloads.gpu.llama import run_baseline, summary_table

    if args.dry_run:
        models, device, val = list(args.models or DRY_RUN_MODELS), "cpu", DRY_RUN_MODELS
    else:
        if not torch.cuda.is_available():
            raise _no_cuda()
        models, device, val = list(args.models or DEFAULT_MODELS), "cuda", VALIDATION_CONFIGS
    _check_shapes(models)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    def save(doc: dict[str, Any]) -> None:
        _save_json(doc, args.output)

    dtype = getattr(torch, args.dtype) if args.dtype and not args.dry_run else None
    doc = run_baseline(models, device=device, repeats=args.repeats, power_s=args.power_seconds,
                       idle_s=args.idle_seconds, seed=args.seed, batch_s=args.batch_seconds,
                       dtype=dtype, validation_configs=val, checkpoint=save)
    save(doc)
    print(summary_table(doc))
    print(f"wrote {args.output}")
    return 0


def _model_list(arg: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """``--models`` of ``measure llama-tp``: comma or space separated."""
    if not arg:
        return list(default)
    return [m.strip() for a in arg for m in a.split(",") if m.strip()]


def cmd_measure_llama_tp(args: argparse.Namespace) -> int:
    import torch

    from workloads.gpu.llama_tp import add_predictions, check_tp, save_json_atomic, spawn, summary_table

    if args.dry_run:
        models, val = _model_list(args.models, DRY_RUN_MODELS), DRY_RUN_MODELS
    else:
        models, val = _model_list(args.models, TP_DEFAULT_MODELS), VALIDATION_CONFIGS
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpu < args.tp:
            raise UserError(f"--tp {args.tp} needs {args.tp} CUDA GPUs, found {n_gpu}",
                            f"run on a machine with >= {args.tp} GPUs (or lower --tp, or "
                            f"--dry-run on a CPU)")
    _check_shapes(list(models) + list(val))
    for m in list(models) + list(val):
        try:
            check_tp(get_shape(m), args.tp)
        except ValueError as e:
            raise UserError(str(e)) from None
    out = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    kw = dict(models=models, repeats=args.repeats, power_s=args.power_seconds,
              idle_s=args.idle_seconds, seed=args.seed, batch_s=args.batch_seconds,
              validation_configs=list(val), dtype=None if args.dry_run else args.dtype)
    spawn(args.tp, out, cpu=args.dry_run, **kw)
    with open(out) as f:
        doc = json.load(f)
    add_predictions(doc)
    save_json_atomic(doc, out)
    print(summary_table(doc))
    print(f"wrote {out}")
    return 0


def _positive_int(text: str) -> int:
    """``measure batched``'s batch sizes and lengths: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _prefill_pair(text: str) -> tuple[int, int]:
    """``--prefill-batched``: PROMPTxBATCH."""
    try:
        p, b = (int(x) for x in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write PROMPTxBATCH, e.g. 512x4") from None
    if p < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: prompt and batch must be >= 1")
    return p, b


def cmd_measure_batched(args: argparse.Namespace) -> int:
    import torch

    from workloads.gpu.batched import Settings, run_batched, save_json, summary_table

    if args.dry_run:
        device, val = "cpu", DRY_RUN_MODELS
        models = list(args.models or DRY_RUN_MODELS)
        batches = args.batches or DRY_RUN_BATCHES
        kv_lens = args.kv_lens or DRY_RUN_KV_LENS
        prompts = args.prompts or DRY_RUN_PROMPTS
        pb = DRY_RUN_PREFILL_BATCHED if args.prefill_batched is None else args.prefill_batched
        settings = Settings(repeats=min(args.repeats, 2), batch_s=0.01, prewarm_s=0.0, power_s=0.0,
                            ramp_s=0.0, idle_s=0.0, seed=args.seed,
                            decode_attention=args.decode_attention)
    else:
        if not torch.cuda.is_available():
            raise _no_cuda()
        device, val = "cuda", VALIDATION_CONFIGS
        models = list(args.models or DEFAULT_MODELS)
        batches = args.batches or DEFAULT_BATCHES
        kv_lens = args.kv_lens or DEFAULT_KV_LENS
        prompts = args.prompts or DEFAULT_PROMPTS
        pb = DEFAULT_PREFILL_BATCHED if args.prefill_batched is None else args.prefill_batched
        settings = Settings(repeats=args.repeats, batch_s=args.batch_seconds,
                            power_s=args.power_seconds, ramp_s=args.ramp_seconds,
                            idle_s=args.idle_seconds, seed=args.seed,
                            decode_attention=args.decode_attention)
    _check_shapes(models)
    dtype = getattr(torch, args.dtype) if args.dtype and not args.dry_run else None

    def save(doc: dict[str, Any]) -> None:
        save_json(doc, args.output)

    doc = run_batched(models, device=device, dtype=dtype, batches=batches, kv_lens=kv_lens,
                      prompts=prompts, prefill_batched=pb, settings=settings,
                      validation_configs=val, checkpoint=save)
    print(summary_table(doc))
    print(f"wrote {args.output.replace('{gpu}', doc['info']['gpu_slug'])}")
    return 0


def _add_llama_measure_args(ap: argparse.ArgumentParser, dry_run_help: str) -> None:
    """The options ``measure llama`` and ``measure llama-tp`` share."""
    ap.add_argument("-o", "--output", required=True, help="output JSON")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--power-seconds", type=float, default=3.0)
    ap.add_argument("--idle-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-seconds", type=float, default=0.1)
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default=None,
                    help="weights and KV cache on the GPU (default float16; the dry run uses float32)")
    ap.add_argument("--dry-run", action="store_true", help=dry_run_help)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m workloads.gpu",
               description="GPU baselines of batch-1 decode: the analytic model and the "
                           "measurements it is calibrated on.")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = sub.add_parser("predict", help="the analytic model: measured vs modelled, and the zoo "
                                        "presets on 1..N GPUs (no GPU needed)")
    pr.add_argument("measured", nargs="?", default=None,
                    help="GPT measurement JSON (default: the shipped one)")
    pr.add_argument("--tp", default="1,2,4,8", help="GPU counts for the zoo table (default 1,2,4,8)")
    pr.add_argument("--batched", metavar="FILE", default=None,
                    help="instead: fit the batched model to a measure-batched JSON and print "
                         "the held-out error table")
    pr.set_defaults(func=cmd_predict)

    me = sub.add_parser("measure", help="measure batch-1 decode on this machine's GPU(s)")
    msub = me.add_subparsers(dest="baseline", required=True, metavar="BASELINE")

    g = msub.add_parser("gpt", aliases=["gpt2"],
                        help="GPT presets: eager and CUDA-graph decode, time and power",
                        description="Measured GPU baseline: batch-1 GPT decode latency and "
                                    "energy on a CUDA GPU (workloads.gpu.baseline).")
    g.add_argument("--models", nargs="+", default=["all"], help="'all' or preset names")
    g.add_argument("-o", "--output", required=True,
                   help="output JSON; '{gpu}' in the path is replaced by the GPU tag (h100, h200, cpu)")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--power-seconds", type=float, default=3.0, help="graph power loop length")
    g.add_argument("--eager-power-seconds", type=float, default=2.0, help="eager power loop (0: skip)")
    g.add_argument("--idle-seconds", type=float, default=2.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-seconds", type=float, default=0.1,
                   help="length of one timed batch of back-to-back steps (one repeat)")
    g.add_argument("--dry-run", action="store_true",
                   help="same code path on the CPU for preset 'tiny' (fp32, perf_counter, no power)")
    g.set_defaults(func=cmd_measure_gpt)

    ll = msub.add_parser("llama", help="Llama-family shapes on one GPU, checked against transformers",
                         description="Measured GPU baseline for Llama-family decoders: batch-1 "
                                     "decode latency and energy (workloads.gpu.llama).")
    ll.add_argument("--models", nargs="+", default=None,
                    help=f"shapes to measure (default {' '.join(DEFAULT_MODELS)}; dry run: "
                         f"{' '.join(DRY_RUN_MODELS)}); known: {', '.join(SHAPES)}")
    _add_llama_measure_args(ll, "same code path on the CPU for tiny configs (fp32, perf_counter, "
                                "no power)")
    ll.set_defaults(func=cmd_measure_llama)

    tp = msub.add_parser("llama-tp", help="Llama-family shapes tensor parallel over N GPUs",
                         description="Measured multi-GPU tensor-parallel baseline for "
                                     "Llama-family batch-1 decode (workloads.gpu.llama_tp).")
    tp.add_argument("--models", nargs="+", default=None,
                    help=f"shapes, comma or space separated (default {','.join(TP_DEFAULT_MODELS)}; "
                         f"dry run: {','.join(DRY_RUN_MODELS)}); known: {', '.join(SHAPES)}")
    tp.add_argument("--tp", type=int_in(1, what="tensor-parallel size"), default=2,
                    help="tensor-parallel size: GPUs (processes)")
    _add_llama_measure_args(tp, "same code path on the CPU: gloo, tiny configs, fp32, no power")
    tp.set_defaults(func=cmd_measure_llama_tp)

    b = msub.add_parser("batched", help="Llama-family batched decode and prefill at every batch size",
                        description="Measured GPU baseline for Llama-family decoders at every "
                                    "batch size: batched decode and prefill, each one CUDA graph, "
                                    "time and power (workloads.gpu.batched).")
    b.add_argument("-o", "--output", required=True,
                   help="output JSON, rewritten after every point; '{gpu}' becomes the GPU tag")
    b.add_argument("--models", nargs="+", default=None,
                   help=f"shapes (default {' '.join(DEFAULT_MODELS)}; dry run "
                        f"{' '.join(DRY_RUN_MODELS)}); known: {', '.join(SHAPES)}")
    b.add_argument("--batches", nargs="+", type=_positive_int, default=None,
                   help=f"decode batch sizes (default {' '.join(map(str, DEFAULT_BATCHES))})")
    b.add_argument("--kv-lens", nargs="+", type=_positive_int, default=None,
                   help=f"decode KV lengths (default {' '.join(map(str, DEFAULT_KV_LENS))})")
    b.add_argument("--prompts", nargs="+", type=_positive_int, default=None,
                   help=f"batch-1 prefill lengths (default {' '.join(map(str, DEFAULT_PROMPTS))})")
    b.add_argument("--prefill-batched", nargs="*", type=_prefill_pair, default=None,
                   help="prefill points at a batch above 1 as PROMPTxBATCH (default 512x4)")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--batch-seconds", type=float, default=0.1, help="one timed round")
    b.add_argument("--power-seconds", type=float, default=1.5, help="sampled power loop")
    b.add_argument("--ramp-seconds", type=float, default=0.5, help="power loop ramp")
    b.add_argument("--idle-seconds", type=float, default=2.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--decode-attention", choices=("bmm", "kq", "sdpa"), default="bmm",
                   help="decode attention formulation (workloads.gpu.batched.decode_attention; "
                        "default bmm)")
    b.add_argument("--dtype", choices=("float16", "bfloat16"), default=None,
                   help="weights and KV cache on the GPU (default float16; the dry run uses float32)")
    b.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shapes and lengths, fp32, no graphs, no power (seconds)")
    b.set_defaults(func=cmd_measure_batched)
    add_debug_flags(p)
    add_debug_flags(me)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workloads.gpu``: bad input -> one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
