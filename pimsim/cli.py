"""The ``pimsim`` command line: trace replay, and the pieces every subcommand shares.

Shared by :mod:`workloads.cli` (which adds compile / run / validate / compare / sweep):

* :class:`Parser`: argparse that reports a usage error as one line, exit status 2;
* :func:`int_in`: an argparse ``type`` for an integer in a range (the range in the message);
* :func:`run_command`: the one error handler. A :class:`~pimsim.errors.UserError` (or a
  :class:`~pimsim.errors.HardwareFitError`) prints
  ``pimsim: error: <problem>; <fix>`` and exits 2; any other exception prints one line naming it
  and exits 2 too; ``--debug`` re-raises instead, with the traceback. Exit status 1 is left to
  "validation failed" (``validate``, ``trace --check``, a sweep with failed points).

Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pimsim import __version__
from pimsim.config import available_configs, load_config
from pimsim.errors import (
    HardwareFitError,
    UserError,
    format_unexpected,
    format_user_error,
    read_text,
)

INT64_MAX = (1 << 63) - 1


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``pimsim: error: <problem>; <fix>``, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"pimsim: error: {' '.join(message.split())}; see {self.prog} --help",
              file=sys.stderr)
        raise SystemExit(2)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but words no parser takes are reported by the subcommand they
        follow, so the message points at that subcommand's ``--help``."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._parser_of(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _parser_of(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        """The subparser that parsed ``ns`` (its subcommand's name), else this parser."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(ns, action.dest, None) or "")
                if sub is not None:
                    return sub
        return self


def int_in(lo: int, hi: int = INT64_MAX, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi``; the message gives the range."""

    def parse(text: str) -> int:
        try:
            v = int(text, 0) if text.strip().lower().startswith(("0x", "-0x")) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            rng = f">= {lo}" if hi == INT64_MAX else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: give an integer {rng}"
                                             + (f" ({what})" if what else ""))
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``(lo, hi]``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo < v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number above "
                                             f"{lo:g} and at most {hi:g}")
        return v

    parse.__name__ = "number"
    return parse


def hw_help(default: str) -> str:
    return (f"hardware config: a shipped name ({', '.join(available_configs())}) or a path to a "
            f".toml file (default {default})")


def _cmd_trace(args: argparse.Namespace) -> int:
    from pimsim.dma import replay_trace
    from pimsim.report import TraceReport
    from pimsim.trace import TraceError, parse_trace

    cfg = load_config(args.hw, refresh=False if args.no_refresh else None)
    text = read_text(args.file, "trace file")
    try:
        trace = parse_trace(text, cfg, name=Path(args.file).name)
    except TraceError as e:
        msg = str(e)
        if "; " not in " ".join(msg.split()):
            raise UserError(msg, "correct that line (the grammar is in docs/guide.md, AiM traces)") \
                from None
        raise
    t0 = time.perf_counter()
    checker = None
    check_s = 0.0
    if args.check:  # every issued command through the checker as the replay goes, not kept
        from pimsim.check import StreamChecker
        from pimsim.dma import replay_trace_logged

        checker = StreamChecker(cfg, name=Path(args.file).name)

        def check_part(rows) -> None:
            nonlocal check_s
            t = time.perf_counter()
            checker.feed(rows[:, :5], tags=rows[:, 5])
            check_s += time.perf_counter() - t

        res = replay_trace_logged(cfg, trace, check_part, fast=not args.slow)
    else:
        res, _ = replay_trace(cfg, trace, fast=not args.slow)
    wall = time.perf_counter() - t0 - check_s
    rep = TraceReport.from_result(cfg, args.file, res, syncs=trace.n_syncs,
                                  host_ops=trace.host_ops, wall_s=wall)
    status = 0
    if checker is not None:
        from pimsim.check import check_report

        violations = checker.finish()
        rep.check_violations = violations.total
        if violations:
            print(check_report(violations), file=sys.stderr)
            status = 1
    print(rep.to_json() if args.json else rep.summary())
    return status


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="pimsim",
        description="Cycle-accurate simulator of processing-in-memory hardware for GPT inference.",
    )
    p.add_argument("--version", action="version", version=f"pimsim {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("trace", help="replay an AiM instruction trace on a hardware config")
    t.add_argument("file", help="trace file (AiM ISR text format)")
    t.add_argument("--hw", default="aim-gddr6", help=hw_help("aim-gddr6"))
    t.add_argument("--no-refresh", action="store_true", help="turn DRAM refresh off")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--check", action="store_true",
                   help="log every issued command and re-verify it with the independent checker")
    t.add_argument("--slow", action="store_true",
                   help="issue every column command one by one (no closed-form runs)")
    t.set_defaults(func=_cmd_trace)
    add_debug_flags(p)
    return p


def add_debug_flags(p: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too (``pimsim run ... --debug``)."""
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                if not any("--debug" in x.option_strings for x in sp._actions):
                    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show the full traceback of an error")


def user_error_types() -> tuple[type[BaseException], ...]:
    """The bad-input exceptions: the UserError family plus :class:`HardwareFitError` (the
    compiler's capacity and mapping errors: a model that does not fit or cannot be placed on the
    hardware)."""
    return (UserError, HardwareFitError)


def run_command(args: argparse.Namespace,
                check: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Run ``args.func(args)`` under the one error handler (see the module docstring);
    ``check(args)`` first, under the same handler (the command line's path check,
    :func:`workloads.cli.check_invocation`)."""
    debug = getattr(args, "debug", False)
    try:
        if check is not None:
            check(args)
        return args.func(args)
    except BrokenPipeError:  # stdout closed early (``pimsim ... | head``): not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("pimsim: error: interrupted; re-run the command to start again", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one handler: every failure is one line
        if debug:
            raise
        if isinstance(e, user_error_types()):
            print(f"pimsim: error: {format_user_error(e)}", file=sys.stderr)
        else:
            print(f"pimsim: error: {format_unexpected(e)}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
