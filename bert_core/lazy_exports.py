"""A package's public names imported on first use (PEP 562), so importing the package imports nothing heavy.

Why: ``python -m bert_core.training`` imports ``bert_core`` and ``bert_core.training`` before its ``__main__``
chooses the malloc (``bert_core.allocator``), which must happen before torch is imported.
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``; ``exports`` maps each public name to the module defining it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
