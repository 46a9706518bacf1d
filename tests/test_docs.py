"""The code blocks of the user guides run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted(p for p in DOCS.glob("*.md")
                if re.search(r"```python\n", p.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_code_runs(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    if "import torch" in "".join(blocks):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # any file a guide writes lands in a scratch folder
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert namespace, f"{page.name} has no code"
