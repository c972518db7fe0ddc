"""The docs cannot drift: generated pages are current, the README is short and its links resolve."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from experiments.make_docs import PAGES, write_pages

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    write_pages(out)
    return out


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_page_is_current(generated, name):
    """docs/<name> equals what `python -m experiments.make_docs` writes from results/reference/ now."""
    committed = (ROOT / "docs" / name).read_bytes()
    fresh = (generated / name).read_bytes()
    assert committed == fresh, (f"docs/{name} is stale: a file under results/reference/ (or the generator) changed. "
                                "Run `python -m experiments.make_docs` and commit the result.")


def test_generated_pages_cite_their_sources(generated):
    """Each generated section names the results/reference file it reads, so a reader can check a number."""
    for name in PAGES:
        text = (generated / name).read_text()
        sections = text.split("\n## ")[1:]
        assert sections, name
        for sec in sections:
            assert "results/reference/" in sec, f"{name}: section {sec.splitlines()[0]!r} names no source"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links inside code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_point_to_files(page):
    path = ROOT / page
    missing = [t for t in _relative_links(path) if not (path.parent / unquote(t.split("#", 1)[0])).exists()]
    assert not missing, f"{page} links to missing files: {missing}"


def test_readme_names_no_missing_repo_paths():
    """Paths the README names in backticks (folders and files of this repository) exist."""
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`((?:tracing|editing|experiments|docs|tests|results/reference)/[^`\s]*)`", text))
    missing = [p for p in sorted(named) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, missing
