"""Test oracle: the whole-log checker as it was before ``pimsim.check`` learned to stream a log in
bounded memory (kept verbatim below this paragraph; tests/test_check_stream.py holds the two
equal).

An independent checker: replays an issued-command log against every timing and state rule.

The checker shares *no scheduling code* with :mod:`pimsim.timing` (it never imports it). It reads
only the data tables of :mod:`pimsim.spec` (commands, rules) and a :class:`~pimsim.config.HwConfig`,
evaluates every latency expression itself, expands ``"*"`` and the command lists itself (PIM
commands drop out when ``cfg.pim.enabled`` is false) and re-derives bank state (open rows, PIM
mode) from the log alone. Everything is vectorised with numpy: a log of a million commands is
checked in about a second.

What it checks, for the commands of one channel:

* **timing rules** (``DRAM_RULES`` + ``PIM_RULES``): for every following command, the most recent
  earlier preceding command that shares a node of the rule's level (bank, bank group, channel) must
  be at least ``latency`` cycles earlier. An all-bank command touches every bank and bank group; a
  channel-scope command touches only the channel node. A window rule (``window = W``) measures
  from the ``W``-th most recent preceding command on the node instead (tFAW). "Earlier" is log
  order; the log is (stably) sorted by cycle first.
* **one command per cycle** (also the table's ``cmd_bus`` rule).
* **state**: a column command needs its bank open at the logged row (all banks, for all-bank ones);
  an ACT needs its bank closed (an ACT_AB needs every bank closed); REFab needs every bank closed;
  PRE/PREA close, WR_AB closes every bank after its write (auto-precharge). On PIM devices each
  command must find the channel in its mode (single-bank after reset; TMOD toggles).
* **refresh** (only when ``cfg.refresh.enabled``): the k-th REFab (k = 1, 2, ...) must not issue
  before ``k * nREFI`` and must issue less than ``8 * nREFI`` after that due time (JEDEC
  postponement limit); a log that runs ``8 * nREFI`` past the next due time without it is missing
  refreshes (so a log longer than ``9 * nREFI`` must hold at least one).

A log must start at reset (cycle 0, all banks closed, single-bank mode, refresh epoch at 0).

API: :func:`check_log` (one channel, rows ``(cycle, cmd id, bank, row)``),
:func:`check_command_log` (records ``(cycle, channel, bank, row, command name or id)`` of many
channels), :class:`Violation`, :func:`check_report`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pimsim.config import ConfigError, HwConfig
from pimsim.spec import commands as C
from pimsim.spec.rules import LEVEL_NAMES, Rule, rule_namespace, rules_for

__all__ = [
    "Violation", "ViolationList", "check_log", "check_command_log", "check_report",
    "rule_latencies", "JEDEC_MAX_POSTPONED_REFRESHES",
]

JEDEC_MAX_POSTPONED_REFRESHES = 8
DEFAULT_MAX_PER_RULE = 10_000

_SCOPE_WORD = {C.SCOPE_BANK: "bank", C.SCOPE_ALLBANK: "all banks", C.SCOPE_CHANNEL: "channel"}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    ``preceding`` and ``following`` are ``(command name, cycle, bank)`` (bank -1 for all-bank and
    channel commands); ``preceding`` is None where no earlier command is involved (e.g. a column
    command to a bank that was never opened, a missing refresh). For timing rules ``required`` is
    the latency and ``actual`` the distance in cycles; for state rules ``required`` is the row (or
    mode) the following command needs and ``actual`` what the bank (channel) had (-1 = closed);
    for refresh rules both are cycles (due time, issue time or end of log).
    """

    rule: str
    channel: int | None
    preceding: tuple[str, int, int] | None
    following: tuple[str, int, int]
    required: int
    actual: int
    kind: str = "timing"  # "timing" | "state" | "refresh"

    def __str__(self) -> str:
        ch = f"ch{self.channel} " if self.channel is not None else ""
        f = _describe(self.following)
        p = _describe(self.preceding) if self.preceding is not None else None
        if self.kind == "timing":
            return (f"{ch}{self.rule}: {f} is {self.actual} cycle(s) after {p}; needs >= "
                    f"{self.required} (short by {self.required - self.actual})")
        if self.kind == "refresh":
            if self.rule == "refresh_too_early":
                return f"{ch}{self.rule}: {f} issued before its due cycle {self.required}"
            if self.rule == "refresh_postponed_too_long":
                return (f"{ch}{self.rule}: {f} is {self.actual - self.required} cycles after its "
                        f"due cycle {self.required} (limit: under "
                        f"{JEDEC_MAX_POSTPONED_REFRESHES} x nREFI)")
            return (f"{ch}{self.rule}: log runs to cycle {self.actual} but the refresh due at "
                    f"cycle {self.required} never issued (last: {p or 'none'})")
        # state
        if self.rule == "mode":
            names = {C.MODE_PIM: "PIM (all-bank)", C.MODE_SB: "single-bank"}
            since = f" (last TMOD: {p})" if p is not None else " (no TMOD since reset)"
            return (f"{ch}{self.rule}: {f} needs {names.get(self.required)} mode but the channel "
                    f"is in {names.get(self.actual)} mode{since}")
        if self.rule == "command_not_available":
            return f"{ch}{self.rule}: {f} does not exist on this device (PIM disabled)"
        have = "closed" if self.actual < 0 else f"open at row {self.actual}"
        since = f" (since {p})" if p is not None else " (never opened)"
        if self.required < 0:
            if _is_bank(self.following[0]):
                return f"{ch}{self.rule}: {f} needs its bank closed but it is {have}{since}"
            return f"{ch}{self.rule}: {f} needs every bank closed but a bank is {have}{since}"
        return f"{ch}{self.rule}: {f} needs row {self.required} open but the bank is {have}{since}"


def _is_bank(name: str) -> bool:
    return name in C.CMD_INDEX and C.COMMANDS[C.CMD_INDEX[name]].scope == C.SCOPE_BANK


def _describe(ev: tuple[str, int, int]) -> str:
    name, cyc, bank = ev
    scope = C.COMMANDS[C.CMD_INDEX[name]].scope if name in C.CMD_INDEX else C.SCOPE_BANK
    where = f"bank {bank}" if scope == C.SCOPE_BANK and bank >= 0 else _SCOPE_WORD[scope]
    return f"{name}@{cyc} ({where})"


class ViolationList(list):
    """The violations found (a list), plus ``counts``: the true number per rule.

    At most ``max_per_rule`` violations of each rule are listed; ``total`` and ``counts`` count all.
    """

    def __init__(self, items=(), counts: dict[str, int] | None = None):
        super().__init__(items)
        self.counts: dict[str, int] = dict(counts or {})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def truncated(self) -> bool:
        return self.total > len(self)


# --------------------------------------------------------------------------- rule compilation


def _eval_expr(expr: str, cycles: dict[str, int], where: str) -> int:
    """Evaluate ``nCWL + nBL + nWR``-style integer expressions over the timing names."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in cycles:
                raise ConfigError(f"{where} needs timing value {node.id!r}, missing from [timing]")
            return int(cycles[node.id])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
        raise ValueError(f"unsupported latency expression {expr!r} in {where}")

    return ev(ast.parse(expr.strip(), mode="eval"))


@dataclass(frozen=True)
class _Rule:
    name: str
    level: int
    pre: np.ndarray  # bool [N_CMDS]
    fol: np.ndarray  # bool [N_CMDS]
    latency: int
    window: int


def _available(cfg: HwConfig) -> np.ndarray:
    return np.array([cfg.pim.enabled or not c.pim for c in C.COMMANDS], bool)


def _mask(names: tuple[str, ...], avail: np.ndarray, where: str) -> np.ndarray:
    m = np.zeros(C.N_CMDS, bool)
    for n in names:
        if n == "*":
            m |= avail
            continue
        if n not in C.CMD_INDEX:
            raise ValueError(f"{where}: unknown command {n!r}")
        i = C.CMD_INDEX[n]
        m[i] = m[i] or bool(avail[i])
    return m


_RULE_CACHE: dict[str, list[_Rule]] = {}


def _compile(cfg: HwConfig) -> list[_Rule]:
    key = repr((sorted(cfg.timing.cycles.items()), cfg.pim, cfg.host, cfg.org.standard))
    if key in _RULE_CACHE:
        return _RULE_CACHE[key]
    avail = _available(cfg)
    rules: list[Rule] = rules_for(cfg)
    names = rule_namespace(cfg)
    out = []
    for r in rules:
        where = f"timing rule {r.name}"
        pre = _mask(r.preceding, avail, where)
        fol = _mask(r.following, avail, where)
        if not pre.any() or not fol.any():
            continue
        lat = _eval_expr(r.latency, names, where)
        if r.level not in LEVEL_NAMES:
            raise ValueError(f"{where}: unknown level {r.level!r}")
        out.append(_Rule(r.name, LEVEL_NAMES[r.level], pre, fol, lat, int(r.window)))
    _RULE_CACHE[key] = out
    return out


def rule_latencies(cfg: HwConfig) -> dict[str, int]:
    """Latency in cycles of every rule that applies to ``cfg`` (as this checker evaluates it)."""
    return {r.name: r.latency for r in _compile(cfg)}


# --------------------------------------------------------------------------- vector primitives


def _last_before(mask: np.ndarray) -> np.ndarray:
    """``out[i]`` = the largest ``j < i`` with ``mask[j]``, or -1."""
    n = mask.shape[0]
    out = np.empty(n, np.int64)
    if n == 0:
        return out
    acc = np.maximum.accumulate(np.where(mask, np.arange(n, dtype=np.int64), -1))
    out[0] = -1
    out[1:] = acc[:-1]
    return out


@dataclass
class _Groups:
    """Bank-scope commands ordered by (group, position): segmented prefix scans per group."""

    order: np.ndarray
    off: np.ndarray
    starts: np.ndarray


def _groups(n: int, idx: np.ndarray, key: np.ndarray) -> _Groups:
    o = np.argsort(key, kind="stable")
    order = idx[o]
    gk = key[o].astype(np.int64)
    starts = np.ones(order.shape[0], bool)
    starts[1:] = gk[1:] != gk[:-1]
    return _Groups(order, gk * (n + 1), starts)


def _last_before_grouped(mask: np.ndarray, g: _Groups) -> np.ndarray:
    """Like :func:`_last_before` but only among bank-scope commands of the same group; the
    result is meaningful at the positions in ``g.order`` (-1 elsewhere)."""
    n = mask.shape[0]
    out = np.full(n, -1, np.int64)
    if g.order.shape[0] == 0:
        return out
    v = np.where(mask[g.order], g.order + g.off, g.off - 1)
    acc = np.maximum.accumulate(v) - g.off
    res = np.empty_like(acc)
    res[0] = -1
    res[1:] = acc[:-1]
    res[g.starts] = -1
    out[g.order] = res
    return out


# --------------------------------------------------------------------------- the checker


class _Collector:
    def __init__(self, channel, names, cyc, cmd, bank, max_per_rule):
        self.channel = channel
        self.names = names
        self.cyc, self.cmd, self.bank = cyc, cmd, bank
        self.max = max_per_rule
        self.items: list[tuple[int, int, Violation]] = []
        self.counts: dict[str, int] = {}

    def ev(self, i: int) -> tuple[str, int, int]:
        return (self.names[self.cmd[i]], int(self.cyc[i]), int(self.bank[i]))

    def add(self, rule: str, kind: str, fidx, pidx, required, actual, order: int = 0) -> None:
        fidx = np.asarray(fidx, np.int64)
        if fidx.shape[0] == 0:
            return
        self.counts[rule] = self.counts.get(rule, 0) + int(fidx.shape[0])
        pidx = np.broadcast_to(np.asarray(pidx, np.int64), fidx.shape)
        required = np.broadcast_to(np.asarray(required, np.int64), fidx.shape)
        actual = np.broadcast_to(np.asarray(actual, np.int64), fidx.shape)
        keep = fidx.shape[0] if self.max is None else min(self.max, fidx.shape[0])
        for j in range(keep):
            f, p = int(fidx[j]), int(pidx[j])
            v = Violation(rule, self.channel, self.ev(p) if p >= 0 else None, self.ev(f),
                          int(required[j]), int(actual[j]), kind)
            self.items.append((int(self.cyc[f]), order, v))

    def result(self) -> ViolationList:
        self.items.sort(key=lambda t: (t[0], t[1]))
        return ViolationList([v for _, _, v in self.items], self.counts)


def check_log(log, cfg: HwConfig, *, channel: int | None = None,
              max_per_rule: int | None = DEFAULT_MAX_PER_RULE) -> ViolationList:
    """Check one channel's issued-command log; return the violations (empty if legal).

    ``log`` is an integer array of rows ``(cycle, cmd id, bank, row)`` (bank -1 for all-bank and
    channel commands, as :attr:`pimsim.timing.ChannelTimer.log` gives it), starting at reset.
    ``channel`` only labels the violations. At most ``max_per_rule`` violations of each rule are
    listed (None: all); the returned list's ``counts``/``total`` count every one.
    """
    arr = np.asarray(log, dtype=np.int64)
    if arr.ndim != 2 or (arr.shape[0] and arr.shape[1] != 4):
        arr = arr.reshape(-1, 4)
    n = arr.shape[0]
    names = [c.name for c in C.COMMANDS]
    if n == 0:
        return ViolationList()
    if arr[:, 1].min() < 0 or arr[:, 1].max() >= C.N_CMDS:
        bad = arr[(arr[:, 1] < 0) | (arr[:, 1] >= C.N_CMDS)][0]
        raise ValueError(f"log row {bad.tolist()}: unknown command id {int(bad[1])}")
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    cyc, cmd, bank, row = (np.ascontiguousarray(arr[:, k]) for k in range(4))

    o = cfg.org
    attrs = _attrs(cfg)
    scope_tab = np.array([a[0] for a in attrs], np.int64)
    scope = scope_tab[cmd]
    is_bank = scope == C.SCOPE_BANK
    is_all = scope == C.SCOPE_ALLBANK
    bad = is_bank & ((bank < 0) | (bank >= o.banks))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"log row {arr[i].tolist()}: {names[cmd[i]]} needs a bank in "
                         f"0..{o.banks - 1}")
    bank_disp = np.where(is_bank, bank, -1)
    out = _Collector(channel, names, cyc, cmd, bank_disp, max_per_rule)

    # commands this device does not have
    avail = _available(cfg)
    na = np.flatnonzero(~avail[cmd])
    out.add("command_not_available", "state", na, -1, 0, 0)

    bidx = np.flatnonzero(is_bank)
    safe_bank = np.where(is_bank, bank, 0)
    grp = {
        LEVEL_NAMES["bank"]: _groups(n, bidx, safe_bank[bidx]),
        LEVEL_NAMES["bankgroup"]: _groups(n, bidx, safe_bank[bidx] // o.banks_per_group),
    }
    node_of = {
        LEVEL_NAMES["bank"]: safe_bank,
        LEVEL_NAMES["bankgroup"]: safe_bank // o.banks_per_group,
    }
    n_nodes = {LEVEL_NAMES["bank"]: o.banks, LEVEL_NAMES["bankgroup"]: o.bankgroups}

    cache: dict[tuple, np.ndarray] = {}

    def last(key_mask: bytes, kind: str, pre_cmds: np.ndarray, level: int | None = None):
        key = (key_mask, kind, level)
        if key not in cache:
            m = pre_cmds[cmd]
            if kind == "any":
                cache[key] = _last_before(m)
            elif kind == "nonchannel":
                cache[key] = _last_before(m & (is_bank | is_all))
            elif kind == "all":
                cache[key] = _last_before(m & is_all)
            else:  # grouped bank-scope
                cache[key] = _last_before_grouped(m & is_bank, grp[level])
        return cache[key]

    rules = _compile(cfg)
    has_bus_rule = False
    for ri, r in enumerate(rules):
        fol = r.fol[cmd]
        pk = r.pre.tobytes()
        if r.window:
            _check_window(r, ri, out, cyc, cmd, fol, is_bank, is_all, node_of, n_nodes)
            continue
        if r.level == LEVEL_NAMES["channel"]:
            if r.pre[avail].all() and r.fol[avail].all() and r.latency >= 1:
                has_bus_rule = True
            f = np.flatnonzero(fol)
            L = last(pk, "any", r.pre)[f]
        else:
            fb = np.flatnonzero(fol & is_bank)
            fa = np.flatnonzero(fol & is_all)
            Lb = np.maximum(last(pk, "all", r.pre)[fb], last(pk, "grouped", r.pre, r.level)[fb])
            La = last(pk, "nonchannel", r.pre)[fa]
            f = np.concatenate([fb, fa])
            L = np.concatenate([Lb, La])
        if f.shape[0] == 0:
            continue
        has = L >= 0
        dist = cyc[f] - cyc[np.where(has, L, 0)]
        v = has & (dist < r.latency)
        if v.any():
            sel = np.flatnonzero(v)
            sel = sel[np.argsort(f[sel], kind="stable")]
            out.add(r.name, "timing", f[sel], L[sel], r.latency, dist[sel], ri)

    if not has_bus_rule:  # the tables always have cmd_bus; keep the guarantee if they change
        dup = np.flatnonzero(np.diff(cyc) < 1) + 1
        out.add("one_command_per_cycle", "timing", dup, dup - 1, 1, cyc[dup] - cyc[dup - 1])

    _check_state(cfg, out, cyc, cmd, bank, row, is_bank, is_all)
    if cfg.refresh.enabled:
        _check_refresh(cfg, out, cyc, cmd)
    return out.result()


def _check_window(r: _Rule, ri, out, cyc, cmd, fol, is_bank, is_all, node_of, n_nodes):
    """The W-th most recent preceding command on a shared node must be >= latency earlier."""
    pre = r.pre[cmd]
    if r.level == LEVEL_NAMES["channel"]:
        touch = [(np.ones_like(pre), None)]
    else:
        key = node_of[r.level]
        touch = [((is_bank & (key == k)) | is_all, k) for k in range(n_nodes[r.level])]
    worst: dict[int, tuple[int, int]] = {}
    for t, _k in touch:
        P = np.flatnonzero(pre & t)
        F = np.flatnonzero(fol & t)
        if P.shape[0] < r.window or F.shape[0] == 0:
            continue
        c = np.searchsorted(P, F, side="left")  # preceding strictly before each following
        ok = c >= r.window
        F, c = F[ok], c[ok]
        L = P[c - r.window]
        dist = cyc[F] - cyc[L]
        bad = dist < r.latency
        for f, p, d in zip(F[bad].tolist(), L[bad].tolist(), dist[bad].tolist()):
            if f not in worst or d < worst[f][1]:
                worst[f] = (p, d)
    if worst:
        fs = np.array(sorted(worst), np.int64)
        out.add(r.name, "timing", fs, [worst[f][0] for f in fs.tolist()], r.latency,
                [worst[f][1] for f in fs.tolist()], ri)


def _attrs(cfg: HwConfig) -> list[tuple[int, int, int]]:
    """(scope, row behaviour, mode) of each command on this device (the spec's data)."""
    return C.command_attrs(cfg.pim.mode_switch, cfg.pim.af_pseudo_row, cfg.pim.enabled)


def _check_state(cfg, out, cyc, cmd, bank, row, is_bank, is_all):
    """Re-derive open rows per bank (and the PIM mode) from the log and check each command."""
    rowb = np.array([a[1] for a in _attrs(cfg)], np.int64)[cmd]
    opens = rowb == C.ROW_OPENS
    setter = opens | (rowb == C.ROW_CLOSES) | (rowb == C.ROW_NEEDS_OPEN_THEN_CLOSES)
    needs_open = (rowb == C.ROW_NEEDS_OPEN) | (rowb == C.ROW_NEEDS_OPEN_THEN_CLOSES)
    needs_closed_all = rowb == C.ROW_NEEDS_ALL_CLOSED

    sb_need = np.flatnonzero(is_bank & needs_open)
    sb_act = np.flatnonzero(is_bank & opens)
    ab_need = np.flatnonzero(is_all & needs_open)
    ab_closed = np.flatnonzero(is_all & (opens | needs_closed_all))
    ab_need_bad = np.zeros(ab_need.shape[0], bool)
    ab_need_info = np.full((ab_need.shape[0], 2), -1, np.int64)  # (setter, open row)
    ab_closed_bad = np.zeros(ab_closed.shape[0], bool)
    ab_closed_info = np.full((ab_closed.shape[0], 2), -1, np.int64)
    sb_need_info = np.full((sb_need.shape[0], 2), -1, np.int64)
    sb_act_info = np.full((sb_act.shape[0], 2), -1, np.int64)

    for b in range(cfg.org.banks):
        touches = (is_bank & (bank == b)) | is_all
        L = _last_before(setter & touches)
        Ls = np.where(L >= 0, L, 0)
        open_row = np.where((L >= 0) & opens[Ls], row[Ls], -1)
        for idx, info in ((sb_need, sb_need_info), (sb_act, sb_act_info)):
            here = bank[idx] == b
            info[here, 0] = L[idx[here]]
            info[here, 1] = open_row[idx[here]]
        bad = open_row[ab_need] != row[ab_need]
        new = bad & ~ab_need_bad
        ab_need_info[new, 0] = L[ab_need[new]]
        ab_need_info[new, 1] = open_row[ab_need[new]]
        ab_need_bad |= bad
        bad = open_row[ab_closed] >= 0
        new = bad & ~ab_closed_bad
        ab_closed_info[new, 0] = L[ab_closed[new]]
        ab_closed_info[new, 1] = open_row[ab_closed[new]]
        ab_closed_bad |= bad

    bad = sb_need_info[:, 1] != row[sb_need]
    out.add("row_not_open", "state", sb_need[bad], sb_need_info[bad, 0], row[sb_need[bad]],
            sb_need_info[bad, 1])
    out.add("row_not_open", "state", ab_need[ab_need_bad], ab_need_info[ab_need_bad, 0],
            row[ab_need[ab_need_bad]], ab_need_info[ab_need_bad, 1])
    bad = sb_act_info[:, 1] >= 0
    out.add("act_to_open_bank", "state", sb_act[bad], sb_act_info[bad, 0], -1, sb_act_info[bad, 1])
    is_ref = needs_closed_all[ab_closed]
    for name, sel in (("act_to_open_bank", ab_closed_bad & ~is_ref),
                      ("refresh_with_open_bank", ab_closed_bad & is_ref)):
        out.add(name, "state", ab_closed[sel], ab_closed_info[sel, 0], -1, ab_closed_info[sel, 1])

    if cfg.pim.enabled:
        mode_tab = np.array([a[2] for a in _attrs(cfg)], np.int64)
        tmod = cmd == C.CMD_INDEX["TMOD"]
        before = np.cumsum(tmod) - tmod  # TMODs strictly before each command
        mode = (C.MODE_SB + before) % 2  # reset: single-bank mode; each TMOD toggles
        need = mode_tab[cmd]
        bad = np.flatnonzero((need >= 0) & (need != mode))
        last_tmod = _last_before(tmod)
        out.add("mode", "state", bad, last_tmod[bad], need[bad], mode[bad])


def _check_refresh(cfg, out, cyc, cmd):
    n_refi = int(cfg.timing.cycles["nREFI"])
    limit = JEDEC_MAX_POSTPONED_REFRESHES * n_refi
    refs = np.flatnonzero(cmd == C.CMD_INDEX["REFab"])
    due = (np.arange(refs.shape[0], dtype=np.int64) + 1) * n_refi
    early = cyc[refs] < due
    out.add("refresh_too_early", "refresh", refs[early], -1, due[early], cyc[refs[early]])
    late = cyc[refs] - due >= limit
    out.add("refresh_postponed_too_long", "refresh", refs[late], -1, due[late], cyc[refs[late]])
    next_due = (refs.shape[0] + 1) * n_refi
    end = int(cyc[-1])
    if end - next_due >= limit:
        last_ref = int(refs[-1]) if refs.shape[0] else -1
        out.add("refresh_missing", "refresh", [cyc.shape[0] - 1], last_ref, next_due, end)


# --------------------------------------------------------------------------- many channels


_FIELDS = ("cycle", "channel", "bank", "row", "command")


def check_command_log(records, cfg: HwConfig, *,
                      max_per_rule: int | None = DEFAULT_MAX_PER_RULE) -> ViolationList:
    """Check a log of many channels: records ``(cycle, channel, bank, row, command)``.

    ``records`` is a numpy structured array with those field names, a 2-D integer array with those
    five columns (command as id; :func:`pimsim.engine.command_log` gives this), or any iterable of
    such tuples with the command as a name (``"MAC_AB"``) or an id. Channels are checked
    independently; the result is sorted by cycle.
    """
    cols = _columns(records)
    cycle, channel, bank, row, command = cols
    result = ViolationList()
    for ch in np.unique(channel).tolist():
        sel = channel == ch
        log = np.stack([cycle[sel], command[sel], bank[sel], row[sel]], axis=1)
        v = check_log(log, cfg, channel=int(ch), max_per_rule=max_per_rule)
        result.extend(v)
        for k, c in v.counts.items():
            result.counts[k] = result.counts.get(k, 0) + c
    result.sort(key=lambda x: (x.following[1], x.channel if x.channel is not None else -1))
    return result


def _command_ids(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) for v in values):
        return values.astype(np.int64)
    uniq, inv = np.unique(values.astype(str), return_inverse=True)
    ids = []
    for u in uniq.tolist():
        if u in C.CMD_INDEX:
            ids.append(C.CMD_INDEX[u])
        else:
            try:
                ids.append(int(u))
            except ValueError:
                known = ", ".join(C.CMD_INDEX)
                raise ValueError(f"unknown command {u!r}; known: {known}") from None
    return np.asarray(ids, np.int64)[inv]


def _columns(records) -> tuple[np.ndarray, ...]:
    if isinstance(records, np.ndarray) and records.dtype.names:
        missing = [f for f in _FIELDS if f not in records.dtype.names]
        if missing:
            raise ValueError(f"structured log lacks field(s) {missing}; needs {_FIELDS}")
        cols = [np.asarray(records[f]) for f in _FIELDS]
    elif isinstance(records, np.ndarray) and records.dtype.kind in "iu":
        arr = records.reshape(-1, 5) if records.size else np.empty((0, 5), np.int64)
        cols = [arr[:, k] for k in range(5)]
    else:
        rows = list(records) if not isinstance(records, np.ndarray) else records.tolist()
        if rows and len(rows[0]) != 5:
            raise ValueError("each record must be (cycle, channel, bank, row, command)")
        cols = [np.array([r[k] for r in rows], dtype=object) for k in range(5)]
    out = [np.asarray(c).astype(np.int64) for c in cols[:4]]
    out.append(_command_ids(np.asarray(cols[4])))
    return tuple(out)


# --------------------------------------------------------------------------- report


def check_report(violations: Iterable[Violation], *, show: int = 20) -> str:
    """A short human-readable summary: totals per rule, then the first ``show`` violations."""
    vs = list(violations)
    counts = getattr(violations, "counts", None)
    if not counts:
        counts = {}
        for v in vs:
            counts[v.rule] = counts.get(v.rule, 0) + 1
    total = sum(counts.values())
    if total == 0:
        return "check: no violations"
    chans = sorted({v.channel for v in vs if v.channel is not None})
    lines = [f"check: {total} violation(s) of {len(counts)} rule(s)"
             + (f" on {len(chans)} channel(s)" if chans else "")]
    width = max(len(k) for k in counts)
    for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {k:<{width}}  {c}")
    if vs:
        lines.append(f"first {min(show, len(vs))}:")
        lines.extend(f"  {v}" for v in vs[:show])
    if total > len(vs):
        lines.append(f"({total - len(vs)} more not listed)")
    return "\n".join(lines)
