"""The ``pimsim`` command line: trace replay (and, as they land, compile / run / validate)."""

from __future__ import annotations

import argparse
import sys
import time

from pimsim.config import ConfigError, load_config
from pimsim.trace import TraceError


class UserError(Exception):
    """Bad input from the user: printed as one clear line, exit status 2."""


def _cmd_trace(args: argparse.Namespace) -> int:
    from pimsim.dma import replay_trace
    from pimsim.report import TraceReport
    from pimsim.trace import load_trace

    cfg = load_config(args.hw, refresh=False if args.no_refresh else None)
    trace = load_trace(args.file, cfg)
    t0 = time.perf_counter()
    res, log = replay_trace(cfg, trace, log=args.check, fast=not args.slow)
    wall = time.perf_counter() - t0
    rep = TraceReport.from_result(cfg, args.file, res, syncs=trace.n_syncs,
                                  host_ops=trace.host_ops, wall_s=wall)
    status = 0
    if args.check:
        from pimsim.check import check_command_log, check_report

        violations = check_command_log(log, cfg)
        rep.check_violations = violations.total
        if violations:
            print(check_report(violations), file=sys.stderr)
            status = 1
    print(rep.to_json() if args.json else rep.summary())
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pimsim",
        description="Cycle-accurate simulator of processing-in-memory hardware for GPT inference.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="replay an AiM instruction trace on a hardware config")
    t.add_argument("file", help="trace file (AiM ISR text format)")
    t.add_argument("--hw", default="aim-gddr6",
                   help="hardware config: shipped name or path to a .toml (default aim-gddr6)")
    t.add_argument("--no-refresh", action="store_true", help="turn DRAM refresh off")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--check", action="store_true",
                   help="log every issued command and re-verify it with the independent checker")
    t.add_argument("--slow", action="store_true",
                   help="issue every column command one by one (no closed-form runs)")
    t.set_defaults(func=_cmd_trace)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, TraceError, UserError) as e:
        print(f"pimsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
