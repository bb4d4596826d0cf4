"""The results store of ``pimsim sweep``: one SQLite file, one row per simulated point.

A point is keyed by a hash of everything its result depends on (:func:`point_key`): the
canonical hardware config values, the model (a preset's name, a model file's content digest),
the run settings and the simulator version. Rows are
written by the sweep's driver as each point finishes, one transaction (commit) per point, in WAL
mode with ``synchronous = FULL``: a sweep killed at any moment keeps every point that finished,
and a re-run skips them.

Schema (``SCHEMA``):

``points``        one row per key. ``status`` is ``ok`` (metrics filled in), ``invalid`` (the
                  point cannot exist: a model that does not fit, a bad parameter value;
                  ``reason`` says why; never retried) or ``error`` (an unexpected failure, or a
                  model that could not be resolved: a missing file, a module that cannot be
                  imported; ``reason`` says why; retried by the next run).
``sweeps``        one row per sweep name: the expanded spec it was last run with.
``sweep_points``  the points of each sweep in spec order, with the swept parameter values
                  (several sweeps may share a point: it is simulated once).

``Store(path, readonly=True)`` (what :func:`to_dataframe` and :func:`to_csv` use) opens the file
with a ``mode=ro`` URI and writes nothing, so a store on a read-only file or medium can be read.
Every SQLite failure (not a database, locked, disk full, unreadable) is a
:class:`~pimsim.errors.UserError` naming the file.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pimsim.digest import canonical_json, digest
from pimsim.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    key           TEXT PRIMARY KEY,   -- sha256 of (hw values, model, settings, version)
    status        TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error')),
    reason        TEXT,               -- invalid / error: exception type and message
    model         TEXT NOT NULL,
    prompt        INTEGER NOT NULL,
    tokens        INTEGER NOT NULL,
    schedule      TEXT NOT NULL,
    skip_prompt   INTEGER NOT NULL,
    batch         INTEGER NOT NULL DEFAULT 1,  -- sequences decoded together
    version       TEXT NOT NULL,      -- pimsim.__version__ of the simulator
    hw_name       TEXT,
    hw_json       TEXT NOT NULL,      -- canonical hardware config values
    params_json   TEXT,               -- swept values of the sweep that first wrote the row
    ms_per_token  REAL,
    tokens_per_s  REAL,
    mj_per_token  REAL,
    row_hit_rate  REAL,
    cycles        INTEGER,
    ms_total      REAL,
    breakdown_json TEXT,              -- fractions of the token time by share (pim_mac, ...)
    per_op_json   TEXT,               -- ms per generated token by op
    energy_json   TEXT,               -- mJ per generated token by component
    commands_json TEXT,               -- command counts
    compile_s     REAL,               -- wall seconds compiling (0 when cached in the worker)
    sim_s         REAL,               -- wall seconds simulating
    worker        TEXT,               -- host:pid that ran it
    finished_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    name        TEXT PRIMARY KEY,
    spec_json   TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_points (
    sweep       TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    params_json TEXT NOT NULL,
    PRIMARY KEY (sweep, idx)
);
CREATE INDEX IF NOT EXISTS sweep_points_key ON sweep_points (key);
"""

FINAL = ("ok", "invalid")  # statuses a re-run skips; 'error' points are run again

_COLUMNS = ("key", "status", "reason", "model", "prompt", "tokens", "schedule", "skip_prompt",
            "batch", "version", "hw_name", "hw_json", "params_json", "ms_per_token", "tokens_per_s",
            "mj_per_token", "row_hit_rate", "cycles", "ms_total", "breakdown_json", "per_op_json",
            "energy_json", "commands_json", "compile_s", "sim_s", "worker", "finished_at")


def point_key(hw: dict, model: Any, settings: dict, version: str) -> str:
    """The hash that identifies a point: same values, same key, whatever the spec spelling.
    ``model``: the model's identity (:func:`workloads.sweeps.spec.model_key`: a name, or a
    model file's content digest)."""
    doc = {"hw": hw, "model": model, "settings": settings, "version": version}
    return digest(doc, 32)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


def _sqlite_error(path: Path, e: Exception) -> UserError:
    msg = " ".join(str(e).split()) or type(e).__name__
    if "not a database" in msg or "malformed" in msg:
        fix = "give a results store written by pimsim sweep (or a new file name)"
    elif "locked" in msg or "busy" in msg:
        fix = "wait for the other process using it to finish, or use another --db"
    elif "readonly" in msg or "read-only" in msg:
        fix = "use a writable --db (reading a read-only store: pimsim sweep SPEC --report)"
    else:
        fix = "check the path, its permissions and the free disk space"
    return UserError(f"results store {str(path)!r}: {msg}", fix)


def _guarded(f):
    """Every sqlite3 / OS error of a Store method -> UserError naming the file."""

    @functools.wraps(f)
    def g(self, *a, **kw):
        try:
            return f(self, *a, **kw)
        except (sqlite3.Error, OSError) as e:
            raise _sqlite_error(self.path, e) from None

    return g


class Store:
    """A sweep results database. Only the sweep driver writes; readers may come and go.
    ``readonly``: open an existing store for reading only (``mode=ro``); nothing is written."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                self.conn = self._open_ro()
            else:
                if str(self.path.parent) and not self.path.parent.exists():
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.is_dir():
                    raise UserError(f"results store {str(self.path)!r} is a directory",
                                    "give a file name for --db")
                self.conn = sqlite3.connect(str(self.path), timeout=60.0)
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")  # a committed point survives
                self.conn.execute("PRAGMA busy_timeout = 60000")
                with self.conn:
                    self.conn.executescript(SCHEMA)
                    cols = {r[1] for r in self.conn.execute("PRAGMA table_info(points)")}
                    if "batch" not in cols:  # a store written before the batch axis
                        self.conn.execute("ALTER TABLE points ADD COLUMN batch INTEGER NOT NULL "
                                          "DEFAULT 1")
        except (sqlite3.Error, OSError) as e:
            raise _sqlite_error(self.path, e) from None

    def _open_ro(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise UserError(f"results store {str(self.path)!r} not found",
                            "give the --db file the sweep wrote")
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        try:
            conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=10.0)
            conn.execute("SELECT COUNT(*) FROM points").fetchone()
            return conn
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                raise
            # a WAL store on a read-only medium cannot make its -shm file: read it as immutable
            conn = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True)
            conn.execute("SELECT COUNT(*) FROM points").fetchone()
            return conn

    def close(self) -> None:
        """Close; a writer leaves the file in rollback-journal mode (no -wal / -shm beside
        it), so it can be copied alone and read from a read-only medium."""
        if not self.readonly:
            try:
                self.conn.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.Error:  # another process still has it open: it stays in WAL mode
                pass
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    @_guarded
    def register_sweep(self, name: str, spec: dict, members: list[tuple[int, str, dict]]) -> None:
        """Record a sweep and its points (idx, key, params), replacing an earlier version."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO sweeps (name, spec_json, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec_json = excluded.spec_json, "
                "updated_at = excluded.updated_at", (name, canonical_json(spec), _now()))
            self.conn.execute("DELETE FROM sweep_points WHERE sweep = ?", (name,))
            self.conn.executemany(
                "INSERT INTO sweep_points (sweep, idx, key, params_json) VALUES (?, ?, ?, ?)",
                [(name, i, k, json.dumps(p, default=str)) for i, k, p in members])  # spec order

    @_guarded
    def write(self, row: dict) -> None:
        """Store one finished point in its own transaction. A finished (ok / invalid) row is
        never overwritten; an 'error' row is replaced by the new outcome."""
        vals = {c: row.get(c) for c in _COLUMNS}
        vals["finished_at"] = vals["finished_at"] or _now()
        for c in ("breakdown", "per_op", "energy", "commands", "hw", "params"):
            if c in row and row.get(c + "_json") is None:
                vals[c + "_json"] = (json.dumps(row[c], default=str) if c == "params"
                                     else canonical_json(row[c]))
        vals["skip_prompt"] = int(bool(vals["skip_prompt"]))
        vals["batch"] = int(vals["batch"] or 1)
        cols = ", ".join(_COLUMNS)
        qs = ", ".join("?" for _ in _COLUMNS)
        upd = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in ("key", "params_json"))
        with self.conn:
            self.conn.execute(
                f"INSERT INTO points ({cols}) VALUES ({qs}) ON CONFLICT(key) DO UPDATE SET {upd} "
                f"WHERE points.status = 'error'", [vals[c] for c in _COLUMNS])

    # ------------------------------------------------------------------ reading
    @_guarded
    def finished(self, keys: Iterable[str]) -> set[str]:
        """Keys among ``keys`` that hold a final (ok / invalid) result."""
        keys = list(keys)
        out: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = ",".join("?" for _ in chunk)
            out |= {r[0] for r in self.conn.execute(
                f"SELECT key FROM points WHERE status IN ('ok', 'invalid') AND key IN ({q})",
                chunk)}
        return out

    @_guarded
    def rows_by_key(self, keys: list[str]) -> list[dict]:
        """The stored rows of ``keys`` (those present)."""
        self.conn.row_factory = sqlite3.Row
        out: list[dict] = []
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ",".join("?" for _ in chunk)
                out += [dict(r) for r in self.conn.execute(
                    f"SELECT * FROM points WHERE key IN ({q})", chunk)]
        finally:
            self.conn.row_factory = None
        return out

    @_guarded
    def count(self, status: str | None = None) -> int:
        if status is None:
            return self.conn.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM points WHERE status = ?",
                                 (status,)).fetchone()[0]

    @_guarded
    def sweeps(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sweeps ORDER BY name")]

    @_guarded
    def rows(self, sweep: str | None = None) -> list[dict]:
        """Rows as dicts. With ``sweep``: that sweep's points in spec order (idx, params from
        the sweep; a point not yet run has status None); else every stored point."""
        self.conn.row_factory = sqlite3.Row
        try:
            if sweep is None:
                cur = self.conn.execute("SELECT * FROM points ORDER BY finished_at, key")
                out = [dict(r) for r in cur]
                for i, r in enumerate(out):
                    r["idx"] = i
            else:
                cur = self.conn.execute(
                    "SELECT s.idx AS idx, s.key AS skey, s.params_json AS sweep_params, p.* "
                    "FROM sweep_points s LEFT JOIN points p ON p.key = s.key "
                    "WHERE s.sweep = ? ORDER BY s.idx", (sweep,))
                out = []
                for r in cur:
                    d = dict(r)
                    d["key"] = d.pop("skey")
                    d["params_json"] = d.pop("sweep_params")
                    out.append(d)
        finally:
            self.conn.row_factory = None
        return out


# ---------------------------------------------------------------- export

_JSON_FLAT = {"breakdown_json": "time_", "energy_json": "mj_"}


def to_dataframe(db: str | Path | Store, sweep: str | None = None):
    """The points as a pandas DataFrame: one row per point, the swept parameters as columns,
    the metrics, the time breakdown (``time_<part>``, fractions) and the energy per token by
    component (``mj_<component>``). ``sweep`` selects one sweep's points in spec order."""
    store = db if isinstance(db, Store) else Store(db, readonly=True)
    try:
        rows = store.rows(sweep)
    finally:
        if store is not db:
            store.close()
    return _frame(rows)


def rows_for_keys(db: str | Path, members: list[tuple[int, str, dict]]):
    """:func:`to_dataframe` of the given points (idx, key, params), read-only: what the store
    holds for a spec, whether or not that sweep was registered in it."""
    with Store(db, readonly=True) as store:
        stored = {r["key"]: r for r in store.rows_by_key([k for _, k, _ in members])}
    rows = []
    for idx, key, params in members:
        r = dict(stored.get(key, {}))
        r.update(idx=idx, key=key, params_json=json.dumps(params, default=str))
        rows.append(r)
    return _frame(rows)


SYSTEM_AXES = ("devices", "tp", "pp")  # sweep axes of pimsim.system, filled from hw_json


def _frame(rows: list[dict]):
    import pandas as pd

    recs, param_cols = [], []
    for r in rows:
        params = json.loads(r.get("params_json") or "{}")
        for p in params:
            if p not in param_cols:
                param_cols.append(p)
        rec: dict[str, Any] = {"idx": r["idx"], "key": r["key"]}
        rec.update(params)  # alias names and dotted paths: no clash with the columns
        for c in ("status", "reason", "model", "prompt", "tokens", "schedule", "skip_prompt",
                  "batch", "ms_per_token", "tokens_per_s", "mj_per_token", "row_hit_rate", "cycles",
                  "ms_total", "compile_s", "sim_s", "hw_name", "version", "worker",
                  "finished_at"):
            if c in params:  # the swept value already stands in its column
                continue
            rec[c] = r.get(c)
        for c, prefix in _JSON_FLAT.items():
            for k, v in json.loads(r.get(c) or "{}").items():
                rec[prefix + k] = v
        rec["hw_json"] = r.get("hw_json")
        recs.append(rec)
    for rec in recs:  # a point that left a system axis to its rule: the value it resolved to
        for c in SYSTEM_AXES:
            if c in param_cols and c not in rec and rec.get("hw_json"):
                try:
                    rec[c] = json.loads(rec["hw_json"]).get("system", {}).get(c)
                except (ValueError, AttributeError):
                    pass
    df = pd.DataFrame.from_records(recs)
    for c in ("prompt", "tokens", "batch", "cycles"):
        if c in df and c not in param_cols:
            df[c] = df[c].astype("Int64")
    if "skip_prompt" in df:
        df["skip_prompt"] = df["skip_prompt"].map(lambda v: None if v is None else bool(v))
    df.attrs["params"] = param_cols
    return df


def to_csv(db: str | Path | Store, path: str | Path, sweep: str | None = None) -> Path:
    """Write :func:`to_dataframe` as CSV; returns the path."""
    from pimsim.outputs import atomic_write

    path = Path(path)
    df = to_dataframe(db, sweep)
    with atomic_write(path, "CSV file", newline="") as f:
        df.drop(columns=["hw_json"], errors="ignore").to_csv(f, index=False)
    return path
