"""The documentation's shape: README.md is a front page, the site's navigation names pages that exist.

The strict site build itself (`mkdocs build --strict`: broken links, missing pages, docstrings that do not
render) runs in `make test` (`make docs`), before pytest; these checks are the fast part.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.helpers import ROOT

README_MAX_LINES = 300  # the front page; the docs site (docs/, mkdocs.yml) holds the rest


def nav_pages(nav: list) -> list[str]:
    """Every page path of an mkdocs `nav:` tree (entries are `Title: page.md`, nested lists, or `page.md`)."""
    pages = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_readme_is_a_front_page_of_at_most_300_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into a docs/ page"


def test_every_page_of_the_navigation_exists_and_every_page_is_in_it():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = ROOT / config.get("docs_dir", "docs")
    pages = nav_pages(config["nav"])
    assert pages and "index.md" in pages
    missing = [p for p in pages if not (docs / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    unlisted = sorted({p.name for p in docs.glob("*.md")} - set(pages))
    assert not unlisted, f"pages in docs/ that mkdocs.yml's nav does not list: {unlisted}"


def test_the_readme_links_to_docs_pages_that_exist():
    """GitHub renders README.md's relative links; the strict build checks the pages' links, not the README's."""
    links = re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text())
    assert links, "the README links to no docs page"
    missing = sorted({link for link in links if not (ROOT / Path(link)).exists()})
    assert not missing, f"README.md links to files that do not exist: {missing}"
