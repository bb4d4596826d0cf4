"""The GPU baselines' command line, ``python -m workloads.gpu``: the paths that need no GPU
(help, predict, every bad-input refusal: one line, exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.gpu import calibration as gcal
from workloads.gpu.cli import main

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("pimsim: error: ")
    return err[0]


@pytest.mark.parametrize("argv", [[], ["predict"], ["measure"], ["measure", "gpt"],
                                  ["measure", "gpt2"], ["measure", "llama"],
                                  ["measure", "llama-tp"], ["measure", "batched"]])
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m workloads.gpu")


def test_help_names_every_old_option(capsys: pytest.CaptureFixture[str]) -> None:
    wanted = {
        ("measure", "gpt"): ["--models", "--output", "--repeats", "--power-seconds",
                             "--eager-power-seconds", "--idle-seconds", "--seed",
                             "--batch-seconds", "--dry-run"],
        ("measure", "llama"): ["--models", "--output", "--repeats", "--power-seconds",
                               "--idle-seconds", "--seed", "--batch-seconds", "--dtype", "--dry-run"],
        ("measure", "llama-tp"): ["--models", "--tp", "--output", "--repeats", "--power-seconds",
                                  "--idle-seconds", "--seed", "--batch-seconds", "--dtype",
                                  "--dry-run"],
        ("measure", "batched"): ["--output", "--models", "--batches", "--kv-lens", "--prompts",
                                 "--prefill-batched", "--repeats", "--batch-seconds",
                                 "--power-seconds", "--ramp-seconds", "--idle-seconds", "--seed",
                                 "--dtype", "--dry-run"],
        ("predict",): ["--tp", "measured"],
    }
    for argv, opts in wanted.items():
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert all(o in out for o in opts), (argv, [o for o in opts if o not in out])


def test_predict_on_the_shipped_measurement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", gcal.default_measured_path(), "--tp", "1"]) == 0
    out = capsys.readouterr().out
    assert "| gpt2-xl |" in out and "held-out" in out and "H200 x1" in out


@pytest.mark.parametrize("argv,words", [
    (["predict", "--tp", "1,x"], ["--tp '1,x'", "give e.g. --tp 1,2,4,8"]),
    (["predict", "--tp", "0,2"], ["below 1"]),
    (["predict", "/no/such/file.json"], ["cannot be read", "measure gpt"]),
    (["measure", "llama-tp", "--tp", "0", "-o", "/tmp/never.json"], ["out of range"]),
    (["measure", "llama-tp", "--dry-run", "--tp", "3", "-o", "/tmp/never.json"],
     ["does not divide", "use tp in"]),
    (["measure", "llama", "--dry-run", "--models", "llama9", "-o", "/tmp/never.json"],
     ["unknown shape 'llama9'", "llama2-7b"]),
    (["measure", "gpt", "--dry-run", "--models", "gpt9", "-o", "/tmp/never.json"],
     ["unknown preset 'gpt9'", "gpt2-small"]),
    (["measure", "batched", "--dry-run", "--models", "llama9", "-o", "/tmp/never.json"],
     ["unknown shape 'llama9'", "llama2-7b"]),
    (["measure", "batched", "--dry-run", "--batches", "0", "-o", "/tmp/never.json"],
     ["--batches", "0 must be >= 1"]),
    (["measure", "batched", "--dry-run", "--prefill-batched", "512", "-o", "/tmp/never.json"],
     ["PROMPTxBATCH"]),
    (["measure", "batched"], ["--output"]),
    (["measure", "gpt"], ["--output"]),
    (["measure", "bogus"], ["invalid choice"]),
    (["bogus"], ["invalid choice"]),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], words: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = main(argv)
    except SystemExit as e:   # argparse's own usage errors
        rc = e.code
    assert rc == 2
    line = one_error_line(capsys)
    assert all(w in line for w in words), line


def test_not_a_measurement_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": []}))
    assert main(["predict", str(bad)]) == 2
    line = one_error_line(capsys)
    assert "not a gpu_baseline measurement" in line and "measure gpt" in line


def test_no_cuda_names_the_dry_run(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kind in ("gpt", "llama", "batched"):
        assert main(["measure", kind, "-o", "/tmp/never.json"]) == 2
        line = one_error_line(capsys)
        assert "no CUDA device" in line and "--dry-run" in line


@pytest.mark.slow  # 15 s dry run of the GPU measurement
def test_measure_batched_dry_run_writes_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    pytest.importorskip("torch")
    assert main(["measure", "batched", "--dry-run", "--models", "tiny-llama-gqa", "--batches", "1",
                 "3", "--kv-lens", "12", "--prompts", "8", "--prefill-batched", "8x2",
                 "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"method", "info", "settings", "results", "not_measured"} <= doc.keys()
    assert "DRY RUN" in doc["method"] and "CUDA graph" in doc["method"]
    assert doc["settings"]["dry_run"] is True and doc["settings"]["dtype"] == "float32"
    assert doc["info"]["gpu_slug"] == "cpu" and doc["not_measured"] == []
    pts = {(r["phase"], r["batch"], r.get("kv_len", r.get("prompt_len"))) for r in doc["results"]}
    assert pts == {("decode", 1, 12), ("decode", 3, 12), ("prefill", 1, 8), ("prefill", 2, 8)}
    for r in doc["results"]:
        assert r["model"] == "tiny-llama-gqa" and r["ms_per_step"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] * 1e3 / r["ms_per_step"])
        assert r["tokens_per_step"] == r["batch"] * (r["prompt_len"] if r["phase"] == "prefill" else 1)
        assert r["power_w"] is None and r["j_per_token"] is None
    assert max(max(v["max_abs_diff"].values()) for v in doc["validation_small"]) < 1e-5


def test_module_entry_point_and_no_torch_for_predict() -> None:
    code = ("import sys, runpy; sys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('workloads.gpu', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numba', 'transformers'})\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
