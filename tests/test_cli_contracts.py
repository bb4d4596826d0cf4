"""Start-up and output contracts of the command line: no torch where it is not needed,
``--version``, one JSON document per ``--json``, the ``--hw`` help, the compiled-program cache,
the status line, and plots that leave matplotlib's backend alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pimsim import __version__
from workloads.cli import main

ROOT = Path(__file__).resolve().parent.parent
TRACE = str(ROOT / "examples" / "gemv_aim.trace")


def py(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def run_main(argv: list[str]) -> str:
    """``main(argv)`` in a fresh interpreter; prints torch's presence and the exit code on the
    last stderr line."""
    return ("import sys\nfrom workloads.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH', 'torch' in sys.modules, 'RC', rc, file=sys.stderr)\n")


def torch_and_rc(r: subprocess.CompletedProcess) -> tuple[bool, int]:
    last = r.stderr.strip().splitlines()[-1].split()
    assert last[0] == "TORCH", r.stderr[-2000:]
    return last[1] == "True", int(last[3])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"pimsim {__version__}"


def test_hw_help_lists_the_shipped_configs(capsys):
    from pimsim.config import available_configs

    for cmd in (["trace", "x"], ["run", "x"], ["compile", "x"], ["compare", "x"]):
        with pytest.raises(SystemExit):
            main([cmd[0], "--help"])
        out = "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens
        assert all(name in out for name in available_configs()), (cmd, out)


@pytest.mark.parametrize("argv", [["--help"], ["trace", TRACE], ["trace", TRACE, "--json"],
                                  ["run", "--help"], ["sweep", "--help"]])
def test_no_torch_where_it_is_not_needed(argv):
    r = py(run_main(argv))
    has_torch, rc = torch_and_rc(r)
    assert rc == 0, r.stderr[-2000:]
    assert not has_torch, f"{argv} imported torch"


def test_trace_json_is_one_document(capsys):
    assert main(["trace", TRACE, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cycles"] > 0


@pytest.mark.slow  # 42 s of subprocess runs; the cache checks of tests/test_bad_inputs.py run by default
def test_cache_skips_the_compiler_and_torch(tmp_path):
    """A repeated timing run reads the compiled program from the cache: same output, no torch;
    --no-cache and an empty PIMSIM_CACHE_DIR write nothing; a damaged entry is recompiled."""
    cache = tmp_path / "cache"
    env = {"PIMSIM_CACHE_DIR": str(cache)}
    argv = ["run", "tiny", "--tokens", "3", "--json", "--no-progress"]
    first = py(run_main(argv), env)
    assert torch_and_rc(first) == (True, 0), first.stderr[-2000:]
    entries = list((cache / "programs").glob("*.pkl"))
    assert len(entries) == 1
    second = py(run_main(argv), env)
    assert torch_and_rc(second) == (False, 0), second.stderr[-2000:]
    assert json.loads(second.stdout)["cycles"] == json.loads(first.stdout)["cycles"]
    # another hardware config is another entry
    other = py(run_main(argv + ["--hw", "aim-gddr6"]), env)
    assert torch_and_rc(other)[1] == 0
    assert len(list((cache / "programs").glob("*.pkl"))) == 2
    # a damaged entry: ignored, recompiled, rewritten
    entries[0].write_bytes(b"not a pickle")
    third = py(run_main(argv), env)
    assert torch_and_rc(third) == (True, 0)
    assert json.loads(third.stdout)["cycles"] == json.loads(first.stdout)["cycles"]
    assert "compiled-program cache entry" in third.stderr  # one warning line
    assert entries[0].read_bytes().startswith(b"pimsim-program-cache ")  # a valid entry again
    # --no-cache and PIMSIM_CACHE_DIR="" use and write nothing
    fresh = tmp_path / "fresh"
    r = py(run_main(argv + ["--no-cache"]), {"PIMSIM_CACHE_DIR": str(fresh)})
    assert torch_and_rc(r) == (True, 0) and not fresh.exists()
    r = py(run_main(argv), {"PIMSIM_CACHE_DIR": "", "XDG_CACHE_HOME": str(fresh)})
    assert torch_and_rc(r) == (True, 0) and not fresh.exists()


def test_cache_directory_rules(tmp_path, monkeypatch):
    from workloads import compile_cache as cache

    monkeypatch.setenv("PIMSIM_CACHE_DIR", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("PIMSIM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "pimsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "pimsim"
    monkeypatch.setenv("PIMSIM_CACHE_DIR", "")
    assert cache.cache_dir() is None
    from pimsim.config import load_config

    cfg = load_config("pim-gpt")
    assert cache.cache_key("tiny", cfg) != cache.cache_key("tiny-wide", cfg)
    assert cache.cache_key("tiny", cfg) != cache.cache_key("tiny", load_config("aim-gddr6"))
    assert cache.cache_key("some.module:model", cfg) is None  # never cached


def test_cache_keys_by_file_content_and_every_config_value_but_refresh(tmp_path):
    """An ONNX file re-exported under the same name is a new entry, the same bytes under
    another name the same; a [system] attention or interconnect value changes the key,
    refresh (the simulator's alone) does not."""
    import dataclasses

    from pimsim.config import load_config
    from workloads import compile_cache as cache
    from workloads.session import hw_config

    cfg = load_config("pim-gpt")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"export one")
    b.write_bytes(b"export one")
    key = cache.cache_key(str(a), cfg)
    assert key == cache.cache_key(str(b), cfg)
    a.write_bytes(b"export two")
    assert cache.cache_key(str(a), cfg) != key
    tp2 = hw_config(cfg, tp=2)
    assert cache.cache_key("tiny", tp2) != cache.cache_key(
        "tiny", hw_config(cfg, tp=2, tp_attention="one-device"))
    ic = dataclasses.replace(tp2.system.interconnect, lanes=tp2.system.interconnect.lanes + 1)
    assert cache.cache_key("tiny", tp2) != cache.cache_key(
        "tiny", dataclasses.replace(tp2, system=dataclasses.replace(tp2.system, interconnect=ic)))
    assert cache.cache_key("tiny", cfg) == cache.cache_key("tiny", cfg.with_refresh(False))


@pytest.mark.slow  # 16 s of subprocess runs
def test_status_line_with_progress(tmp_path):
    """--progress shows a status line over the compile (stderr is not a terminal here)."""
    r = py(run_main(["compile", "tiny-wide", "--no-cache", "--progress"]))
    assert torch_and_rc(r)[1] == 0
    err = r.stderr
    assert "pimsim: compiling tiny-wide for pim-gpt ..." in err and "done in" in err
    quiet = py(run_main(["compile", "tiny-wide", "--no-cache"]))
    assert quiet.stderr.strip().splitlines()[:-1] == []  # no status line without --progress


def test_run_compare_and_sweep_json_are_one_document(tmp_path, capsys):
    assert main(["run", "tiny", "--tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generated_tokens"] == 2
    assert main(["compare", "tiny", "--gpu", "T4", "--prompt", "4", "--tokens", "2",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["tiny"]
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n[grid]\nchannels = [2, 4]\n')
    db = tmp_path / "s.db"
    assert main(["sweep", str(spec), "--db", str(db), "--in-process", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["channels"] for p in doc["points"]] == [2, 4]
    assert all(p["status"] == "ok" and p["ms_per_token"] > 0 for p in doc["points"])
    assert main(["sweep", str(spec), "--db", str(db), "--list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_sweep_summary_of_a_finished_sweep_needs_no_torch(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n[grid]\nchannels = [2, 4]\n')
    db = tmp_path / "s.db"
    assert main(["sweep", str(spec), "--db", str(db), "--in-process", "--no-progress"]) == 0
    for extra in ([], ["--report"]):
        r = py(run_main(["sweep", str(spec), "--db", str(db), "--no-progress", *extra]))
        assert torch_and_rc(r) == (False, 0), r.stderr[-2000:]
        assert "2 ok, 0 invalid, 0 errors" in r.stdout


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('model = "tiny"\ntokens = 2\n[grid]\nchannels = [2, 4]\n')
    db = tmp_path / "s.db"
    assert main(["sweep", str(spec), "--db", str(db), "--in-process", "--no-progress"]) == 0
    code = (
        "import matplotlib\nmatplotlib.use('svg')\n"
        "from workloads import sweeps as S\n"
        "from workloads.plots import plot_sweep\n"
        f"res = S.stored_result(S.load_spec({str(spec)!r}), {str(db)!r})\n"
        f"files = plot_sweep(res, {str(tmp_path / 'p')!r})\n"
        "print(matplotlib.get_backend(), len(files))\n")
    r = py(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["svg", "2"]  # vs_channels.png and pareto.png
