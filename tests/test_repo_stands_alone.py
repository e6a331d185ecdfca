"""The repository stands alone: it cites the paper and its own docs/, never files or issue
numbers that live outside it."""

from __future__ import annotations

import re
import subprocess

from tests.helpers import ROOT

OUTSIDE = re.compile(r"METHOD\.md|\b[Ii]ssue #?\d+")


def test_no_reference_to_files_or_issues_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".txt", ".cfg"} and name != "Makefile":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE.search(line) and name != "tests/test_repo_stands_alone.py":
                offenders.append(f"{name}:{number}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders)
