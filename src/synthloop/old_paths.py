"""Model files saved before synthloop's modules moved into packages (2026-12-02) name the old module paths:
pickle (joblib) and skops store a class by its module and name. These aliases let such files load."""

from __future__ import annotations

import sys
from importlib import import_module

# old module path -> where it lives now; only modules whose classes a saved model holds
MOVED = {"synthloop.models": "synthloop.learn.models", "synthloop.embed": "synthloop.learn.embed"}


def install() -> None:
    """Make the old module paths resolve, before a saved model is loaded."""
    for old, new in MOVED.items():
        if old not in sys.modules:
            sys.modules[old] = import_module(new)


def with_old_names(type_names: frozenset[str]) -> frozenset[str]:
    """The given fully qualified type names plus their spellings under the old module paths."""
    old = {name.replace(new + ".", prefix + ".", 1) for name in type_names
           for prefix, new in MOVED.items() if name.startswith(new + ".")}
    return type_names | old
