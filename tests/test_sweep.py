"""pimsim sweep: spec expansion, the SQLite store (kill and resume), local processes vs a Dask
cluster, invalid points, exports and plots, and the channel-scaling example."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workloads import sweeps as S
from workloads.plots import plot_sweep
from workloads.sweeps.store import point_key, to_csv, to_dataframe

ROOT = Path(__file__).resolve().parent.parent

# tiny (d_head 16, context 64): banks 12 cannot hold the KV cache, 4 rows per bank are too few,
# 8 MAC lanes do not match a 16-element column, 100 tokens overflow the context, a global buffer
# of 100 bytes is not whole columns, refresh = "yes" is not a bool, and no-such-model is unknown
INVALID_SPEC = {
    "name": "mixed",
    "model": "tiny",
    "tokens": 2,
    "grid": {"channels": [2, 4]},
    "points": [
        {"banks": 16},
        {"banks": 8},
        {"banks": 12},
        {"rows": 4},
        {"pim.mac_lanes_per_bank": 8},
        {"tokens": 100},
        {"global_buffer_bytes": 100},
        {"refresh": "yes"},
        {"model": "no-such-model"},
    ],
}
EXPECTED_INVALID = {
    "banks": (12, "MappingError"),
    "rows": (4, "CapacityError"),
    "pim.mac_lanes_per_bank": (8, "MappingError"),
    "tokens": (100, "PointError"),
    "global_buffer_bytes": (100, "ConfigError"),
    "refresh": ("yes", "ConfigError"),
    "model": ("no-such-model", "ModelError"),
}


def _rows(db) -> list[tuple]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT key, status, finished_at, worker FROM points").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


# ---------------------------------------------------------------- spec

def test_spec_expansion_keys_and_aliases():
    sp = S.spec_from_dict({"model": "tiny", "grid": {"channels": [4, 8], "banks": [8, 16]},
                           "points": [{"refresh": True}, {"refresh": False}]})
    assert len(sp.points) == 8
    assert sp.swept == ["channels", "banks", "refresh"]
    p = sp.points[0]
    assert p.params == {"channels": 4, "banks": 8, "refresh": True}
    assert p.hw["organization"]["banks_per_group"] == 2  # 4 bank groups
    assert p.hw["organization"]["channel_mask"] == 0
    assert len({q.key for q in sp.points}) == 8
    # the base config spelled as the base (mask 0xff) or as channels = 8: one key
    a = S.spec_from_dict({"model": "tiny"}).points[0]
    b = S.spec_from_dict({"model": "tiny", "grid": {"channels": [8]}}).points[0]
    c = S.spec_from_dict({"model": "tiny", "fixed": {"asic_clock_mhz": 1000}}).points[0]
    assert a.key == b.key == c.key
    # the key covers the settings and the simulator version
    assert a.key != S.spec_from_dict({"model": "tiny", "tokens": 9}).points[0].key
    assert a.key != point_key(a.hw, a.model, a.settings, "0.0.0-other")
    # mac_lanes moves the column width with it; clock_scaling = ns keeps nanoseconds
    m = S.spec_from_dict({"model": "tiny", "grid": {"mac_lanes": [32]}}).points[0]
    assert m.error is None
    assert m.hw["organization"]["column_bytes"] == 64 and m.hw["organization"]["columns"] == 32
    base = S.spec_from_dict({"model": "tiny"}).points[0].hw["timing"]
    ns = S.spec_from_dict({"model": "tiny", "clock_scaling": "ns",
                           "grid": {"tCK_ps": [250]}}).points[0].hw["timing"]
    assert ns["tCK_ps"] == 250 and ns["nRCDRD"] == 2 * base["nRCDRD"]
    assert ns["nBL"] == base["nBL"] and ns["nCCDL"] == base["nCCDL"]


def test_spec_errors_are_reported_before_running():
    with pytest.raises(S.SpecError, match="unknown parameter 'chanels'"):
        S.spec_from_dict({"grid": {"chanels": [4]}})
    with pytest.raises(S.SpecError, match="unknown key"):
        S.spec_from_dict({"gird": {}})
    with pytest.raises(S.SpecError, match="empty list"):
        S.spec_from_dict({"grid": {"channels": []}})
    with pytest.raises(S.SpecError, match="base hardware config"):
        S.spec_from_dict({"hw": "no-such-config"})


# ---------------------------------------------------------------- one in-process sweep: (c) (d) (e)

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    spec = S.spec_from_dict(INVALID_SPEC, name="mixed")
    res = S.run_sweep(spec, d / "s.db", workers=0, progress=False, log=lambda s: None)
    return spec, d, res


def test_invalid_points_recorded_with_reasons(mixed):
    spec, d, res = mixed
    df = res.df
    assert len(df) == 18 and res.n_run == 18
    assert res.counts == {"ok": 4, "invalid": 14, "error": 0}
    for param, (value, kind) in EXPECTED_INVALID.items():
        rows = df[df[param] == value] if param in df else df.iloc[0:0]
        assert len(rows) == 2, param
        assert (rows["status"] == "invalid").all(), param
        assert rows["reason"].str.startswith(kind).all(), (param, rows["reason"].tolist())
    ok = df[df["status"] == "ok"]
    assert ok["ms_per_token"].gt(0).all() and ok["mj_per_token"].gt(0).all()
    text = S.summary(res)
    assert "CapacityError" in text and "does not fit" in text and "14 invalid" in text


def test_rerun_skips_finished_points_and_retries_errors(mixed):
    spec, d, res = mixed
    before = sorted(_rows(d / "s.db"))
    again = S.run_sweep(spec, d / "s.db", workers=0, progress=False, log=lambda s: None)
    assert again.n_run == 0 and again.n_skipped == 18
    assert sorted(_rows(d / "s.db")) == before  # nothing re-run, nothing rewritten
    # an unexpected failure is not final: the next run does that point again
    key = spec.points[0].key
    con = sqlite3.connect(str(d / "s.db"))
    with con:
        con.execute("UPDATE points SET status = 'error', reason = 'boom' WHERE key = ?", (key,))
    con.close()
    third = S.run_sweep(spec, d / "s.db", workers=0, progress=False, log=lambda s: None)
    assert third.n_run == 1
    assert dict((r[0], r[1]) for r in _rows(d / "s.db"))[key] == "ok"
    assert len(_rows(d / "s.db")) == 18


def test_exports_csv_dataframe_and_plots(mixed):
    spec, d, res = mixed
    df = to_dataframe(d / "s.db", "mixed")
    assert list(df["idx"]) == list(range(18))
    assert {"channels", "banks", "ms_per_token", "mj_per_token", "time_pim_mac",
            "mj_mac_units", "status", "reason"} <= set(df.columns)
    assert df.attrs["params"][:2] == ["channels", "banks"]
    # the time columns are the run report's shares (pimsim.accounting), summing to 1 per point
    from pimsim.accounting import TIME_SHARES

    tcols = [c for c in df.columns if c.startswith("time_")]
    assert sorted(tcols) == sorted("time_" + k for k in TIME_SHARES)
    ok = df[df["status"] == "ok"]
    assert len(ok) and ((ok[tcols].sum(axis=1) - 1).abs() < 1e-9).all()
    csv = to_csv(d / "s.db", d / "out" / "s.csv", "mixed")
    back = pd.read_csv(csv)
    assert len(back) == 18
    ok = back[back["status"] == "ok"].set_index("key")
    for r in res.df[res.df["status"] == "ok"].to_dict("records"):
        assert ok.loc[r["key"], "ms_per_token"] == pytest.approx(r["ms_per_token"], rel=1e-12)
    files = plot_sweep(res, d / "plots")
    names = {f.name for f in files}
    assert {"vs_channels.png", "vs_banks.png", "pareto.png"} <= names
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    # the whole store (no sweep named) exports too
    assert len(to_dataframe(d / "s.db")) == 18


# ---------------------------------------------------------------- (a) kill and resume

KILL_SPEC = """
name = "kill"
model = "tiny"
prompt = 16
tokens = 48
skip_prompt = false      # every prompt step too: 63 decode steps a point

[grid]
channels = [1, 2, 4, 8]
banks = [4, 8, 16]
schedule = ["serial", "overlap"]
"""


def _sweep_cmd(spec, db, *extra):
    return [sys.executable, "-m", "workloads.cli", "sweep", str(spec), "--db", str(db),
            "--no-progress", *extra]


def test_killed_sweep_loses_nothing_and_resumes(tmp_path):
    spec = tmp_path / "kill.toml"
    spec.write_text(KILL_SPEC)
    db = tmp_path / "kill.db"
    n = len(S.load_spec(spec).points)
    assert n == 24
    proc = subprocess.Popen(_sweep_cmd(spec, db, "--workers", "1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(db)) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no point finished in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep, no cleanup at all
        con = sqlite3.connect(str(db))
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # as it was written
        con.close()
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group: any orphan worker
        except ProcessLookupError:
            pass
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    survived = {k: (st, fin, w) for k, st, fin, w in _rows(db)}
    assert 3 <= len(survived) < n, "the kill should land mid-sweep"
    assert all(v[0] == "ok" for v in survived.values())

    # resume (in this process: the same driver code, without a second interpreter start)
    res = S.run_sweep(spec, db, workers=0, progress=False, log=lambda s: None)
    assert res.n_skipped == len(survived) and res.n_run == n - len(survived)
    rows = _rows(db)
    keys = [r[0] for r in rows]
    assert len(keys) == n and len(set(keys)) == n  # every point once: none lost or doubled
    assert {k for k in keys} == {p.key for p in S.load_spec(spec).points}
    assert all(r[1] == "ok" for r in rows)
    after = {k: (st, fin, w) for k, st, fin, w in rows}
    assert all(after[k] == v for k, v in survived.items())  # finished points were not re-run
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT COUNT(*) FROM sweep_points WHERE sweep = 'kill'").fetchone()[0] \
        == n
    # a finished sweep leaves one file (rollback journal): readable from a read-only medium
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not Path(str(db) + "-wal").exists() and not Path(str(db) + "-shm").exists()


# ---------------------------------------------------------------- (b) Dask cluster == local

def test_dask_cluster_and_local_processes_agree(tmp_path):
    from dask.distributed import LocalCluster

    spec = S.spec_from_dict({"name": "dask", "model": "tiny", "tokens": 3,
                             "grid": {"channels": [2, 4], "schedule": ["serial", "overlap"]},
                             "points": [{"banks": 16}, {"banks": 12}]}, name="dask")
    local = S.run_sweep(spec, tmp_path / "local.db", workers=1, progress=False,
                        log=lambda s: None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        dask = S.run_sweep(spec, tmp_path / "dask.db", cluster=addr, progress=False,
                           log=lambda s: None)
    assert local.counts == dask.counts == {"ok": 4, "invalid": 4, "error": 0}
    cols = ["key", "status", "reason", "ms_per_token", "mj_per_token", "cycles",
            "row_hit_rate", "tokens_per_s"]
    a = local.df[cols].sort_values("key").reset_index(drop=True)
    b = dask.df[cols].sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    con_a, con_b = sqlite3.connect(tmp_path / "local.db"), sqlite3.connect(tmp_path / "dask.db")
    q = "SELECT key, commands_json, breakdown_json, energy_json FROM points ORDER BY key"
    assert con_a.execute(q).fetchall() == con_b.execute(q).fetchall()
    con_a.close()
    con_b.close()


# ---------------------------------------------------------------- channel scaling example

def test_channel_sweep_scales_near_linearly(tmp_path):
    spec = S.load_spec(ROOT / "examples" / "sweep_channels.toml")
    assert [p.params["channels"] for p in spec.points] == [4, 8, 16]
    assert all(p.model == "gpt2-medium" and p.tokens <= 8 for p in spec.points)
    res = S.run_sweep(spec, tmp_path / "ch.db", workers=0, progress=False, log=lambda s: None)
    assert res.counts["ok"] == 3
    ratios = [(s["from"], s["to"], s["latency_ratio"]) for s in res.scaling
              if s["param"] == "channels"]
    assert [(a, b) for a, b, _ in ratios] == [(4, 8), (8, 16)]
    for a, b, r in ratios:
        assert r >= 1.7, f"{a} -> {b} channels: latency ratio {r:.3f} < 1.7"
        assert r <= 2.05
    text = S.summary(res)
    assert "channels 4 -> 8 (x2): latency ratio" in text
    assert "channels 8 -> 16 (x2): latency ratio" in text


def test_a_worker_imports_each_model_once_and_lowers_it_per_geometry(tmp_path, monkeypatch):
    """The expensive front end (export, import, passes) runs once per model in a worker; the
    graph lowering once per (organization, PIM units, system); each point's program is the one
    compile_model gives for its config."""
    import compiler.pipeline as P
    from compiler.pipeline import compile_model
    from pimsim.config import config_from_dict
    from workloads import compiling
    from workloads.models.resolve import resolve_model

    calls = {"prepare": 0, "lower": 0}

    def counted(name, f):
        def g(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return g

    monkeypatch.setattr(P, "prepare", counted("prepare", P.prepare))
    monkeypatch.setattr(P, "lower", counted("lower", P.lower))
    monkeypatch.setattr(compiling, "_PREPARED", {})
    monkeypatch.setattr(compiling, "_LOWERED", {})
    spec = S.spec_from_dict({"model": "tiny", "tokens": 2,
                             "grid": {"channels": [2, 4, 8], "refresh": [True, False]}})
    res = S.run_sweep(spec, tmp_path / "once.db", workers=0, progress=False, log=lambda s: None)
    assert res.counts["ok"] == 6
    assert calls == {"prepare": 1, "lower": 3}
    src, name = resolve_model("tiny", weights=False)
    for p in {q.params["channels"]: q for q in spec.points}.values():
        cfg = dataclasses.replace(config_from_dict(p.hw), name=p.hw_name)  # as the worker
        progs = compiling.compile_model("tiny", cfg, memo=True).programs
        assert calls == {"prepare": 1, "lower": 3}  # both from the worker's caches
        want = compile_model(src, cfg, name=name).program
        calls.update(prepare=1, lower=3)
        assert progs[0].to_text(5) == want.to_text(5)


def test_cli_sweep_list_run_and_bad_spec(tmp_path, capsys):
    from workloads.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n[grid]\nchannels = [2, 0]\n')
    db = tmp_path / "s.db"
    assert main(["sweep", str(spec), "--db", str(db), "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "channels=0" in lines[1] and "ConfigError" in lines[1]
    assert main(["sweep", str(spec), "--db", str(db), "--in-process", "--no-progress",
                 "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "p"),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # --json: stdout is one JSON document
    assert doc["counts"] == {"ok": 1, "invalid": 1, "error": 0}
    assert [(r["channels"], r["status"]) for r in doc["points"]] == [(2, "ok"), (0, "invalid")]
    assert doc["points"][0]["ms_per_token"] > 0 and doc["points"][1]["ms_per_token"] is None
    assert main(["sweep", str(spec), "--db", str(db), "--report"]) == 0
    assert "1 ok, 1 invalid, 0 errors" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "s.csv")) == 2 and (tmp_path / "p" / "pareto.png").exists()
    spec.write_text('[grid]\nchanels = [2]\n')
    assert main(["sweep", str(spec), "--db", str(db)]) == 2
    assert "unknown parameter 'chanels'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_a_local_cluster_of_worker_processes(tmp_path):
    """``--cluster local:2``: a LocalCluster of two worker processes started by the CLI."""
    spec = tmp_path / "d.toml"
    spec.write_text('model = "tiny"\ntokens = 3\n[grid]\nchannels = [2, 4]\nbanks = [8, 16]\n')
    out = subprocess.run(_sweep_cmd(spec, tmp_path / "d.db", "--cluster", "local:2"),
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    ref = S.run_sweep(S.load_spec(spec), tmp_path / "ref.db", workers=0, progress=False,
                      log=lambda s: None)
    df = to_dataframe(tmp_path / "d.db", "d")
    assert (df["status"] == "ok").all() and len(df) == 4
    assert df.set_index("key")["cycles"].to_dict() == ref.df.set_index("key")["cycles"].to_dict()
    assert len({w.split(":")[1] for w in df["worker"]}) >= 1


def test_batch_axis_runs_batched_decode_and_keeps_batch_1_keys(tmp_path):
    """``batch`` is a run-setting axis: a point of batch B is pimsim run --batch B (the same
    cycles and energy); batch 1 keeps the key a store written before the axis has."""
    from pimsim import __version__
    from workloads import session

    spec_f = tmp_path / "b.toml"
    spec_f.write_text('hw = "pim-gpt"\nmodel = "tiny"\nprompt = 5\ntokens = 2\n'
                      '[grid]\nbatch = [1, 3]\n')
    spec = S.load_spec(spec_f)
    p1, p3 = spec.points
    assert (p1.batch, p3.batch) == (1, 3) and spec.swept == ["batch"]
    assert "batch" not in p1.settings and p3.settings["batch"] == 3
    assert p1.key == point_key(p1.hw, "tiny", {"prompt": 5, "tokens": 2, "schedule": "serial",
                                               "skip_prompt": True}, __version__)
    res = S.run_sweep(spec, tmp_path / "b.db", workers=0, progress=False, log=lambda s: None)
    assert res.counts["ok"] == 2
    df = to_dataframe(tmp_path / "b.db")
    by = {int(r["batch"]): r for _, r in df.iterrows()}
    sim = session.simulate("tiny", "pim-gpt", prompt=5, tokens=2, skip_prompt=True, batch=3)
    assert by[3]["cycles"] == sim.report.cycles
    assert by[3]["tokens_per_s"] == pytest.approx(sim.report.tokens_per_s, rel=1e-12)
    assert by[3]["ms_per_token"] == pytest.approx(sim.report.ms_per_token, rel=1e-12)
    assert by[3]["tokens_per_s"] > by[1]["tokens_per_s"]
    bad = tmp_path / "bad.toml"
    bad.write_text('hw = "pim-gpt"\nmodel = "tiny"\n[grid]\nbatch = [0, 2]\n')
    assert "batch = 0 must be an integer >= 1" in S.load_spec(bad).points[0].error


def test_a_store_without_the_batch_column_is_upgraded(tmp_path):
    from workloads.sweeps.store import Store

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE points (key TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, "
                "model TEXT NOT NULL, prompt INTEGER NOT NULL, tokens INTEGER NOT NULL, "
                "schedule TEXT NOT NULL, skip_prompt INTEGER NOT NULL, version TEXT NOT NULL, "
                "hw_name TEXT, hw_json TEXT NOT NULL, params_json TEXT, ms_per_token REAL, "
                "tokens_per_s REAL, mj_per_token REAL, row_hit_rate REAL, cycles INTEGER, "
                "ms_total REAL, breakdown_json TEXT, per_op_json TEXT, energy_json TEXT, "
                "commands_json TEXT, compile_s REAL, sim_s REAL, worker TEXT, "
                "finished_at TEXT NOT NULL)")
    con.execute("INSERT INTO points (key, status, model, prompt, tokens, schedule, skip_prompt, "
                "version, hw_json, finished_at) VALUES ('k', 'ok', 'tiny', 1, 2, 'serial', 1, "
                "'0', '{}', 'now')")
    con.commit()
    con.close()
    Store(db).close()
    assert list(to_dataframe(db)["batch"]) == [1]


def test_the_worker_memo_keys_by_every_config_value_the_lowering_reads(monkeypatch):
    """Two configs that differ only in [system] attention lower to different programs; the
    memo gives each its own (the one a fresh compile gives), never the other's."""
    from workloads import compiling
    from workloads.session import hw_config

    monkeypatch.setattr(compiling, "_PREPARED", {})
    monkeypatch.setattr(compiling, "_LOWERED", {})
    texts = {}
    for att in ("split", "one-device"):
        cfg = hw_config("pim-gpt", tp=2, tp_attention=att)
        got = compiling.compile_model("tiny", cfg, memo=True).program.to_text(5)
        want = compiling.compile_model("tiny", cfg, cache=False).program.to_text(5)
        assert got == want
        texts[att] = got
    assert texts["split"] != texts["one-device"]
    assert len(compiling._PREPARED) == 1 and len(compiling._LOWERED) == 2


def test_model_files_are_keyed_by_content_and_read_against_the_spec(tmp_path, monkeypatch):
    """A relative model path is read against the spec's folder (as hw is); two spellings of one
    file give one key; the same name with new bytes (a re-export) gives a new key."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "m.onnx").write_bytes(b"first export")
    f = specs / "s.toml"
    f.write_text('models = ["m.onnx", "./m.onnx"]\ntokens = 2\n')
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec = S.load_spec(f)
    a, b = spec.points
    assert a.task()["model"] == str(specs / "m.onnx") == b.task()["model"]
    assert a.key == b.key and (a.model, b.model) == ("m.onnx", "./m.onnx")
    (specs / "m.onnx").write_bytes(b"second export")
    again = S.load_spec(f).points[0]
    assert again.key != a.key
    abs_spec = S.spec_from_dict({"model": str(specs / "m.onnx"), "tokens": 2})
    assert abs_spec.points[0].key == again.key  # an absolute spelling: the same file


def test_a_relative_hw_is_read_against_the_spec_folder_not_the_working_directory(tmp_path,
                                                                                monkeypatch):
    (tmp_path / "here.toml").write_text((ROOT / "hwconfigs" / "pim-gpt.toml").read_text())
    (tmp_path / "specs").mkdir()
    f = tmp_path / "specs" / "s.toml"
    f.write_text('hw = "here.toml"\nmodel = "tiny"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(S.SpecError, match="here.toml' not found"):
        S.load_spec(f)
    (tmp_path / "specs" / "here.toml").write_text((ROOT / "hwconfigs" / "pim-gpt.toml").read_text())
    assert S.load_spec(f).hw == "here.toml"


def test_a_missing_model_file_is_tried_again_once_it_exists(tmp_path):
    """Not stored as a final result: the point is an error, run again on resume, and once the
    file is there its point has a key of its own (its content)."""
    spec = S.spec_from_dict({"models": ["tiny", str(tmp_path / "later.onnx")], "tokens": 1},
                            path=tmp_path / "s.toml")
    res = S.run_sweep(spec, tmp_path / "s.db", workers=0, progress=False, log=lambda s: None)
    assert res.df["status"].tolist() == ["ok", "error"]
    assert "ModelNotResolved" in res.df["reason"][1]
    again = S.run_sweep(spec, tmp_path / "s.db", workers=0, progress=False, log=lambda s: None)
    assert (again.n_skipped, again.n_run) == (1, 1)
    (tmp_path / "later.onnx").write_bytes(b"an export")
    now = S.spec_from_dict({"model": "later.onnx", "tokens": 1}, path=tmp_path / "s.toml")
    assert now.points[0].key != spec.points[1].key


def test_a_model_folder_is_keyed_by_its_files(tmp_path):
    """A Hugging Face folder's key follows its files' content (config.json and weights), not
    its name: a copy elsewhere has the same key, new weights a new one."""
    import shutil

    a = tmp_path / "a" / "llm"
    a.mkdir(parents=True)
    (a / "config.json").write_text('{"model_type": "llama"}')
    (a / "model.safetensors").write_bytes(b"weights one")
    b = tmp_path / "b" / "copy"
    shutil.copytree(a, b)

    def key(folder):
        return S.spec_from_dict({"model": str(folder), "tokens": 1}).points[0].key

    k = key(a)
    assert key(b) == k
    (b / "model.safetensors").write_bytes(b"weights two")
    assert key(b) != k and key(a) == k
