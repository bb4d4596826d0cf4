"""Shared pytest options and fixtures."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ instead of comparing against them",
    )


@pytest.fixture(scope="session", autouse=True)
def _private_program_cache(tmp_path_factory: pytest.TempPathFactory):
    """The compiled-program cache of every test (and the CLI subprocesses it starts) lives in a
    fresh directory: tests never read or fill the user's cache."""
    import os

    old = os.environ.get("PIMSIM_CACHE_DIR")
    os.environ["PIMSIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("pimsim-cache"))
    yield
    if old is None:
        os.environ.pop("PIMSIM_CACHE_DIR", None)
    else:
        os.environ["PIMSIM_CACHE_DIR"] = old


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with --update-golden."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def golden(update_golden: bool) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>`` (or rewrite the
    file under ``--update-golden``); a difference fails with a unified diff."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {path} is missing; create it with `pytest --update-golden` "
                        f"and read it before committing")
        want = path.read_text()
        if text != want:
            diff = "".join(list(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                                     f"golden/{name}", "now"))[:80])
            pytest.fail(f"output differs from golden/{name} (pytest --update-golden to accept):\n"
                        f"{diff}")

    return check


def shared_rules_variant(cfg):
    """``cfg`` as a generic PIM device: only the shared rule rows (no GDDR6-AiM rows or device
    options), the single-bank / all-bank mode switch and an ideal host."""
    import dataclasses

    from pimsim.config import Host

    return cfg.replace(
        org=dataclasses.replace(cfg.org, standard="GDDR6-PIM"),
        pim=dataclasses.replace(cfg.pim, mode_switch="bank-mode", af_pseudo_row=False,
                                ewmul_writeback=False),
        host=Host())
