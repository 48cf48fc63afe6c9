"""Modules that moved in the layout by layers (December 2026), importable by their former names.

Recipes, saved ``config.yaml`` files and checkpoints name classes by their full path (``class_path:
gpt2kit.optim.WarmupCosine``, ``gpt2kit.lit.GPTLitModule``), and scripts import from the old modules.
Those names keep working: importing a former module gives the module it became (the same object, so
``gpt2kit.optim.WarmupCosine is gpt2kit.training.optim.WarmupCosine``), imported only when asked for
(``gpt2kit.lit`` still loads Lightning only when it is named). New code uses the new paths.

This uses the import system's public hooks (:data:`sys.meta_path`, :class:`importlib.abc.MetaPathFinder`,
:class:`importlib.abc.Loader`); no module of gpt2kit is imported here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED = {
    "gpt2kit.cli": "gpt2kit.commands",
    "gpt2kit.lightning_cli": "gpt2kit.training.cli",
    "gpt2kit.lit": "gpt2kit.training.lit",
    "gpt2kit.callbacks": "gpt2kit.training.callbacks",
    "gpt2kit.optim": "gpt2kit.training.optim",
    "gpt2kit.resume": "gpt2kit.training.resume",
    "gpt2kit.hardware": "gpt2kit.training.hardware",
    "gpt2kit.perf": "gpt2kit.training.perf",
    "gpt2kit.quantize": "gpt2kit.decoding.int8",
    "gpt2kit.generate": "gpt2kit.decoding",
    "gpt2kit.batching": "gpt2kit.decoding",
    "gpt2kit.chat.repl": "gpt2kit.commands.chat",
    "gpt2kit.serve.command": "gpt2kit.commands.serve",
    "gpt2kit.evaluate.command": "gpt2kit.commands.evaluate",
}
"""Former module → the module it is now."""


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its own name


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds a former module name and loads it as the module it became."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new else None


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())  # before any finder that might find a stale copy
