"""The docs cannot lie: every Python block marked ``<!-- docs-test: run -->`` in README.md and
docs/ runs against a real dataset (the demo's synthetic video under the demo's dataset name), and
the front page stays a front page (size, a propagation example on its first screen, no wording
about the project's own history)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- docs-test: run -->"
PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md"] + sorted((REPO / "docs").rglob("*.md"))
_BLOCK = re.compile(re.escape(MARK) + r"\s*\n```python\n(.*?)\n```", re.S)
_HISTORY = re.compile(r"\b(issue|stage) #?\d+\b|\b(this|last|next) sessions?\b|\bsession's\b", re.I)


def marked_blocks(page: Path) -> list[str]:
    """The Python blocks of ``page`` marked to run, in page order."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def _pages_with_blocks() -> list[Path]:
    return [page for page in PAGES if page.is_file() and marked_blocks(page)]


@pytest.fixture
def demo_dataset(fiftyone_db, tmp_path):
    """The demo dataset's synthetic video (keyframes on frames 8 and 30), named as `make demo` names it."""
    from deaot_vos.demo import build_dataset

    dataset = build_dataset("deaot-demo", real_clips=False, workdir=tmp_path / "media")
    yield dataset
    dataset.delete()


@pytest.mark.parametrize("page", _pages_with_blocks(), ids=lambda p: str(p.relative_to(REPO)))
def test_marked_python_blocks_run(page, demo_dataset, capsys):
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(marked_blocks(page), start=1):
        try:
            exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:  # name the block in the failure
            raise AssertionError(f"{page.relative_to(REPO)}, marked block {number} failed: {err!r}\n{block}") from err
    assert "ok" in capsys.readouterr().out or page.name != "README.md"


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 16_500, f"README.md is {len(text.encode())} bytes: the manual belongs in docs/"
    assert "make demo" in text and "make test" in text
    first_screen = text[:4096]
    assert "deaot_vos.propagate(" in first_screen and MARK in first_screen


def test_relative_links_lead_to_files():
    for page in PAGES:
        if not page.is_file():
            continue
        for link in re.findall(r"\]\(([\w./-]+\.(?:md|png|jpg))(?:#[\w-]+)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / link).resolve().is_file(), f"{page.relative_to(REPO)} links to a missing file {link}"


def test_no_page_speaks_of_the_projects_history():
    for page in PAGES:
        if page.is_file():
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
                assert not _HISTORY.search(line), f"{page.relative_to(REPO)}:{number}: {line.strip()}"
