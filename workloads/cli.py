"""The ``pimsim`` command line.

It sits at the top of the dependency arrow (workloads -> compiler -> pimsim). It only parses
the command line, calls the library API (:mod:`workloads.session`) and prints:

    pimsim trace FILE --hw CONFIG            replay an AiM instruction trace
    pimsim compile MODEL --hw CONFIG -o FILE lower a model to a PIM program, print the mapping
        [--aim-trace FILE] [--pos P]         ... and write one decode step as an AiM trace
    pimsim run MODEL --hw CONFIG --prompt P --tokens N [--prefill batched|token-by-token]
               [--functional] [--json] [--batch B[,B..] [--in-flight]]
    pimsim validate MODEL --hw CONFIG --tokens N --reference auto|cpu|cuda|FILE.npz
    pimsim compare MODEL... --hw CONFIG --gpu NAME|FILE [--plot DIR] [--batch 1,16,64,256
        [--pim-cost batched|serial]]
    pimsim sweep SPEC.toml [--workers N] [--cluster ADDRESS] [--db FILE] [--plot DIR] [--csv F]
    pimsim serve MODEL --hw CONFIG [--requests FILE.jsonl | --num-prompts N --request-rate R
        --input-len L --output-len L [--length-dist sharegpt] --seed S] --max-num-seqs N
        --max-num-batched-tokens N [--gpu NAME | --pim-cost batched|serial] [--context N]
        [--json] [--csv FILE] [--plot DIR] [--xpu NAME [--link L] [--offload attention |
        --prefill-on xpu | --placement P] [--overlap]]
    pimsim export attention-table MODEL --hw CONFIG [--lengths L,L,..] [--layer N] [--json]
    pimsim --version;  pimsim --debug COMMAND ...   (a traceback instead of the one error line)

Bad input gives one line, ``pimsim: error: <problem>; <fix>``, and exit status 2 (the handler is
:func:`pimsim.cli.run_command`); exit status 1 means a check failed (``validate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pimsim import cli as core_cli
from pimsim.cli import INT64_MAX, hw_help, int_in
from pimsim.config import load_config
from pimsim.errors import UserError
from pimsim.outputs import PathArg, atomic_write, check_writable, write_text
from pimsim.prefill import DEFAULT_PREFILL, PREFILL_MODES
from pimsim.progress import status, wanted
from pimsim.report import system_label
from workloads import session

SEED_MAX = (1 << 32) - 1


AIM_TRACE_POS = 511  # --aim-trace default position: a mid-context token (last one if shorter)

# Every path option of every subcommand, by argparse dest: what it is called in messages.
# invocation_paths() reads them; pimsim.outputs.check_paths checks them all before the work.
OUTPUT_FILES = {"out": "program text file (-o)", "aim_trace": "AiM trace file (--aim-trace)",
                "timeline": "timeline file (--timeline)", "logits": "logits file (--logits)",
                "csv": "CSV file (--csv)"}
OUTPUT_DIRS = {"plot": "plot directory (--plot)"}
INPUT_FILES = {"file": "trace file", "spec": "sweep spec", "requests": "request file (--requests)"}


def sweep_db(args) -> str:
    """``sweep --db``, or the spec's stem + ``.db`` (in the working directory)."""
    return args.db or f"{Path(args.spec).stem}.db"


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def invocation_paths(args) -> tuple[list[PathArg], list[PathArg]]:
    """(outputs, inputs) of a parsed command line: every file it writes and every file it reads
    (the model file or folder, the hardware config, the sweep spec, a measured GPU baseline, a
    reference run, a request stream, a trace)."""
    outs = [PathArg(getattr(args, d), w) for d, w in OUTPUT_FILES.items()
            if getattr(args, d, None) is not None]
    outs += [PathArg(getattr(args, d), w, directory=True) for d, w in OUTPUT_DIRS.items()
             if getattr(args, d, None) is not None]
    ins = [PathArg(getattr(args, d), w) for d, w in INPUT_FILES.items()
           if getattr(args, d, None) is not None]
    if args.command == "sweep":
        if args.list:
            outs = []  # --list writes nothing
        else:
            db = PathArg(sweep_db(args), "results store (--db)")
            (ins if args.report else outs).append(db)
    hw = getattr(args, "hw", None)
    if hw is not None:
        from pimsim.config import config_file

        ins.append(PathArg(config_file(hw), "hardware config (--hw)"))
    models = getattr(args, "models", None) or [getattr(args, "model", None)]
    ins += [PathArg(m, "model") for m in models if m is not None and _exists(m)]
    gpu = getattr(args, "gpu", None)
    if args.command == "compare" and gpu is not None:
        from workloads.comparison import _is_file_arg

        if _is_file_arg(gpu):
            ins.append(PathArg(gpu, "GPU baseline file (--gpu)"))
    ref = getattr(args, "reference", None)
    if ref is not None and ref not in ("auto", "cpu", "cuda"):
        ins.append(PathArg(ref, "reference file (--reference)"))
    return outs, ins


def check_invocation(args) -> None:
    """The one path check of every command (:func:`pimsim.outputs.check_paths`)."""
    from pimsim.outputs import check_paths

    outs, ins = invocation_paths(args)
    check_paths(outs, ins)


def _preset_ctx(model: str, args=None) -> int | None:
    """The context prompt + tokens must fit: ``--context`` where given, else the preset's."""
    from workloads.models.resolve import preset_context

    if args is not None and getattr(args, "context", None):
        return args.context
    return preset_context(model)


def _hw(args, *, refresh: bool | None = None):
    """The config of ``--hw`` with the command line's ``--devices / --tp / --pp``."""
    return session.hw_config(args.hw, devices=getattr(args, "devices", None),
                             tp=getattr(args, "tp", None), pp=getattr(args, "pp", None),
                             tp_attention=getattr(args, "tp_attention", None), refresh=refresh,
                             ep=getattr(args, "ep", None),
                             expert_parallel=getattr(args, "enable_expert_parallel", False))


def _show(args) -> bool:
    return wanted(args.progress, args.no_progress)


def cmd_compile(args) -> int:
    ctx = _preset_ctx(args.model, args)
    cfg = _hw(args)
    if args.aim_trace:
        from pimsim.aim_emit import check_aim_config, stage_trace_paths

        check_aim_config(load_config(args.hw))
        for p in stage_trace_paths(args.aim_trace, cfg.system.pp):
            check_writable(p, "AiM trace file (--aim-trace)")
    pos = args.pos
    if pos is None:
        pos = 0 if not args.aim_trace else None
    if pos is not None:
        session.check_context(args.model, ctx, pos=pos, context_given=bool(getattr(args, "context", None)))
    c = session.compile_model(args.model, cfg, seed=args.seed, context=args.context,
                              cache=not args.no_cache, show_progress=_show(args))
    if pos is None:
        pos = min(c.spec.n_ctx - 1, AIM_TRACE_POS)
    session.check_context(args.model, c.spec.n_ctx, pos=pos, context_given=bool(getattr(args, "context", None)))
    print(c.mapping.pretty() if args.mapping else c.summary(pos))
    if not args.mapping:
        from pimsim.peak import peak_rate

        print(f"  peak MAC rate       {peak_rate(cfg).describe()}")
    if args.out:
        write_text(args.out, c.program.to_text(pos), OUTPUT_FILES["out"])
        print(f"  program text (position {pos}) written to {args.out}")
    if args.aim_trace:
        from pimsim.aim_emit import write_stage_traces

        try:
            written = write_stage_traces(args.aim_trace, c.programs, cfg, pos)
        except OSError as e:
            raise UserError(f"AiM trace file (--aim-trace) {args.aim_trace!r} cannot be written "
                            f"({e.strerror or e})", "choose a writable path") from None
        for s, (path, n) in enumerate(written):
            what = "the decode step" if len(written) == 1 else \
                f"pipeline stage {s} of {len(written)} of the decode step"
            print(f"  AiM trace of {what} at position {pos} ({n:,} lines) written to "
                  f"{path}: replay it with pimsim trace {path} --hw {cfg.name}")
    return 0


def cmd_run(args) -> int:
    n_steps = args.prompt + args.tokens - 1
    ctx = _preset_ctx(args.model, args)
    session.check_context(args.model, ctx, prompt=args.prompt, tokens=args.tokens,
                          context_given=bool(getattr(args, "context", None)))
    if args.timeline_pos is not None:
        session.check_context(args.model, ctx, pos=args.timeline_pos, pos_flag="--timeline-pos",
                              context_given=bool(getattr(args, "context", None)))
    if args.batch is not None and (args.timeline or args.logits):
        raise UserError(f"--{'timeline' if args.timeline else 'logits'} shows one sequence's "
                        f"decode steps: not with --batch",
                        "run without --batch for a timeline or the logits")
    if args.logits and not args.functional:
        raise UserError("--logits needs --functional (timing runs compute no numbers)",
                        "add --functional")
    if args.in_flight and (args.batch is None or len(args.batch) > 1):
        raise UserError("--in-flight says what one --batch N means on pipeline stages",
                        "give one batch size: --batch N --in-flight")
    show = _show(args)
    if args.batch is not None and len(args.batch) > 1:
        return _run_batch_scan(args, show)
    routing = _routing(args)
    res = session.simulate(args.model, _hw(args, refresh=False if args.no_refresh else None),
                           tokens=args.tokens, prompt=args.prompt, schedule=args.schedule,
                           seed=args.seed, functional=args.functional, exact=args.exact,
                           keep_logits=bool(args.logits), context=args.context,
                           fast=not args.slow, cache=not args.no_cache, show_progress=show,
                           batch=args.batch[0] if args.batch else None, prefill=args.prefill,
                           routing=routing, in_flight=args.in_flight)
    c, cfg = res.compiled, res.cfg
    if args.routing_trace_out and not res.report.routing:
        raise UserError(f"--routing-trace-out: {args.model} has no mixture-of-experts layers, so "
                        f"there is no routing to write", "drop --routing-trace-out")
    if args.routing_trace_out:
        with atomic_write(args.routing_trace_out, "routing trace") as f:
            for line in routing.records:
                f.write(json.dumps(line) + "\n")
    tl_pos = max(n_steps, args.prompt) - 1 if args.timeline_pos is None else args.timeline_pos
    if args.timeline:
        session.check_context(args.model, c.spec.n_ctx, pos=tl_pos, pos_flag="--timeline-pos",
                              context_given=bool(getattr(args, "context", None)))
    print(json.dumps(res.report.to_dict(), indent=1) if args.json else res.summary())
    if args.logits:
        with atomic_write(args.logits, OUTPUT_FILES["logits"], "wb") as f:
            np.save(f, res.logits)
    if args.timeline:
        from pimsim.timeline import write_timeline

        with status(f"writing the timeline of position {tl_pos}", show):
            tr = write_timeline(args.timeline, c.programs, cfg, tl_pos, schedule=args.schedule,
                                devices=args.timeline_devices)
        dv = tr["otherData"]["devices"]
        shown = "" if len(dv["shown"]) == dv["total"] == 1 else \
            f" on all {dv['total']} devices" if len(dv["shown"]) == dv["total"] else \
            f" on {len(dv['shown'])} of {dv['total']} devices ({dv['note']}; " \
            f"--timeline-devices all for every device)"
        print(f"  timeline of the token at position {tl_pos}{shown} ({len(tr['traceEvents']):,} "
              f"events) written to {args.timeline}: open it in ui.perfetto.dev", file=sys.stderr)
    return 0


def _routing(args):
    """The expert choice of a mixture-of-experts run (:class:`pimsim.moe.Routing`)."""
    from pimsim.moe import Routing

    if args.routing_trace_out and not args.functional:
        raise UserError("--routing-trace-out writes the choices of the model's own router: it "
                        "needs --functional", "add --functional")
    if args.routing_trace and args.functional:
        raise UserError("--routing-trace with --functional: a functional run routes with the "
                        "model's own router", "drop one of them")
    if args.routing_trace:
        return Routing.trace(args.routing_trace)
    if args.functional:
        return Routing.recorder()
    return Routing.seeded(args.routing_seed, args.routing, args.routing_skew)


def _run_batch_scan(args, show: bool) -> int:
    """``pimsim run --batch B1,B2,...``: the step time against the batch (a table, or one JSON
    document) and where the PIM system saturates."""
    from workloads.batching import scan_batches

    scan = scan_batches(args.model, _hw(args, refresh=False if args.no_refresh else None),
                        args.batch, tokens=args.tokens, prompt=args.prompt,
                        schedule=args.schedule, seed=args.seed, functional=args.functional,
                        exact=args.exact, context=args.context, fast=not args.slow,
                        cache=not args.no_cache, show_progress=show, prefill=args.prefill)
    print(json.dumps(scan.to_dict(), indent=1) if args.json else scan.summary())
    return 0


def batch_sizes(text: str) -> list[int]:
    """``--batch``: one batch size or a comma-separated list, each in 1..2^20."""
    one = int_in(1, 1 << 20)
    parts = [p for p in text.split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give a batch size or a list like 1,2,4,8")
    return [one(p.strip()) for p in parts]


def cmd_validate(args) -> int:
    from workloads.validation import failed_line

    ep = args.ep is not None or args.enable_expert_parallel
    m = session.validate(args.model, _hw(args) if ep else args.hw, args.tokens,
                         reference=args.reference,
                         prompt=args.prompt, seed=args.seed, exact=args.exact, show=_show(args),
                         devices=args.devices, tp=args.tp, pp=args.pp).to_dict()
    if args.json:
        print(json.dumps(m, indent=1))
    else:
        sy = m.get("system", {})
        on = system_label(m["hw"], sy.get("devices", 1), sy.get("tp", 1), sy.get("pp", 1))
        print(f"validate {m['model']} on {on} ({m['asic_math']} ASIC math) against "
              f"{m.get('reference_runtime', 'PyTorch')} on {m['reference_device']}, "
              f"{m['tokens']} tokens")
        print(f"  max abs err {m['max_abs_err']:.4g}, max rel err {m['max_rel_err']:.4g}, "
              f"min cosine {m['min_cosine']:.6f}, top-1 agreement {m['top1_agreement']:.2%} "
              f"({m['top1_agreement_decisive']:.2%} on {m['decisive_steps']} decisive steps), "
              f"greedy tokens match: {m['greedy_tokens_match']}")
        if m["passed"]:
            print(f"  PASSED (tolerance {m['tolerance']})")
        else:
            why = failed_line(m["criteria"]) if m.get("criteria") else "a tolerance"
            print(f"  FAILED: {why} (tolerance {m['tolerance']})")
    return 0 if m["passed"] else 1


def cmd_compare(args) -> int:
    if args.xpu is not None:
        return _compare_xpu(args)
    res = session.compare(args.models, _hw(args), args.gpu, prompt=args.prompt,
                          tokens=args.tokens, schedule=args.schedule, gpu_tp=args.gpu_tp,
                          cache=not args.no_cache, show_progress=_show(args),
                          batches=args.batch, gpu_power=args.gpu_power,
                          pim_cost=args.pim_cost)
    if args.batch is not None:
        print(json.dumps(res.to_dict()["batch_rows"], indent=1) if args.json else res.table())
        if args.plot:
            from workloads.plots import plot_compare_batches

            for f in plot_compare_batches(res.batch_rows, args.plot):
                print(f"  wrote {f}", file=sys.stderr)
        return 0
    print(json.dumps(res.to_dict()["rows"], indent=1) if args.json else res.table())
    if args.plot:
        from workloads.plots import plot_compare

        for f in plot_compare(res.rows, args.plot):
            print(f"  wrote {f}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    """``pimsim sweep``: run, print the summary, export. Exit 0 when every point is ok or
    invalid, 1 if some failed unexpectedly (re-run to retry them), 130 when interrupted.
    With ``--json`` stdout holds exactly one JSON document (one row per point)."""
    from workloads.sweeps.analysis import _jsonable
    from workloads.sweeps.run import parse_cluster, stored_result
    from workloads.sweeps.spec import load_spec
    from workloads.sweeps.store import to_csv

    spec = load_spec(args.spec, max_points=args.max_points)
    db = sweep_db(args)
    if args.list:
        if args.json:
            print(json.dumps([{"idx": p.idx, "key": p.key, "model": p.model,
                               "params": _jsonable(p.params), "invalid": p.error}
                              for p in spec.points], indent=1))
            return 0
        for p in spec.points:
            state = f"invalid: {p.error}" if p.error else ""
            print(f"#{p.idx} {p.key[:12]} {p.model} {p.label()} {state}")
        return 0
    if args.report:
        res = stored_result(spec, db)
    else:
        if args.cluster:
            parse_cluster(args.cluster)
        res = session.sweep(spec, db, workers=0 if args.in_process else args.workers,
                            cluster=args.cluster,
                            progress=True if args.progress else False if args.no_progress
                            else None,
                            connect_timeout_s=args.connect_timeout, raise_on_error=False)
    print(json.dumps(res.to_dict(), indent=1) if args.json else res.summary())
    if args.csv:
        print(f"  wrote {to_csv(db, args.csv, spec.name)}", file=sys.stderr)
    if args.plot:
        from workloads.plots import plot_sweep

        for f in plot_sweep(res, args.plot):
            print(f"  wrote {f}", file=sys.stderr)
    if res.interrupted:
        return 130
    return 1 if res.counts["error"] else 0


def rate(text: str) -> float:
    """An argparse type: requests per second, a number > 0 or ``inf``."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is out of range: give requests per second "
                                         "above 0, or inf (all at t = 0)")
    return v


def cmd_serve(args) -> int:
    """``pimsim serve``: a request stream through continuous batching; the summary (or one JSON
    document with --json), per-request rows with --csv, charts with --plot."""
    if args.requests and args.num_prompts is not None:
        raise UserError("--requests and --num-prompts both given",
                        "give a request file or a synthetic stream, not both")
    res = session.serve(
        args.model, _hw(args), requests=args.requests,
        num_prompts=16 if args.num_prompts is None else args.num_prompts,
        request_rate=args.request_rate, input_len=args.input_len, output_len=args.output_len,
        length_dist=args.length_dist, seed=args.seed, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        cost=f"gpu:{args.gpu}" if args.gpu else "pim", kv_capacity_tokens=args.kv_capacity,
        gpu_tp=args.gpu_tp, schedule=args.schedule, cache=not args.no_cache,
        show_progress=_show(args), pim_cost=args.pim_cost, context=args.context,
        prefill=args.prefill, jobs=args.jobs, **_xpu_args(args))
    print(json.dumps(res.to_dict(), indent=1) if args.json else res.summary())
    if args.csv:
        print(f"  wrote {res.write_csv(args.csv)}", file=sys.stderr)
    if args.plot:
        from workloads.serving.plots import plot_serve

        for f in plot_serve(res, args.plot):
            print(f"  wrote {f}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """``pimsim export attention-table``: one layer's decode attention against context length,
    its line in LLMServingSim's ``pim_model.py`` form and the bandwidth it implies."""
    from workloads.xpu.tables import export_attention_table

    with status(f"simulating {args.model}'s attention on {args.hw}", _show(args)):
        t = export_attention_table(args.model, args.hw, args.lengths, layer=args.layer,
                                   devices=args.devices, tp=args.tp, context=args.context,
                                   cache=not args.no_cache)
    if args.json:
        print(json.dumps(t.to_dict(), indent=1))
    else:
        print(t.table())
        print()
        print(t.pim_model())
    if args.out:
        write_text(args.out, t.pim_model() + "\n")
        print(f"  wrote {args.out}", file=sys.stderr)
    return 0


def lengths_list(text: str) -> list[int]:
    """``--lengths``: a comma-separated list of context lengths >= 0."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers "
                                         "(e.g. 128,256,512)") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give context lengths >= 0, e.g. 128,256,512")
    return out


def _add_export_parser(sub, common, progress, no_cache) -> None:
    """The ``export`` subcommand."""
    e = sub.add_parser("export", help="export simulated tables for other tools: "
                                      "attention-table (decode attention latency against "
                                      "context length, LLMServingSim's pim_model.py form)")
    e.add_argument("what", choices=["attention-table"], help="what to export")
    common(e)
    e.add_argument("--lengths", type=lengths_list, default=None, metavar="L,L,..",
                   help="context lengths (default: powers of two from 128 to the context)")
    e.add_argument("--layer", type=int_in(0, 1 << 20), default=0, metavar="N",
                   help="the layer simulated (default 0)")
    e.add_argument("--devices", type=int_in(1, 4096), metavar="N",
                   help="PIM devices, the heads split over them in tensor parallelism")
    e.add_argument("--tp", type=int_in(1, 4096), metavar="T", help="tensor-parallel devices")
    e.add_argument("--context", type=int_in(1, 1 << 20), metavar="N",
                   help="reserve the KV caches for N tokens instead of the model's context")
    e.add_argument("-o", "--out", help="write the pim_model.py entry here")
    e.add_argument("--json", action="store_true", help="print one JSON document")
    progress(e)
    no_cache(e)
    e.set_defaults(func=cmd_export)


def _compare_xpu(args) -> int:
    """compare --batch B,.. --xpu NAME: the xPU alone, PIM alone, attention offloaded."""
    from workloads.compare_batched import parse_batches
    from workloads.xpu.compare import compare_xpu, xpu_table

    if args.batch is None:
        raise UserError("compare --xpu compares decode steps per batch size",
                        "give --batch B,B,.. (e.g. 1,16,64,256)")
    cfg = _hw(args)
    rows = []
    with status("simulating the xPU, PIM and attention-offloaded systems", _show(args)):
        for m in args.models:
            rows += compare_xpu(m, cfg, args.xpu, parse_batches(args.batch),
                                position=args.prompt - 1 + args.tokens // 2, link=args.link,
                                cache=not args.no_cache)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
    else:
        print(xpu_table(rows, args.xpu, cfg.name, args.link))
    return 0


def _xpu_args(args) -> dict:
    """serve's / compare's xPU options as keyword arguments (none without --xpu)."""
    offload = getattr(args, "offload", None)
    prefill_on = getattr(args, "prefill_on", None)
    placement = getattr(args, "placement", None)
    given = [p for p in (placement, "attention" if offload else None,
                         "prefill" if prefill_on else None) if p]
    if getattr(args, "xpu", None) is None:
        if given or getattr(args, "overlap", False):
            raise UserError("--placement / --offload / --prefill-on / --overlap without --xpu",
                            "give --xpu NAME (the xPU beside the PIM devices)")
        return {}
    if len(set(given)) > 1:
        raise UserError(f"placements {' and '.join(given)} both given",
                        "give one of --placement, --offload attention, --prefill-on xpu")
    return {"xpu": args.xpu, "link": args.link, "placement": given[0] if given else "attention",
            "overlap": args.overlap}


def add_xpu_options(sp) -> None:
    """--xpu, --link, --placement, --offload, --prefill-on, --overlap."""
    from workloads.xpu.cost import PLACEMENTS
    from workloads.xpu.link import LINKS

    sp.add_argument("--xpu", metavar="NAME",
                    help="an xPU beside the PIM devices: a GPU preset of the analytic model "
                         "(A100, H100, H200, T4, with its shipped calibration) or a batched "
                         "measurement JSON (the model fitted to it); see --placement")
    sp.add_argument("--link", choices=LINKS, default="pcie5",
                    help="with --xpu: the xPU-PIM link (default pcie5; package: PIM stacks on "
                         "the xPU's package, as AttAcc)")
    sp.add_argument("--placement", choices=PLACEMENTS, default=None,
                    help="with --xpu: what runs where: attention (AttAcc: attention on PIM, the "
                         "rest on the xPU; the default), prefill (IANUS: prefill on the xPU, "
                         "decode on PIM), pim (all on PIM), xpu (all on the xPU)")
    sp.add_argument("--offload", choices=["attention"], default=None,
                    help="with --xpu: --placement attention")
    sp.add_argument("--prefill-on", choices=["xpu"], default=None,
                    help="with --xpu: --placement prefill")
    sp.add_argument("--overlap", action="store_true",
                    help="with --xpu: two sub-batches interleaved so the xPU and PIM work at "
                         "once (NeuPIMs); the report shows each side's busy time")


def _add_serve_parser(sub, common, progress, system, no_cache) -> None:
    """The ``serve`` subcommand."""
    from workloads.serving.costs import PIM_COSTS, PREFILL_COSTS
    from workloads.serving.requests import LENGTH_DISTS

    s = sub.add_parser("serve", help="serve a request stream with continuous batching "
                                     "(vLLM benchmark_serving metrics)")
    common(s)
    s.add_argument("--requests", metavar="FILE.jsonl",
                   help="request stream: one JSON object per line with arrival_s, prompt_len, "
                        "output_len (optional prompt_token_ids)")
    s.add_argument("--num-prompts", type=int_in(1, 1 << 24), default=None, metavar="N",
                   help="synthetic stream: N requests (default 16)")
    s.add_argument("--request-rate", type=rate, default=float("inf"), metavar="R",
                   help="synthetic stream: requests per second, Poisson arrivals seeded by "
                        "--seed (default inf: all at t = 0)")
    s.add_argument("--input-len", type=int_in(1, 1 << 24), default=32, metavar="L",
                   help="synthetic stream: prompt tokens per request (default 32)")
    s.add_argument("--output-len", type=int_in(1, 1 << 24), default=32, metavar="L",
                   help="synthetic stream: output tokens per request (default 32)")
    s.add_argument("--length-dist", choices=LENGTH_DISTS, default="fixed",
                   help="synthetic stream: fixed lengths, or drawn from a ShareGPT-like "
                        "lognormal (see workloads.serving.requests)")
    s.add_argument("--max-num-seqs", type=int_in(1, 1 << 20), default=256, metavar="N",
                   help="sequences running at once (default 256)")
    s.add_argument("--max-num-batched-tokens", type=int_in(1, 1 << 24), default=2048,
                   metavar="N", help="tokens per scheduler step, decode and prefill chunks "
                                     "together (default 2048)")
    s.add_argument("--kv-capacity", type=int_in(1), default=None, metavar="TOKENS",
                   help="KV-cache tokens the system holds (default: from the compiled program, "
                        "or the GPU's memory with --gpu)")
    s.add_argument("--gpu", metavar="NAME",
                   help="price the steps on a GPU of the analytic model (T4, A100, H100, H200, "
                        "or a batched measurement JSON it is fitted to) instead of the PIM "
                        "simulator")
    s.add_argument("--gpu-tp", type=int_in(1, 64), default=1, metavar="N",
                   help="with --gpu: GPUs in tensor parallelism (default 1)")
    add_xpu_options(s)
    s.add_argument("--schedule", choices=["serial", "overlap"], default="serial",
                   help="PIM step schedule (see pimsim run)")
    s.add_argument("--pim-cost", choices=PIM_COSTS, default=PIM_COSTS[0],
                   help="PIM step cost: batched (a step's decode sequences as one batched PIM "
                        "step; the default) or serial (sequences one after another, prompts "
                        "token by token)")
    s.add_argument("--prefill", choices=list(PREFILL_COSTS), default=None,
                   help="PIM prefill with the batched cost: batched (a step's prompt chunks as "
                        "one batched step; the default) or token-by-token (one decode step per "
                        "prompt token, as PIM-GPT and CENT)")
    s.add_argument("--context", type=int_in(1), default=None, metavar="N",
                   help="PIM: reserve the KV caches for N tokens instead of the model's own "
                        "context (more sequences fit one batched step)")
    s.add_argument("--jobs", "-j", type=int_in(0, 1024), default=1, metavar="N",
                   help="PIM (batched cost): simulate its steps in N worker processes (0: one "
                        "per core; the same numbers for any N; each worker holds its own "
                        "batched programs, several GB for 7B-class models)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON document: config, metrics, refused requests, one row "
                        "per request")
    s.add_argument("--csv", metavar="FILE", help="write one row per request as CSV")
    s.add_argument("--plot", metavar="DIR",
                   help="write latency CDFs (TTFT, TPOT, E2E) and throughput over time here")
    progress(s)
    no_cache(s)
    system(s)
    s.set_defaults(func=cmd_serve)


def _add_sweep_parser(sub) -> None:
    """The ``sweep`` subcommand."""
    from pimsim.cli import float_in
    from workloads.sweeps.run import CONNECT_TIMEOUT_S
    from workloads.sweeps.spec import MAX_POINTS

    s = sub.add_parser("sweep", help="run a design-space sweep into a SQLite store")
    s.add_argument("spec", help="sweep spec (.toml): base config, grid / points, models "
                                "(a module:attribute model is imported and run)")
    s.add_argument("--workers", type=int_in(1, 1024), default=None,
                   help="local worker processes, 1..1024 (default: CPU count)")
    s.add_argument("--in-process", action="store_true",
                   help="run the points in this process (no worker processes)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="run on a Dask distributed scheduler (tcp://host:8786), or 'local[:N]' "
                        "for a LocalCluster of N processes. Dask moves tasks with pickle: "
                        "trusted clusters only")
    s.add_argument("--connect-timeout", type=float_in(0, 3600), default=CONNECT_TIMEOUT_S,
                   metavar="S",
                   help=f"seconds to reach the --cluster scheduler (default {CONNECT_TIMEOUT_S:g})")
    s.add_argument("--db", metavar="FILE", help="results store (default: SPEC's stem + .db)")
    s.add_argument("--max-points", type=int_in(1), default=MAX_POINTS, metavar="N",
                   help=f"refuse a spec of more than N points (default {MAX_POINTS:,})")
    s.add_argument("--plot", metavar="DIR", help="write latency / energy PNG charts here")
    s.add_argument("--csv", metavar="FILE", help="export the sweep's points as CSV")
    s.add_argument("--json", action="store_true",
                   help="print one JSON document instead of the summary: counts, one row per "
                        "point, scaling, Pareto front")
    s.add_argument("--list", action="store_true", help="list the points and exit")
    s.add_argument("--report", action="store_true",
                   help="print what the store holds for the spec, run nothing (read-only)")
    s.add_argument("--progress", action="store_true", help="progress bar even when not a tty")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = core_cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))

    def common(sp, hw_default="pim-gpt"):
        sp.add_argument("model", help="preset name, .onnx file, or module:attribute (imports and "
                                      "runs that Python module)")
        sp.add_argument("--hw", default=hw_default, help=hw_help(hw_default))
        sp.add_argument("--seed", type=int_in(0, SEED_MAX), default=0,
                        help=f"weights / prompt seed, 0..{SEED_MAX} (default 0)")

    def progress(sp, what="a progress bar / status line"):
        sp.add_argument("--progress", action="store_true", help=f"{what} even when not a tty")
        sp.add_argument("--no-progress", action="store_true", help=f"no {what}")

    def system(sp):
        sp.add_argument("--devices", type=int_in(1, 4096), metavar="N",
                        help="PIM devices in the system (default: the config's [system], 1)")
        sp.add_argument("--tp", type=int_in(1, 4096), metavar="T",
                        help="tensor-parallel devices per pipeline stage (default N / P); "
                             "without --devices, T x P must equal a multi-device config's count")
        sp.add_argument("--pp", type=int_in(1, 4096), metavar="P",
                        help="pipeline stages, P sequences in flight (default 1); T x P = N")
        sp.add_argument("--tp-attention", choices=["split", "one-device", "master"],
                        default=None,
                        help="tensor parallelism: attention split by KV head groups (default), "
                             "kept whole on each stage's first device, or master (CENT's: every "
                             "product split by rows, broadcast from and gathered on the first "
                             "device, which runs the whole attention)")
        sp.add_argument("--enable-expert-parallel", action="store_true",
                        help="mixture-of-experts models: whole experts placed over each "
                             "stage's tensor-parallel devices (expert e of E on device "
                             "e // (E / T)) instead of every expert split over them; attention "
                             "and dense layers stay split (vLLM's flag)")
        sp.add_argument("--ep", type=int_in(1, 4096), metavar="N",
                        help="expert parallelism over N devices (vLLM's EP size = TP size: N "
                             "must be the tensor-parallel devices T and divide the experts); "
                             "alone on a one-device config, N devices")

    def context(sp):
        sp.add_argument("--context", type=int_in(1, 1 << 20), metavar="N",
                        help="reserve the KV caches for N tokens instead of the model's own "
                             "context (long contexts; not past a learned position table)")

    def no_cache(sp):
        sp.add_argument("--no-cache", action="store_true",
                        help="do not use the compiled-program cache (see docs/guide.md)")

    tokens = int_in(1, INT64_MAX, "and prompt + tokens within the model's context")
    c = sub.add_parser("compile", help="lower a model to a PIM program and print its mapping")
    common(c)
    c.add_argument("-o", "--out", help="write the program text form here")
    c.add_argument("--pos", type=int_in(0), default=None,
                   help="decode position for the program text and the AiM trace, within the "
                        f"context (default 0; with --aim-trace {AIM_TRACE_POS}, or the last "
                        "position of a shorter context)")
    c.add_argument("--aim-trace", metavar="FILE",
                   help="write the decode step's PIM work as an AiM instruction trace (an "
                        "AiM-style config: aim-gddr6, pim-gpt); replay with pimsim trace. With "
                        "--pp P > 1, one file per pipeline stage, the stage in its name: "
                        "FILE.trace -> FILE.stage0.trace ... FILE.stage<P-1>.trace")
    c.add_argument("--mapping", action="store_true", help="print the mapping as a loop nest")
    progress(c)
    no_cache(c)
    system(c)
    context(c)
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="simulate prompt processing and token generation")
    common(r)
    r.add_argument("--prompt", type=tokens, default=1,
                   help="prompt tokens, >= 1 (default 1), processed (prefilled) on PIM before "
                        "the first generated token; see --prefill")
    r.add_argument("--prefill", choices=list(PREFILL_MODES), default=DEFAULT_PREFILL,
                   help="how the prompt is processed: token-by-token (one decode step per "
                        "prompt token, as PIM-GPT and CENT do; the default) or batched (one "
                        "step of all of them, sharing every weight row read, causal attention "
                        "among them); the report shows TTFT and TPOT labelled with it")
    r.add_argument("--tokens", type=tokens, default=32,
                   help="tokens to generate, >= 1 (default 32)")
    r.add_argument("--schedule", choices=["serial", "overlap"], default="serial",
                   help="serial: ASIC and PIM never overlap (the paper); overlap: independent "
                        "steps run concurrently")
    r.add_argument("--functional", action="store_true", help="compute the real numbers too")
    r.add_argument("--exact", action="store_true", help="exact ASIC math (no approximations)")
    r.add_argument("--logits", metavar="FILE.npy",
                   help="with --functional: write every decode step's logits [steps, vocab]")
    r.add_argument("--no-refresh", action="store_true", help="turn DRAM refresh off")
    r.add_argument("--slow", action="store_true",
                   help="command-by-command SimPy executor (reference for the fast path)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--batch", "--max-num-seqs", type=batch_sizes, default=None,
                   metavar="B[,B...]",
                   help="batched decode of B sequences sharing every weight row read (each "
                        "with its own KV cache); reports the time per step against the "
                        "MAC-rate bound; a list (1,2,4,8) prints the step time against B and "
                        "where the system saturates")
    r.add_argument("--in-flight", action="store_true",
                   help="with --batch N on pipeline stages (--pp > 1): N is every sequence in "
                        "flight (vLLM's meaning), split into the pp micro-batches as evenly as "
                        "possible, instead of the size of each of the pp micro-batches")
    progress(r)
    no_cache(r)
    system(r)
    context(r)
    r.add_argument("--routing", choices=["uniform", "skewed"], default="uniform",
                   help="mixture-of-experts timing runs: seeded expert choice, every expert "
                        "equally likely (default) or skewed (Zipf-like, --routing-skew)")
    r.add_argument("--routing-skew", type=float, default=1.0, metavar="S",
                   help="Zipf exponent of --routing skewed (default 1.0)")
    r.add_argument("--routing-seed", type=int_in(0), default=0, metavar="N",
                   help="seed of the seeded expert choice (default 0)")
    r.add_argument("--routing-trace", metavar="FILE.jsonl",
                   help="timing run: the experts per step and MoE layer from a routing trace "
                        '(JSONL lines {"step", "moe", "layer", "experts": [[e, ...] per token]})')
    r.add_argument("--routing-trace-out", metavar="FILE.jsonl",
                   help="with --functional: write the model's own routing as a routing trace")
    r.add_argument("--timeline", metavar="FILE.json",
                   help="write one token's activity (channels, ASIC, steps, power) as a Chrome "
                        "trace (ui.perfetto.dev, chrome://tracing): the last generated token; "
                        "FILE.json.gz is written gzip-compressed")
    r.add_argument("--timeline-devices", choices=["group", "all"], default="group",
                   help="devices --timeline shows on a system: one of each tensor-parallel group "
                        "(default; a group's devices run the same program) or all")
    r.add_argument("--timeline-pos", type=int_in(0), metavar="POS",
                   help="position of the token --timeline shows (default: the last one)")
    r.set_defaults(func=cmd_run)

    from workloads.serving.costs import PIM_COSTS

    cp = sub.add_parser("compare", help="PIM vs GPU latency and energy per token")
    cp.add_argument("models", nargs="+", help="presets to compare")
    cp.add_argument("--hw", default="pim-gpt", help=hw_help("pim-gpt"))
    cp.add_argument("--gpu", default="T4",
                    help="T4, A100, H100, H200 (analytic model) or a measured baseline JSON")
    cp.add_argument("--prompt", type=tokens, default=None,
                    help="prompt tokens before the timed tokens, as in pimsim run (default 128); "
                         "compare times the decode tokens after the prompt only: the prompt's "
                         "prefill is not simulated (pimsim run or serve give TTFT)")
    cp.add_argument("--tokens", type=tokens, default=8, help="tokens timed per model (default 8)")
    cp.add_argument("--schedule", choices=["serial", "overlap"], default="serial")
    cp.add_argument("--plot", metavar="DIR", help="write PNG charts (and compare.json) here")
    cp.add_argument("--json", action="store_true", help="print one JSON document")
    progress(cp)
    no_cache(cp)
    system(cp)
    cp.add_argument("--gpu-tp", type=int_in(1, 64), default=1, metavar="N",
                    help="GPUs of a modelled GPU preset in tensor parallelism (default 1)")
    cp.add_argument("--batch", metavar="B,B,..", default=None,
                    help="instead: tokens/s and mJ/token per batch size (e.g. 1,16,64,256) and "
                         "the crossover batch; a modelled GPU")
    cp.add_argument("--xpu", metavar="NAME",
                    help="with --batch: also the xPU alone and the xPU with attention on the "
                         "PIM devices (serial and overlapped), per batch size")
    from workloads.xpu.link import LINKS

    cp.add_argument("--link", choices=LINKS, default="pcie5",
                    help="with --xpu: the xPU-PIM link (default pcie5)")
    cp.add_argument("--pim-cost", choices=PIM_COSTS, default=PIM_COSTS[0],
                    help="with --batch: batched (one batched PIM decode step per batch, the "
                         "default) or serial (the batch's sequences one after another)")
    cp.add_argument("--gpu-power", choices=["util", "board"], default="util",
                    help="a modelled GPU's power model: utilisation power (default; fitted to "
                         "the shipped measurement of that GPU where there is one) or the board's "
                         "datasheet power throughout (an upper bound)")
    cp.set_defaults(func=cmd_compare)

    v = sub.add_parser("validate", help="compare functional simulation with PyTorch")
    common(v)
    v.add_argument("--tokens", type=tokens, default=32, help="tokens to generate, >= 1")
    v.add_argument("--prompt", type=tokens, default=1, help="prompt tokens, >= 1")
    v.add_argument("--reference", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda, or a .npz file from "
                        "python -m workloads.reference")
    v.add_argument("--exact", action="store_true", help="exact ASIC math")
    v.add_argument("--json", action="store_true", help="print one JSON document")
    progress(v)
    system(v)
    v.set_defaults(func=cmd_validate)

    _add_sweep_parser(sub)
    sub.choices["sweep"].set_defaults(func=cmd_sweep)
    _add_serve_parser(sub, common, progress, system, no_cache)
    _add_export_parser(sub, common, progress, no_cache)
    core_cli.add_debug_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``pimsim`` entry point: bad input -> one line on stderr, exit 2 (see pimsim.cli)."""
    args = build_parser().parse_args(argv)
    return core_cli.run_command(args, check=check_invocation)


if __name__ == "__main__":
    sys.exit(main())
