"""The tree itself: no merge-conflict markers in what is tracked (a rebase once committed
them into the README, where no test reads them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<<<<<<< |>>>>>>> |=======$)", re.M)


def test_no_conflict_markers_in_tracked_files():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    assert len(files) > 100, "git ls-files listed the repository"
    found = []
    for name in files:
        path = ROOT / name.decode()
        if not name or not path.is_file() or path.suffix in {".png", ".ico"}:
            continue
        for m in MARKER.finditer(path.read_bytes()):
            line = path.read_bytes()[:m.start()].count(b"\n") + 1
            found.append(f"{name.decode()}:{line}")
    assert not found, f"conflict markers: {found}"


DOC_CITATION = re.compile(r"\b(?:shared/)?DESIGN\.md\b|\bdocs/([\w.-]+\.md)\b")


def test_code_cites_documents_that_are_in_the_repository():
    """The code's citations point at docs/ in this repository (issue 17: DESIGN.md lived
    outside it), and every cited document exists."""
    outside, missing = [], []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for m in DOC_CITATION.finditer(line):
                where = f"{path.relative_to(ROOT)}:{number}"
                if m.group(1) is None:
                    outside.append(where)
                elif not (ROOT / "docs" / m.group(1)).is_file():
                    missing.append(f"{where} docs/{m.group(1)}")
    assert not outside, f"cites DESIGN.md (outside the repository): {outside}"
    assert not missing, f"cites a document that does not exist: {missing}"
