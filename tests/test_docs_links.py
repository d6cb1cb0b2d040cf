"""The documentation stands on its own: its links resolve inside the repo and every setting is documented.

Plain file checks, no services: every relative link in README.md and docs/*.md names a file in the repo (and a
`#fragment` a heading of that file), nothing points outside the clone, and each `Settings` field has its row
in docs/operations.md.
"""

import re
from pathlib import Path

import pytest

from shared.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
STANDALONE_FILES = [*DOC_FILES, REPO / ".env.example"]
OPERATIONS = REPO / "docs" / "operations.md"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, where links and headings are markup."""
    lines, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not target.startswith(EXTERNAL):
                links.append(target)
    return links


def test_the_pages_exist() -> None:
    names = {path.name for path in DOC_FILES}
    for page in ("api.md", "architecture.md", "security.md", "operations.md", "performance.md", "testing.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repo(doc: Path) -> None:
    broken = []
    for link in relative_links(doc):
        target, _, fragment = link.partition("#")
        resolved = (doc.parent / target).resolve() if target else doc
        if not resolved.is_relative_to(REPO):
            broken.append(f"{link}: outside the repo")
        elif not resolved.exists():
            broken.append(f"{link}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in heading_anchors(resolved):
            broken.append(f"{link}: no heading #{fragment} in {resolved.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", STANDALONE_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_nothing_points_outside_the_clone(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "../shared/" not in text
    assert "CONTRACT" not in text


def test_every_setting_is_in_the_configuration_table() -> None:
    table = OPERATIONS.read_text(encoding="utf-8")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"docs/operations.md does not document: {', '.join(missing)}"


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    # The checks above pass on an empty list too; make sure the parsing finds links and anchors at all.
    page = tmp_path / "page.md"
    page.write_text("# A `code` heading: yes\n\n[ok](#a-code-heading-yes) [gone](missing.md)\n```\n[no](x.md)\n```\n")
    assert relative_links(page) == ["#a-code-heading-yes", "missing.md"]
    assert heading_anchors(page) == {"a-code-heading-yes"}
