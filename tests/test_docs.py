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


PUBLIC_MODULES = ["diffsolve", "diffsolve.linear", "diffsolve.krylov", "diffsolve.ot",
                  "diffsolve.ode", "diffsolve.implicit", "diffsolve.bilevel",
                  "diffsolve.interop", "diffsolve.distributed"]


def _api_entries() -> set[str]:
    """The fully qualified names the API reference documents (autosummary and data)."""
    text = (DOCS / "api" / "index.rst").read_text(encoding="utf-8")
    names, module = set(), None
    for line in text.splitlines():
        if m := re.match(r"\.\. (?:currentmodule|module|automodule):: (\S+)", line):
            module = m.group(1)
            names.add(module)
        elif m := re.match(r"\.\. data:: (\w+)", line):
            names.add(f"{module}.{m.group(1)}")
        elif module and (m := re.fullmatch(r"   (\w+)", line)):
            names.add(f"{module}.{m.group(1)}")
    return names


def test_api_reference_lists_every_public_name():
    import importlib
    import inspect

    documented = _api_entries()
    objects = {}
    for name in documented:
        module, _, attr = name.rpartition(".")
        if not module:
            continue
        try:
            objects[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    missing = []
    for modname in PUBLIC_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # diffsolve.distributed without its extra
            continue
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj):
                continue
            # a re-export (diffsolve.LinearSolveResult, diffsolve.interop.to_torch) is
            # documented once, under one of its names
            if f"{modname}.{name}" not in documented and \
                    not any(o is obj for o in objects.values()):
                missing.append(f"{modname}.{name}")
    assert not missing, f"not in docs/api/index.rst: {missing}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_guides_stand_alone(page):
    text = page.read_text(encoding="utf-8")
    # user-facing examples use the public API, and the repository's docs cite papers, not
    # files that are not in the repository
    assert not re.search(r"(from|import) diffsolve\._\w+", text), page.name
    assert "DESIGN" not in text and "ALGORITHMS.md" not in text, page.name
