"""The built-in components, and the registry's Python API with them loaded.

The registry (:mod:`gpt2kit.registry`) is a passive table: each built-in component registers itself
when its module is imported, and whoever needs all of them -- the command line, ``list``, ``build``
-- loads them here explicitly with :func:`load_builtins`. ``gpt2kit.build`` and
``gpt2kit.list_components`` are this module's functions.
"""

from __future__ import annotations

from typing import Any

from gpt2kit import registry as _registry

_loaded = False


def load_builtins() -> None:
    """Import every built-in component module, so that each registers itself (once; cheap after)."""
    global _loaded
    if _loaded:
        return
    import gpt2kit.chat.template  # noqa: F401  chat templates
    import gpt2kit.data.sampler  # noqa: F401  training window samplers
    import gpt2kit.finetune  # noqa: F401  freeze policies, LoRA
    import gpt2kit.nn  # noqa: F401  attention, position, norm, mlp, head
    import gpt2kit.tokenizers  # noqa: F401
    import gpt2kit.training.optim  # noqa: F401  optimizers, schedules

    _loaded = True


def registry(kind: str) -> _registry.Registry:
    """The registry of one kind of component, built-ins included."""
    load_builtins()
    return _registry.registry(kind)


def kinds() -> list[str]:
    """Every kind of component, built-ins loaded."""
    load_builtins()
    return _registry.kinds()


def build(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a registered component: ``build("attention", "causal", config)``."""
    load_builtins()
    return _registry.build(kind, name, *args, **kwargs)


def list_components(kind: str | None = None, pattern: str = "*") -> dict[str, list[_registry.Entry]]:
    """The registered components (one kind, or all), names matching a wildcard pattern."""
    load_builtins()
    return _registry.list_components(kind, pattern)
