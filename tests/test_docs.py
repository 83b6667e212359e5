"""The README is a front door (issue 21, part 4): at most 250 lines, linking every page of docs/; every
relative link in README.md and docs/*.md leads to a file of the repository, and every #anchor to a
heading or an explicit id of its page. (The code blocks of the pages are run by the tests of what
they show: tests/test_cli.py the DuckDB shell's, tests/test_spark.py Spark's.)"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from .helpers import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
EXPLICIT_ID = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.I)


def _prose(text: str) -> str:
    """The page without its fenced code blocks and code spans: links and headings are only there."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case, punctuation dropped
    (except - and _), spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    found: set[str] = set(EXPLICIT_ID.findall(FENCE.sub("", text)))
    seen: dict[str, int] = {}
    for _, heading in HEADING.findall(FENCE.sub("", text)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: the rest goes to docs/)"
    linked = {(README.parent / unquote(t.split("#")[0])).resolve() for t in links(README) if t.split("#")[0]}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...: not the repository's
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page.resolve()
        if not dest.is_relative_to(REPO.resolve()) or not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            bad.append(f"{target}: no such anchor in {dest.relative_to(REPO.resolve())}")
    assert not bad, f"{page.relative_to(REPO)}: " + "; ".join(bad)


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    """The checker itself: links in code are not links, headings in code are not anchors, GitHub's
    slugs and explicit ids are."""
    page = tmp_path / "p.md"
    page.write_text("# A title: `x` and (y)\n<a id=\"here\"></a>\n## Same\n## Same\n"
                    "[a](b.md#c) `[no](link.md)` ![img](d.png)\n```\n# not a heading\n[no](x.md)\n```\n")
    assert links(page) == ["b.md#c", "d.png"]
    assert anchors(page) == {"a-title-x-and-y", "here", "same", "same-1"}
