"""The documentation's shape: a short README, docs/ for the rest, no broken relative links.

Fast and Ray-free: reads README.md, docs/*.md and the repository's tracked text files only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]
MAX_README_LINES = 200
# spelled in two parts so that this file does not contain the name it forbids
FORBIDDEN_NAME = "METHOD" + ".md"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target); target up to whitespace or ')', optional "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
ISSUE_NUMBER = re.compile(r"\bissues?\s+#?\d+|(?<![\w&/#])#\d+\b", re.IGNORECASE)


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, inline code removed."""
    lines, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation removed except
    '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path) for m in LINK.finditer(line)
            if not EXTERNAL.match(m.group(1))]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.relative_to(root)}: {target} -> no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{path.relative_to(root)}: {target} -> no heading #{anchor} in "
                            f"{destination.relative_to(root)}")
    return problems


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if line.strip()]
    if body and body[0].startswith("# "):  # the project's title may come first
        body = body[1:]
    assert body[0].strip() == "```bash", body[:1]
    assert body[1].split("#")[0].strip() == "make demo", body[1]
    assert body[2].split("#")[0].strip() == "make test", body[2]
    assert body[3].strip() == "```", body[3]


def test_every_relative_link_and_image_exists():
    problems = [problem for path in MARKDOWN for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_the_link_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` (here)\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#some-code-here) ![img](missing.png) [bad](a.md#nope)\n"
                    "`[in code](nowhere.md)` [web](https://example.com/x.md)\n```\n[fenced](gone.md)\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2 and "missing.png" in problems[0] and "#nope" in problems[1], problems


@pytest.mark.parametrize(("heading", "slug"), [
    ("The GPU path, made ready before its first GPU run", "the-gpu-path-made-ready-before-its-first-gpu-run"),
    ("Scale on paper (`python bench/scale_on_paper.py`)", "scale-on-paper-python-benchscale_on_paperpy"),
    ("2. Global retrieval: the potential hard-negative pool", "2-global-retrieval-the-potential-hard-negative-pool"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_no_issue_numbers_in_readme_or_docs():
    hits = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in MARKDOWN
            for line in prose_lines(path) if ISSUE_NUMBER.search(line)]
    assert not hits, "\n".join(hits)


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in sorted(set(listed.decode().split("\0"))) if name]


def test_no_file_names_the_retired_method_file():
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        if FORBIDDEN_NAME.encode() in data:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
