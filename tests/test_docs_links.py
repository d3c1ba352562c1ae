"""Every relative link in the README and docs/ points at a file that exists and, with a #fragment, at a heading
that file has (GitHub's anchors), so moving a section between the README and docs/ cannot leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without its fenced blocks: a `# comment` there is no heading, a `[x](y)` there no link."""
    return FENCE.sub("", text)


def anchors(path: Path) -> set[str]:
    """The fragments GitHub gives ``path``'s headings: lower case, punctuation dropped (code spans keep their
    text), spaces to hyphens, and -1, -2, … on repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """``page``'s relative links whose file or heading does not exist, each as `target (why)`."""
    broken = []
    for target in LINK.findall(CODE_SPAN.sub("", prose(page.read_text()))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: — not checked offline
            continue
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and (dest.is_dir() or dest.suffix != ".md"):
            broken.append(f"{target} (a fragment into a file that is not markdown)")
        elif fragment and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    return broken


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/ has no pages"
    broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
    assert not broken, broken


def test_the_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Where ≤ 12 stands\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page `one`\n\n[ok](other.md#where--12-stands) [ok](#page-one) [ok](https://example.com/x#y)\n"
        "[gone](missing.md) [no heading](other.md#not-a-heading) `[in code](missing.md)`\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#not-a-heading (no heading #not-a-heading in other.md)",
    ]
