"""Compile the command and rule tables of ``pimsim.spec`` for one hardware config into dense arrays.

The numba kernel reads only these arrays; it has no knowledge of command names or timing names.
Nodes of a channel are numbered ``0`` (the channel), ``1 .. G`` (bank groups) and
``1 + G .. G + B`` (banks).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from pimsim.config import ConfigError, HwConfig
from pimsim.spec import commands as C
from pimsim.spec.rules import LEVEL_NAMES, Rule, rule_namespace, rules_for

# columns of cmd_tab
CT_SCOPE, CT_ROW, CT_MODE, CT_DONE, CT_SELF_GAP, CT_CLOSED_FORM, CT_ENABLED, CT_COLUMN = range(8)
# columns of geom
(G_BG, G_BPG, G_BANKS, G_NODES, G_REFRESH, G_NREFI, G_PIM, G_FAST, G_CMD_ACT, G_CMD_PRE,
 G_CMD_PREA, G_CMD_REF, G_CMD_ACTAB, G_CMD_TMOD, G_BUS, G_TMOD_GATED, G_SCHED, G_RQ, G_WQ,
 G_WHI, G_WLO, G_CMD_RD, G_CMD_WR, G_BPG_SHIFT) = range(24)
N_GEOM = 24
SCHED_IN_ORDER, SCHED_FRFCFS = 0, 1


def eval_latency(expr: str, cycles: dict[str, int], where: str) -> int:
    """Evaluate a rule latency such as ``nCWL + nBL + nWR`` against a timing table."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in cycles:
                raise ConfigError(
                    f"timing value {node.id!r} is needed by {where} but is missing from [timing]"
                )
            return cycles[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        raise ValueError(f"bad latency expression {expr!r} in {where}")

    return ev(ast.parse(expr, mode="eval"))


def active_rules(cfg: HwConfig) -> list[tuple[Rule, int, list[int], list[int]]]:
    """(rule, latency, preceding ids, following ids) for every rule the config's commands use."""
    enabled = enabled_commands(cfg)
    out = []
    names = rule_namespace(cfg)
    for rule in rules_for(cfg):
        pre = _expand(rule.preceding, enabled)
        fol = _expand(rule.following, enabled)
        if not pre or not fol:
            continue
        lat = eval_latency(rule.latency, names, f"timing rule {rule.name}")
        if lat < 0:
            raise ConfigError(f"{cfg.source}: timing rule {rule.name} ({rule.latency}) is negative")
        out.append((rule, lat, pre, fol))
    return out


def enabled_commands(cfg: HwConfig) -> set[int]:
    return {i for i, c in enumerate(C.COMMANDS) if cfg.pim.enabled or not c.pim}


def _expand(names: tuple[str, ...], enabled: set[int]) -> list[int]:
    if names == ("*",):
        return sorted(enabled)
    return [C.cmd_id(n) for n in names if C.cmd_id(n) in enabled]


def _touches_level(scope: int, level: int) -> bool:
    """Whether a command of this scope touches nodes of this level."""
    return scope == C.SCOPE_ALLBANK or scope == C.SCOPE_BANK or level == 0


@dataclass(frozen=True)
class TimingTables:
    """Dense arrays describing one config's commands and rules, for the kernel."""

    cmd_tab: np.ndarray  # [n_cmds, 8]
    pr_start: np.ndarray  # [n_cmds + 1]: rules grouped by preceding command
    pr_tab: np.ndarray  # [n_rules, 3]: following, level, latency
    win_tab: np.ndarray  # [n_window_rules, 5]: preceding, following, level, latency, window
    geom: np.ndarray  # [N_GEOM]
    max_window: int

    def with_options(self, *, refresh: bool | None = None, fast: bool | None = None,
                     scheduler: str | None = None) -> "TimingTables":
        geom = self.geom.copy()
        if scheduler is not None:
            geom[G_SCHED] = SCHED_FRFCFS if scheduler == "frfcfs" else SCHED_IN_ORDER
        if refresh is not None:
            geom[G_REFRESH] = int(refresh)
        if fast is not None:
            geom[G_FAST] = int(fast)
        return TimingTables(self.cmd_tab, self.pr_start, self.pr_tab, self.win_tab, geom,
                            self.max_window)


_CACHE: dict[str, TimingTables] = {}


def build_tables(cfg: HwConfig, *, fast: bool = True) -> TimingTables:
    """Tables for a config (cached on its contents); ``fast`` enables closed-form column runs."""
    key = repr((cfg.org, cfg.timing, cfg.pim, cfg.host, cfg.controller))
    if key not in _CACHE:
        _CACHE[key] = _build_tables(cfg)
    return _CACHE[key].with_options(refresh=cfg.refresh.enabled, fast=fast)


def _build_tables(cfg: HwConfig) -> TimingTables:
    n = C.N_CMDS
    enabled = enabled_commands(cfg)
    rules = active_rules(cfg)
    cyc = cfg.timing.cycles

    # non-window rules, merged per (preceding, following, level) keeping the largest latency;
    # a rule from every command to every command on the channel (the command bus) is kept
    # apart as one number: the kernel checks it against the last issue cycle
    merged: dict[tuple[int, int, int], int] = {}
    windows = []
    bus = 0
    for rule, lat, pre, fol in rules:
        lvl = LEVEL_NAMES[rule.level]
        if (lvl == 0 and not rule.window and set(pre) == enabled and set(fol) == enabled):
            bus = max(bus, lat)
            continue
        if rule.window:
            for p in pre:
                for f in fol:
                    windows.append((p, f, lvl, lat, rule.window))
            continue
        for p in pre:
            for f in fol:
                key = (p, f, lvl)
                merged[key] = max(merged.get(key, 0), lat)
    pr_start = np.zeros(n + 1, np.int64)
    rows = sorted(merged.items())
    for (p, _f, _l), _lat in rows:
        pr_start[p + 1] += 1
    pr_start = np.cumsum(pr_start).astype(np.int64)
    pr_tab = np.array([[f, lvl, lat] for (p, f, lvl), lat in rows], np.int64).reshape(-1, 3)
    win_tab = np.array(windows, np.int64).reshape(-1, 5)

    cmd_tab = np.zeros((n, 8), np.int64)
    attrs = C.command_attrs(cfg.pim.mode_switch, cfg.pim.af_pseudo_row, cfg.pim.enabled)
    for i, c in enumerate(C.COMMANDS):
        cmd_tab[i, CT_SCOPE], cmd_tab[i, CT_ROW], cmd_tab[i, CT_MODE] = attrs[i]
        cmd_tab[i, CT_ENABLED] = int(i in enabled)
        cmd_tab[i, CT_COLUMN] = int(c.column)
        if i in enabled:
            cmd_tab[i, CT_DONE] = eval_latency(c.done, cyc, f"command {c.name}")
        gap = max(1, bus)
        for (p, f, lvl), lat in merged.items():
            if p == i and f == i and _touches_level(attrs[i][0], lvl):
                gap = max(gap, lat)
        cmd_tab[i, CT_SELF_GAP] = gap
        self_window = any(w[0] == i and w[1] == i for w in windows)
        # a run of this command may be stepped in closed form: it changes no row or mode
        # state and no window rule spaces it against itself (see kernel docstring)
        cmd_tab[i, CT_CLOSED_FORM] = int(
            not self_window and attrs[i][1] in (C.ROW_NEEDS_OPEN, C.ROW_NONE) and c.name != "TMOD"
        )
    o = cfg.org
    geom = np.zeros(N_GEOM, np.int64)
    # GDDR6-AiM's controller issues a mode switch in place of the command that needs it, once
    # that command is ready (a TMOD never issues earlier than the command it enables could)
    geom[G_TMOD_GATED] = int(cfg.pim.enabled and cfg.pim.mode_switch == "register")
    geom[G_BUS] = bus
    geom[G_BG] = o.bankgroups
    geom[G_BPG] = o.banks_per_group
    # banks per group as a shift where it is a power of two (-1: not; see issue.bg_node)
    bpg = o.banks_per_group
    geom[G_BPG_SHIFT] = bpg.bit_length() - 1 if bpg > 0 and bpg & (bpg - 1) == 0 else -1
    geom[G_BANKS] = o.banks
    geom[G_NODES] = 1 + o.bankgroups + o.banks
    geom[G_REFRESH] = int(cfg.refresh.enabled)
    geom[G_NREFI] = cyc["nREFI"]
    geom[G_PIM] = int(cfg.pim.enabled)
    geom[G_FAST] = 1
    geom[G_CMD_ACT] = C.cmd_id("ACT")
    geom[G_CMD_PRE] = C.cmd_id("PRE")
    geom[G_CMD_PREA] = C.cmd_id("PREA")
    geom[G_CMD_REF] = C.cmd_id("REFab")
    geom[G_CMD_ACTAB] = C.cmd_id("ACT_AB")
    geom[G_CMD_TMOD] = C.cmd_id("TMOD")
    k = cfg.controller
    geom[G_SCHED] = SCHED_FRFCFS if k.scheduler == "frfcfs" else SCHED_IN_ORDER
    geom[G_RQ] = k.read_queue_entries
    geom[G_WQ] = k.write_queue_entries
    geom[G_WHI], geom[G_WLO] = k.drain_thresholds()
    geom[G_CMD_RD] = C.cmd_id("RD")
    geom[G_CMD_WR] = C.cmd_id("WR")
    max_window = int(win_tab[:, 4].max()) if len(win_tab) else 1
    return TimingTables(cmd_tab, pr_start, pr_tab, win_tab, geom, max_window)
