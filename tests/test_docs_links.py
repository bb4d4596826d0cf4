"""The README and the pages under docs/ link to one another: every relative markdown link names a
file that exists, and every ``#anchor`` a heading of the page it points to (GitHub's heading ids)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\[\]]*\]\(([^()\s]+)\)")


def prose(text: str) -> str:
    """The page without its code blocks (a link inside one is not a link)."""
    return FENCE.sub("", text)


@functools.cache
def page_text(path: Path) -> str:
    return path.read_text()


@functools.cache
def heading_ids(path: Path) -> frozenset[str]:
    """The ids GitHub gives the page's headings: lowercase, punctuation but '-' dropped, spaces to
    '-', a repeated id numbered -1, -2, ..."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    for m in re.finditer(r"^#{1,6} +(.+?) *#* *$", prose(page_text(path)), re.M):
        base = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return frozenset(ids)


def links(path: Path) -> list[str]:
    """Link targets; code spans are dropped first (one may be a link's text, or hold a bracket)."""
    return LINK.findall(CODE_SPAN.sub("", prose(page_text(path))))


def relative_links():
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            yield pytest.param(page, target, id=f"{page.relative_to(ROOT)}->{target}")


def test_the_pages_link_to_each_other():
    """The README reaches every docs page, so none is lost."""
    readme_targets = {t.split("#")[0] for t in links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert str(page.relative_to(ROOT)) in readme_targets, f"README.md does not link {page.name}"


@pytest.mark.parametrize("page,target", list(relative_links()))
def test_relative_link_resolves(page, target):
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: link to a missing file {target!r}"
    if anchor:
        assert dest.suffix == ".md", f"{page.relative_to(ROOT)}: anchor into a non-markdown file {target!r}"
        assert anchor in heading_ids(dest), \
            f"{page.relative_to(ROOT)}: no heading {anchor!r} in {dest.relative_to(ROOT)}"


def test_heading_ids_follow_github():
    """The anchor rule itself, on headings of the kinds the pages use."""
    page = ROOT / "docs" / "guide.md"
    ids = heading_ids(page)
    assert "pimsim-run" in ids  # "### `pimsim run`"
    assert "the-prompt-and-its-prefill---prompt-p---prefill" in ids
    assert "hardware-configs-hwconfigstoml" in ids
