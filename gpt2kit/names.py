"""One name per component: a registered name works wherever a class name does.

Every swappable component can be named three ways — its registered name (``sliding_window``), its
class name (``SlidingWindowAttention``) or its full class path — on the command line, in a recipe and
in an ablation grid::

    --model.attention sliding_window --model.attention.window 128
    model:
      attention: {name: sliding_window, window: 128}          # the shorthand: name + its arguments
      attention: {class_path: sliding_window, init_args: {window: 128}}

Before jsonargparse type-checks a value of a component-typed argument (one whose type is a
registered kind's base class, or a factory ``Callable[..., Base]`` of one), the value is rewritten to
the canonical form: the full ``class_path`` (+ ``init_args``). So the schema stays the typed one
(never an untyped ``str | dict``), jsonargparse still checks every argument, and ``--print_config``,
``config.yaml`` and checkpoints hold full class paths. The kind follows from the argument's *type*,
not from its name: ``data.init_args.tokenizer`` is a tokenizer because its type is ``Tokenizer``.

An unknown name is a one-line error with the close matches. A name of a class that is not registered
(any public subclass jsonargparse can find) is left to jsonargparse, as before.

How, in two steps:

1. **The shorthand, in the YAML loader** (jsonargparse's public :func:`jsonargparse.set_loader`). gpt2kit's
   parsers read YAML in their own mode, :data:`PARSER_MODE`: jsonargparse's YAML loader followed by
   :func:`expand_shorthand`, which rewrites ``{name: sliding_window, window: 128}`` to the canonical
   ``{class_path: gpt2kit.nn.SlidingWindowAttention, init_args: {window: 128}}`` in recipes, in
   ``--config`` overlays and in YAML values given on the command line.
2. **Names by the argument's type**: a bare name (``--model.attention sliding_window``), a name in
   ``class_path``, a shorthand the loader could not place, and ``--model.attention.help NAME`` are
   resolved by the argument's type, which only jsonargparse's value check knows. jsonargparse has no
   public hook there, so :class:`RegistryNames` (a parser mixin; jsonargparse builds argument groups and
   nested classes' parsers from the parser's own class, so it reaches every level) swaps the
   component-typed actions for subclasses whose check starts with :func:`canonical`.

Step 2 is the one place gpt2kit relies on jsonargparse's internals, all of them in this module:
``jsonargparse._typehints.ActionTypeHint`` and its ``_check_type(value, append, cfg, mode)`` and
``_typehint``, and ``_ActionHelpClassPath.print_help``. Tested with jsonargparse 4.53.0 (pyproject.toml
asks for >= 4.53); tests/test_names_and_specs.py fails if an upgrade changes them.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from typing import Any

import yaml
from jsonargparse import Namespace, get_loader, set_loader

# jsonargparse internals (tested with 4.53.0; see the module's docstring): the two actions a value passes
from jsonargparse._typehints import ActionTypeHint, _ActionHelpClassPath

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import Entry, Registry, registries_for

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_NULLS = {"null", "Null", "NULL", "~"}  # YAML's nulls ("none" may be a name: NoPosition's is)
_SPEC_META = ("__path__", "dict_kwargs")


# -- which registries a type hint selects from ----------------------------------------------------------
def _classes(typehint: Any) -> tuple[list[type], bool]:
    """The classes a type hint accepts instances (or factories) of, and whether it also accepts a str."""
    origin = typing.get_origin(typehint)
    if typehint is Any or typehint is str:
        return [], True
    if origin in (typing.Union, types.UnionType):
        found, text = [], False
        for arg in typing.get_args(typehint):
            c, t = _classes(arg)
            found += c
            text |= t
        return found, text
    if origin is collections.abc.Callable:
        args = typing.get_args(typehint)
        return _classes(args[-1]) if args else ([], False)
    if inspect.isclass(typehint) and typehint is not object and origin is None:
        return [typehint], False
    return [], False


def component_registries(typehint: Any) -> tuple[list[tuple[Registry, type]], bool]:
    """``[(registry, expected class)]`` for a component-typed hint (empty if it is not one), and
    whether the hint accepts plain strings too (then strings are left as they are)."""
    classes, text = _classes(typehint)
    return [(reg, cls) for cls in classes for reg in registries_for(cls)], text


# -- the rewrite -----------------------------------------------------------------------------------------
def _lookup(name: str, registries: list[tuple[Registry, type]]) -> Entry | None:
    found = {}
    for reg, cls in registries:
        entry = reg.lookup(name)
        if entry is not None and issubclass(entry.cls, cls):
            found[entry.class_path] = entry
    return next(iter(found.values())) if len(found) == 1 else None


def _known_class_name(name: str, registries: list[tuple[Registry, type]]) -> bool:
    """Whether an unregistered subclass is called ``name`` (jsonargparse resolves it by class name)."""
    seen, todo = set(), [cls for _, cls in registries]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls.__name__ == name:
            return True
        todo += cls.__subclasses__()
    return False


def _unknown(name: str, registries: list[tuple[Registry, type]], where: str) -> GPT2KitError:
    reg = registries[0][0]
    return GPT2KitError(f"{where}: {reg.unknown(name)}" if where else reg.unknown(name))


def canonical_name(name: str, registries: list[tuple[Registry, type]], where: str = "") -> str:
    """The full class path that ``name`` (registered name, class name or path) means in these registries.

    A dotted path, or the class name of an unregistered subclass, is returned unchanged for jsonargparse
    to resolve; anything else unknown is a :class:`GPT2KitError` with the close matches.
    """
    if "." in name or not registries:
        return name
    entry = _lookup(name, registries)
    if entry is not None:
        return entry.class_path
    if _known_class_name(name, registries):
        return name
    raise _unknown(name, registries, where)


def canonical(value: Any, typehint: Any, where: str = "") -> Any:
    """``value`` of a component-typed argument, with registered names rewritten to full class paths.

    Handles a name (``"sliding_window"``), the shorthand ``{name: sliding_window, window: 128}`` (also
    as a YAML/JSON string from the command line), and ``{class_path: sliding_window, init_args: ...}``.
    Anything else (classes, NestedArg ``--x.window 3`` values, paths to sub-config files) is unchanged.
    """
    registries, accepts_str = component_registries(typehint)
    if not registries:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError:
                return value
            return canonical(loaded, typehint, where) if isinstance(loaded, dict) else value
        if accepts_str or text in _NULLS or not _IDENTIFIER.fullmatch(text):
            return value
        return canonical_name(text, registries, where)
    if isinstance(value, Namespace):
        if not (isinstance(value.get("class_path"), str) or isinstance(value.get("name"), str)):
            return value
        value = value.as_dict()
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("class_path"), str):
        path = canonical_name(value["class_path"], registries, where)
        return value if path == value["class_path"] else {**value, "class_path": path}
    if isinstance(value.get("name"), str):  # the shorthand: the name selects, the rest are its arguments
        rest = {k: v for k, v in value.items() if k != "name"}
        meta = {k: rest.pop(k) for k in _SPEC_META if k in rest}
        init_args = {**(rest.pop("init_args", None) or {}), **rest}
        path = canonical_name(value["name"], registries, where)
        return (
            {"class_path": path, "init_args": init_args, **meta}
            if init_args
            else {"class_path": path, **meta}
        )
    return value


# -- step 1: the shorthand, in the YAML loader (public jsonargparse API) -----------------------------------
PARSER_MODE = "gpt2kit"
"""The ``parser_mode`` of gpt2kit's parsers: YAML, with the shorthand rewritten (:func:`expand_shorthand`)."""

_NOT_SPECS = ("init_args", "dict_kwargs")  # mappings under these keys are a class's arguments, not a spec


def _all_registries() -> list[tuple[Registry, type]]:
    return [(reg, reg.base) for reg in registries_for(object)]


def expand_shorthand(value: Any, key: str | None = None) -> Any:
    """``value`` (loaded YAML) with every ``{name: NAME, **arguments}`` of a component rewritten to
    ``{class_path: FULL.PATH, init_args: arguments}``.

    The loader does not know the type a value will meet, so it places a name by the key above it: a
    kind's name (``tokenizer:``, ``attention:``) looks in that kind, any other key (``finetune:``, or none
    for a value given on the command line) in every kind, where the name must be unique. A name it cannot
    place is left as it is, for the type-aware step (:func:`canonical`) — under a kind's key as
    ``class_path: NAME``, so that an unknown name gets its close matches there.
    """
    if isinstance(value, list):
        return [expand_shorthand(v, key) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: expand_shorthand(v, k) for k, v in value.items()}
    name = value.get("name")
    if key in _NOT_SPECS or not isinstance(name, str) or "class_path" in value:
        return value
    kind = [(reg, reg.base) for reg, _ in _all_registries() if reg.kind == key]
    entry = _lookup(name, kind or _all_registries()) if _IDENTIFIER.fullmatch(name) else None
    if entry is None and not kind:
        return value  # not (knowably) a component: a mapping that has a `name`
    rest = {k: v for k, v in value.items() if k != "name"}
    meta = {k: rest.pop(k) for k in _SPEC_META if k in rest}
    init_args = {**(rest.pop("init_args", None) or {}), **rest}
    spec = {"class_path": entry.class_path if entry is not None else name, **meta}
    return {**spec, "init_args": init_args} if init_args else spec


def _load(text: str) -> Any:
    return expand_shorthand(_yaml_load(text))


_yaml_load = get_loader("yaml")
set_loader(PARSER_MODE, _load, exceptions=(yaml.YAMLError,))


# -- step 2: names by the argument's type (jsonargparse internals: see the module's docstring) ------------
class _ComponentTypeHint(ActionTypeHint):
    """An ActionTypeHint whose values are rewritten by :func:`canonical` before they are checked."""

    # jsonargparse passes only the keyword arguments _check_type declares: the same ones as 4.53's
    def _check_type(self, value: Any, append: bool = False, cfg: Any = None, mode: Any = None) -> Any:
        try:
            value = canonical(value, self._typehint, self.dest)
        except GPT2KitError as exc:  # jsonargparse reports TypeErrors; the CLI prints the cause alone
            raise TypeError(f'Parser key "{self.dest}": {exc}') from exc
        return super()._check_type(value, append=append, cfg=cfg, mode=mode)


class _ComponentHelp(_ActionHelpClassPath):
    """``--model.attention.help sliding_window``: the help of a component named any of its three ways."""

    def print_help(self, call_args: Any) -> Any:
        parser, cfg, value, option_string = call_args
        if isinstance(value, str):
            registries, _ = component_registries(self._typehint)
            try:
                value = canonical_name(value, registries, option_string)
            except GPT2KitError as exc:
                raise TypeError(str(exc)) from exc
        return super().print_help((parser, cfg, value, option_string))


def accept_registry_names(action: Any) -> Any:
    """Mark ``action`` (just added to a parser or group) to take registered names, if it is component-typed:
    a value (ActionTypeHint) or its ``--KEY.help`` (which jsonargparse adds through the same add_argument)."""
    swap = {ActionTypeHint: _ComponentTypeHint, _ActionHelpClassPath: _ComponentHelp}.get(type(action))
    if swap is not None and component_registries(getattr(action, "_typehint", None))[0]:
        action.__class__ = swap
    return action


class RegistryNames:
    """Parser mixin: component-typed arguments take registered names, and YAML is read in
    :data:`PARSER_MODE` (the shorthand rewritten) unless a ``parser_mode`` is given (see the module's
    docstring).

    ``class GPT2KitArgumentParser(RegistryNames, LightningArgumentParser)``. jsonargparse derives the
    argument groups' class from this ``add_argument`` (it recompiles its source), so keep it a plain
    two-line method.
    """

    def __init__(self, *args: Any, parser_mode: str = PARSER_MODE, **kwargs: Any) -> None:
        super().__init__(*args, parser_mode=parser_mode, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        return accept_registry_names(action)
