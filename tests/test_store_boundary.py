"""Only the store package speaks SQL: no other module imports a database library (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import synthloop

SRC = Path(synthloop.__file__).parent
DATABASE_LIBRARIES = {"sqlalchemy", "sqlite3", "psycopg", "psycopg2"}
# Not the project's store: the embedding cache is one SQLite file per embedding model, shared by projects and
# `predict` (features.EmbeddingStore); errors turns a damaged or read-only SQLite file into a one-line message.
OUTSIDE_THE_STORE = {"learn/features.py", "errors.py"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_outside_the_store_imports_a_database_library():
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "store" or str(relative) in OUTSIDE_THE_STORE:
            continue
        found = imported_roots(path) & DATABASE_LIBRARIES
        if found:
            offenders[str(relative)] = sorted(found)
    assert offenders == {}, f"SQL belongs in synthloop.store; these modules import a database library: {offenders}"
    assert imported_roots(SRC / "store" / "base.py") & DATABASE_LIBRARIES == {"sqlalchemy"}  # the check sees imports


def test_every_store_module_is_small():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "store").glob("*.py")}
    assert {"__init__.py", "base.py", "queries.py", "jobs.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > 400} == {}
