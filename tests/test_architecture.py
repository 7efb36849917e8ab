"""The layering of docs/architecture.md, checked on the source: imports point one way
(app -> factory -> engine -> retrieval/rerank -> embedding/store -> core)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Modules every layer may import: the exception types (rag/errors.py).
_BASE = {"errors"}
# layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "embedding": {"core"},
    "store": {"core"},
    "retrieval": {"core", "store"},
    "rerank": {"core", "store"},
    "engine": {"core", "store", "retrieval", "rerank"},
    "evaluation": {"core", "engine"},
    "factory": {"core", "embedding", "store", "retrieval", "rerank", "engine"},
    "ingestion": {"core", "embedding", "store", "factory"},
    "app": {
        "core", "embedding", "store", "retrieval", "rerank", "engine", "evaluation",
        "factory", "ingestion",
    },
}  # fmt: skip


def _layer(path: Path) -> str:
    rel = path.relative_to(REPO).parts
    if rel[0] == "ingestion":
        return "ingestion"
    return "factory" if rel[1] == "factory.py" else rel[1]


def _imported_layers(source: str) -> set[str]:
    """The layers a module's source imports from, at any depth (lazy imports included)."""
    layers = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ingestion":
                layers.add("ingestion")
            elif parts[0] == "rag" and len(parts) > 1 and parts[1] not in _BASE:
                layers.add(parts[1])
    return layers


MODULES = sorted(
    p for p in [*REPO.glob("rag/*/**/*.py"), REPO / "rag/factory.py", *REPO.glob("ingestion/*.py")]
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_one_way(path: Path) -> None:
    layer = _layer(path)
    wrong = _imported_layers(path.read_text()) - ALLOWED[layer] - {layer}
    assert not wrong, f"{path.relative_to(REPO)} ({layer}) imports {sorted(wrong)}"


def test_every_package_is_covered() -> None:
    packages = {p.name for p in (REPO / "rag").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED) - {"factory", "ingestion"}
    modules = {p.stem for p in (REPO / "rag").glob("*.py")} - {"__init__"}
    assert modules == {"factory"} | _BASE


def test_layer_check_sees_lazy_and_wrong_imports() -> None:
    source = (
        "import os\n\ndef f():\n    from rag.rerank.grid import build_grid\n"
        "    import ingestion.sources\n"
    )
    assert _imported_layers(source) == {"rerank", "ingestion"}
    assert _imported_layers(source) - ALLOWED["embedding"] == {"rerank", "ingestion"}


_DOC_REF = re.compile(r"(docs/[\w./-]+\.md)(?:,\s*\"([^\"]+)\")?")


_OUTSIDE_DOC = "DESIGN" + ".md"  # the workplace's notes, which the repository does not hold


def _text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    tracked = [REPO / line for line in out.stdout.splitlines()]
    return [p for p in tracked if p.suffix in (".py", ".md", ".txt", ".toml", "") and p.is_file()]


def test_design_references_resolve_inside_the_repo() -> None:
    """Every pointer to a design note names a file in this repository (and, where a section
    is quoted, a heading of that file)."""
    problems = []
    for path in _text_files():
        text = path.read_text(errors="replace")
        if _OUTSIDE_DOC in text:
            problems.append(f"{path.relative_to(REPO)} cites {_OUTSIDE_DOC} (not in the repo)")
        for doc, section in _DOC_REF.findall(text):
            target = REPO / doc
            if not target.is_file():
                problems.append(f"{path.relative_to(REPO)} cites missing {doc}")
            elif section and f"## {' '.join(section.split())}" not in target.read_text():
                problems.append(f"{path.relative_to(REPO)} cites {doc} section {section!r}")
    assert not problems, "\n".join(problems)
