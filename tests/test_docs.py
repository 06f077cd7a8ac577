"""What users read speaks of the package only, and the README stays one screen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TALK = re.compile(
    r"\bissues? #?\d+|\buntil 20\d\d-|\bthis \d+-core machine\b|\bbuild machine\b|\bstop \d+\b", re.IGNORECASE
)


def _user_texts() -> list[Path]:
    texts = [ROOT / "README.md", *sorted((ROOT / "sc_noise2self").rglob("*.py"))]
    docs = ROOT / "docs"
    if docs.is_dir():
        texts += [p for p in sorted(docs.rglob("*.md")) if "_build" not in p.parts and "tutorials" not in p.parts]
    return texts


def test_the_readme_is_one_screen():
    assert (ROOT / "README.md").stat().st_size <= 10_240


@pytest.mark.parametrize("path", _user_texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_user_texts_do_not_name_the_work_process(path):
    found = PROCESS_TALK.findall(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_the_pattern_catches_process_talk():
    for text in ("see issue 14", "the default until 2026-11-26", "on this 2-core machine", "Issues #3"):
        assert PROCESS_TALK.search(text), text
    assert not PROCESS_TALK.search("an issue with sparse input; 2,000 genes; a quarter of this machine's memory")
