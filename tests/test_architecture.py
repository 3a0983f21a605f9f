"""Dependencies point one way, as docs/ARCHITECTURE.md draws them: stages never import the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "churnsync"
STAGES = ("events", "features", "models", "store", "sync", "engines")
UPPER = (
    "churnsync.cli",
    "churnsync.pipeline",
    "churnsync.demo",
    "churnsync.web",
    "churnsync.schedule",
    "churnsync.ops",
)
LEAVES = ("config.py", "errors.py", "records.py")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_stages_never_import_upper_layers() -> None:
    offenders = []
    for stage in STAGES:
        for path in (SRC / stage).rglob("*.py"):
            for module in imported_modules(path):
                if module.startswith(UPPER):
                    offenders.append(f"{path.relative_to(SRC)} imports {module}")
    assert not offenders, offenders


def test_store_never_imports_sync() -> None:
    for path in (SRC / "store").rglob("*.py"):
        assert not any(m.startswith("churnsync.sync") for m in imported_modules(path)), path


def test_leaves_import_no_other_churnsync_module() -> None:
    for leaf in LEAVES:
        modules = {m for m in imported_modules(SRC / leaf) if m.startswith("churnsync")}
        assert modules <= {"churnsync.errors"}, f"{leaf} imports {modules}"


def test_architecture_doc_names_every_stage_module() -> None:
    doc = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"{stage}/" in doc, stage


def test_engines_use_the_stages_below_them_only() -> None:
    """The Spark engine builds predictions; storing and syncing them stays the pipeline's (issue 8)."""
    for path in (SRC / "engines").rglob("*.py"):
        modules = imported_modules(path)
        assert not any(m.startswith(("churnsync.store", "churnsync.sync")) for m in modules), path
