"""Registries of swappable components, one per kind, in the manner of timm's model registry.

A component is a class that subclasses its kind's base class (``Attention``, ``PositionEncoding``,
``Tokenizer`` ...) and registers itself under a short snake_case name::

    from gpt2kit.registry import register
    from gpt2kit.nn import Attention

    @register("attention", "my_attention")
    class MyAttention(Attention): ...

Users name a component by its registered name (``my_attention``), its class name (``MyAttention``)
or its full import path, interchangeably, in YAML, on the command line and in :func:`build`
(:mod:`gpt2kit.names` rewrites names to full class paths before jsonargparse checks them). The
registry is a passive table that the components' modules fill as they are imported; it imports none of
them (:func:`gpt2kit.components.load_builtins` does, for whoever needs them all). Its jobs are that
lookup (:meth:`Registry.lookup`), listing (``python -m gpt2kit list attention '*window*'``), the Python
API (``build("attention", "sliding_window", config, window=256)``), readable errors and plugin loading.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

PLUGIN_GROUP = "gpt2kit.plugins"
PLUGIN_ENV = "GPT2KIT_PLUGINS"


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    cls: type
    source: str
    """Where it came from: ``built-in`` or the plugin (distribution or module) that registered it."""

    @property
    def class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


class Registry:
    """The components of one kind, by name. Names are unique; classes must subclass ``base``."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Class decorator: register the class under ``name`` (default: its class name)."""

        def deco(cls: T) -> T:
            self.add(cls, name)
            return cls

        return deco

    def add(self, cls: type, name: str | None = None) -> Entry:
        name = name or cls.__name__
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise GPT2KitError(
                f"cannot register {cls!r} as {self.kind} '{name}': it must subclass "
                f"{self.base.__module__}.{self.base.__qualname__}"
            )
        entry = Entry(self.kind, name, cls, _source_of(cls))
        old = self._entries.get(name)
        if old is not None and old.class_path != entry.class_path:
            raise GPT2KitError(
                f"{self.kind} '{name}' is registered twice: by {old.class_path} ({old.source}) and by "
                f"{entry.class_path} ({entry.source}); rename one of them"
            )
        clash = [e for e in self._entries.values() if e.cls.__name__ == cls.__name__ and e.name != name]
        if clash and clash[0].class_path != entry.class_path:
            log.warning(
                "%s classes %s and %s share the class name %s: select them in YAML by full class_path",
                self.kind,
                clash[0].class_path,
                entry.class_path,
                cls.__name__,
            )
        self._entries[name] = entry
        return entry

    def lookup(self, name: str) -> Entry | None:
        """The entry a user's name means: a registered name, a class name (if only one class has it)
        or a full class path; None if none does. Users may write any of the three, anywhere."""
        if name in self._entries:
            return self._entries[name]
        matches = {e.class_path: e for e in self._entries.values() if name in (e.cls.__name__, e.class_path)}
        return next(iter(matches.values())) if len(matches) == 1 else None

    def entry(self, name: str) -> Entry:
        """:meth:`lookup`, or a one-line error listing the close matches."""
        found = self.lookup(name)
        if found is not None:
            return found
        same = [e.class_path for e in self._entries.values() if e.cls.__name__ == name]
        if len(same) > 1:
            raise GPT2KitError(
                f"{self.kind} class name '{name}' is ambiguous: {', '.join(same)}; give the full class path"
            )
        raise GPT2KitError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered: close matches, then every name."""
        candidates = sorted(self._entries) + sorted(e.cls.__name__ for e in self._entries.values())
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        broken = f"; plugins that failed to load: {', '.join(failed_plugins)}" if failed_plugins else ""
        return (
            f"unknown {self.kind} '{name}': {hint}registered: {', '.join(self.names())} "
            f"(see `python -m gpt2kit list {self.kind}`; a plugin's component needs the plugin installed "
            f"or its module named with --plugins){broken}"
        )

    def get(self, name: str) -> type:
        return self.entry(name).cls

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in natural sort order."""
        return sorted((n for n in self._entries if fnmatch.fnmatchcase(n, pattern)), key=_natural_key)

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


_REGISTRIES: dict[str, Registry] = {}
_current_source: str | None = None  # the plugin being imported by load_plugins, if any


def _source_of(cls: type) -> str:
    """``built-in``, the plugin being loaded, or the distribution (else module) that defines ``cls``.

    A plugin's module may be imported before :func:`load_plugins` runs (by a test, or by jsonargparse
    resolving a ``class_path``), so the source also follows from the class's module.
    """
    if _current_source is not None:
        return _current_source
    module = cls.__module__
    if module == "gpt2kit" or module.startswith("gpt2kit."):
        return "built-in"
    dists = _distributions().get(module.split(".")[0])
    return f"{_dist_label(dists[0])} (module {module})" if dists else f"module {module}"


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _dist_label(name: str) -> str:
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def add_kind(kind: str, base: type) -> Registry:
    """Open a registry for a new kind of component (e.g. ``freeze`` or ``chat_template``)."""
    if kind in _REGISTRIES and _REGISTRIES[kind].base is not base:
        raise GPT2KitError(f"component kind '{kind}' already exists with base {_REGISTRIES[kind].base}")
    return _REGISTRIES.setdefault(kind, Registry(kind, base))


def registries_for(cls: type) -> list[Registry]:
    """The registries whose classes may stand where ``cls`` is expected (its kind's, or all for ``object``).

    Passive: it does not load the built-ins.
    """
    return [r for r in _REGISTRIES.values() if issubclass(r.base, cls) or issubclass(cls, r.base)]


def registry(kind: str) -> Registry:
    if kind not in _REGISTRIES:
        close = difflib.get_close_matches(kind, list(_REGISTRIES), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise GPT2KitError(f"unknown component kind '{kind}': {hint}kinds: {', '.join(kinds())}")
    return _REGISTRIES[kind]


_KIND_ORDER = ["tokenizer", "attention", "position", "norm", "mlp", "head"]


def kinds() -> list[str]:
    order = {k: i for i, k in enumerate(_KIND_ORDER)}
    return sorted(_REGISTRIES, key=lambda k: order.get(k, len(order)))


def register(kind: str, name: str | None = None) -> Callable[[T], T]:
    """``@register("attention", "sliding_window")``: register a class under a kind."""

    def deco(cls: T) -> T:
        registry(kind).add(cls, name)
        return cls

    return deco


def get(kind: str, name: str) -> type:
    return registry(kind).get(name)


def build(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a registered component: ``build("attention", "causal", config)``."""
    return registry(kind).build(name, *args, **kwargs)


def list_components(kind: str | None = None, pattern: str = "*") -> dict[str, list[Entry]]:
    kinds_ = [kind] if kind else kinds()
    return {k: registry(k).entries(pattern) for k in kinds_}


# --- plugins ----------------------------------------------------------------------------------------

_loaded_plugins: dict[str, str] = {}
failed_plugins: dict[str, str] = {}
"""Entry-point plugins that failed to import (skipped with a warning): ``{name (distribution): reason}``."""


def _import_as(target: str, source: str, load: Callable[[], Any] | None = None) -> None:
    """Import ``target`` (or call ``load``) with every registration in it credited to ``source``."""
    global _current_source
    previous, _current_source = _current_source, source
    try:
        obj = load() if load is not None else importlib.import_module(target)
        if callable(obj) and not isinstance(obj, type):  # ``module:function``: a registration hook
            obj()
    finally:
        _current_source = previous


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def plugin_env() -> list[str]:
    """The plugin modules named in ``GPT2KIT_PLUGINS``."""
    return [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]


def export_plugins(modules: Sequence[str]) -> None:
    """Add ``modules`` to ``GPT2KIT_PLUGINS``, so that processes started from this one (DDP ranks,
    ablation runs) load them too."""
    if modules:
        os.environ[PLUGIN_ENV] = ",".join(dict.fromkeys([*plugin_env(), *modules]))


def load_plugins(modules: Iterable[str] = (), *, entry_points: bool = True) -> dict[str, str]:
    """Import plugins so that their components register before the CLI parses a config.

    Loads (1) every ``gpt2kit.plugins`` entry point of the installed distributions -- a plugin that
    fails to import is skipped with a warning naming it and its distribution (see
    :data:`failed_plugins`) -- then (2) the modules named in ``modules`` and in the comma-separated
    ``GPT2KIT_PLUGINS`` environment variable, which were asked for, so that a failure is an error.
    A name registered twice (by two plugins, or a plugin and a built-in) is an error naming both (load
    the built-ins first to catch the latter: :func:`gpt2kit.components.load_builtins`).
    An entry point's value is a module (``pkg.components``), or a function called after import
    (``pkg:register``). Returns ``{module: source}`` of every plugin loaded so far.
    """
    if entry_points:
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            if ep.value in _loaded_plugins:
                continue
            dist = _dist_label(ep.dist.name) if ep.dist is not None else "no distribution"
            source = f"plugin {ep.name} ({dist})"
            try:
                _import_as(ep.value, source, ep.load)
            except GPT2KitError:  # e.g. a name another plugin registered: fail, naming both
                raise
            except Exception as exc:  # a broken third-party package must not stop gpt2kit
                failed_plugins[f"{ep.name} ({dist})"] = _reason(exc)
                log.warning(
                    "gpt2kit plugin '%s' (entry point %s = %s, from %s) failed to import and is skipped: %s",
                    ep.name,
                    PLUGIN_GROUP,
                    ep.value,
                    dist,
                    _reason(exc),
                )
                continue
            _loaded_plugins[ep.value] = source
    for module in dict.fromkeys([*modules, *plugin_env()]):
        if module in _loaded_plugins:
            continue
        try:
            _import_as(module, f"plugin module {module}")
        except GPT2KitError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                raise GPT2KitError(
                    f"plugin module '{module}' was not found: install it, or put the folder that holds it "
                    "on PYTHONPATH (--plugins and GPT2KIT_PLUGINS take importable module names, not files)"
                ) from None
            raise GPT2KitError(f"plugin module '{module}' failed to import: {_reason(exc)}") from exc
        except Exception as exc:
            raise GPT2KitError(f"plugin module '{module}' failed to import: {_reason(exc)}") from exc
        _loaded_plugins[module] = f"plugin module {module}"
    return dict(_loaded_plugins)
