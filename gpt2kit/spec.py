"""Component specs: the one way gpt2kit writes a component down and builds it back.

A *spec* is what a recipe holds and a checkpoint stores: ``{"class_path": ..., "init_args": {...}}``
(plus ``"state"`` for a component that learns data of its own, such as a tokenizer's vocabulary).
This module turns the values the code works with into specs and back:

* :func:`spec_of` — a factory (a class, or ``functools.partial`` of one, which is what jsonargparse
  makes of ``class_path`` + ``init_args``), a dataclass, or a component instance → a spec;
* :func:`instance_spec` — a component instance with its constructor arguments (and state) → a spec;
* :func:`resolve_class` — a class path (or registered name) → the class, only if it subclasses the
  base class the caller expects;
* :func:`build_factory` / :func:`build_instance` — a spec → a factory / an instance, the same way;
* :func:`describe` — a spec → ``SlidingWindowAttention(window=64)``, for errors and ablation labels;
* :func:`normalized` — a spec with its class resolved and its defaults filled in, for comparing two.

It is a foundation (layer 1): it knows the registry, never the classes it describes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import re
import sys
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import registries_for

CLASS_PATH = "class_path"
INIT_ARGS = "init_args"
STATE = "state"


def class_path(cls: type, public: bool = False) -> str:
    """``module.QualName``: the full import path of a class, as checkpoints and --print_config hold it.

    ``public``: a class re-exported by its module's package is named by the package
    (``gpt2kit.finetune.LastNBlocks``, not ``gpt2kit.finetune.policies.LastNBlocks``).
    """
    module = cls.__module__
    parent = module.rpartition(".")[0]
    if public and parent and getattr(sys.modules.get(parent), cls.__qualname__, None) is cls:
        module = parent
    return f"{module}.{cls.__qualname__}"


def is_spec(value: Any) -> bool:
    """Whether ``value`` is a ``{"class_path": ...}`` mapping."""
    return isinstance(value, dict) and isinstance(value.get(CLASS_PATH), str)


# -- values → specs ---------------------------------------------------------------------------------------
def instance_spec(obj: Any, init_args: dict[str, Any], state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec of a component instance: its class path, constructor arguments and (if any) learned state."""
    spec: dict[str, Any] = {CLASS_PATH: class_path(type(obj)), INIT_ARGS: dict(init_args)}
    if state is not None:
        spec[STATE] = state
    return spec


def init_args_from_attributes(obj: Any) -> dict[str, Any]:
    """The constructor arguments of ``obj``, read from attributes of the same names (e.g. a FreezePolicy)."""
    params = [
        p.name
        for p in inspect.signature(type(obj).__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return {p: getattr(obj, p) for p in params}


class Specified:
    """A component written down by its constructor arguments, read from attributes of the same names.

    :meth:`spec` is how a recipe or checkpoint records it; two are equal when their specs are, and the
    repr shows the arguments. Schedules and window samplers are such components.
    """

    def spec(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: how a recipe or checkpoint writes this component down."""
        return instance_spec(self, init_args_from_attributes(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec()[INIT_ARGS].items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.spec() == other.spec()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(repr(self))


def spec_of(value: Any) -> Any:
    """A recipe-style description of a constructor argument.

    A class → ``{"class_path": ...}``; a ``functools.partial`` of a class → with its ``init_args``; a
    dataclass → its fields; an object with a ``spec()`` method (a component instance) → what that
    returns; anything else (numbers, strings, specs already) unchanged.
    """
    if isinstance(value, type):
        return {CLASS_PATH: class_path(value)}
    if isinstance(value, functools.partial):
        cls = next((a for a in (value.func, *value.args) if isinstance(a, type)), None)
        if cls is not None:
            return {CLASS_PATH: class_path(cls), INIT_ARGS: dict(value.keywords)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    spec = getattr(value, "spec", None)
    if callable(spec) and not isinstance(value, type):
        return spec()
    return value


# -- specs → classes, factories, instances -------------------------------------------------------------
def _name(base: type) -> str:
    return base.__name__


def resolve_class(path: str, base: type, what: str = "") -> type:
    """The class a spec names, refused unless it is ``base`` or a subclass of it.

    ``path`` is a full class path, or a registered name / class name of ``base``'s kind. A class whose
    module cannot be imported (a plugin that is not installed) is a one-line error naming it.
    """
    where = f"{what} needs " if what else "needs "
    for reg in registries_for(base):
        entry = reg.lookup(path)
        if entry is not None and issubclass(entry.cls, base):
            return entry.cls
    module_name, _, attr = path.rpartition(".")
    if not module_name and registries_for(base):
        unknown = registries_for(base)[0].unknown(path)
        raise GPT2KitError(f"{what}: {unknown}" if what else unknown)
    if not module_name:
        raise GPT2KitError(
            f"{where}{_name(base)} '{path}', which is neither a full class path nor a registered name: "
            f"see `python -m gpt2kit list`"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        top = module_name.split(".")[0]
        raise GPT2KitError(
            f"{where}{path}: install the plugin that provides it ({top}), or pass --plugins {top}"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise GPT2KitError(
            f"{where}{path}, which is not a {class_path(base)}: refusing to build it from a spec"
        )
    return obj


def build_factory(spec: Any, base: type, what: str = "") -> Any:
    """A factory from a spec: the class itself, or ``functools.partial(cls, **init_args)``.

    ``base`` is what the factory must make (e.g. ``Attention`` for an attention slot).
    """
    if isinstance(spec, type):
        spec = {CLASS_PATH: class_path(spec)}
    if not is_spec(spec):
        raise GPT2KitError(
            f"{what or _name(base)}: expected {{class_path: ..., init_args: ...}}, got {spec!r}"
        )
    cls = resolve_class(spec[CLASS_PATH], base, what)
    args = dict(spec.get(INIT_ARGS) or {})
    return functools.partial(cls, **args) if args else cls


def build_instance(spec: dict[str, Any], base: type, what: str = "") -> Any:
    """An instance from a spec: ``cls(**init_args)``, then ``load_state(state)`` if the spec has state."""
    if not is_spec(spec):
        raise GPT2KitError(
            f"{what or _name(base)}: expected {{class_path: ..., init_args: ...}}, got {str(spec)[:80]}"
        )
    cls = resolve_class(spec[CLASS_PATH], base, what)
    try:
        obj = cls(**(spec.get(INIT_ARGS) or {}))
    except TypeError as exc:
        raise GPT2KitError(f"cannot rebuild {what or _name(base)} {spec[CLASS_PATH]}: {exc}") from None
    if STATE in spec:
        obj.load_state(spec[STATE] or {})
    return obj


# -- reading specs ----------------------------------------------------------------------------------------
def _short(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", value):
        return value.rsplit(".", 1)[-1]  # a class path: its class name
    if is_spec(value) or (isinstance(value, dict) and "name" in value and CLASS_PATH not in value):
        return describe(value)
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def describe(spec: Any) -> str:
    """A short label: ``SlidingWindowAttention(window=64)``, ``RotaryPosition``, ``0.003``.

    Takes a spec, a ``{name: ..., arg: ...}`` shorthand, a class path or a plain value.
    """
    if is_spec(spec):
        name, args = spec[CLASS_PATH], dict(spec.get(INIT_ARGS) or {})
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str) and CLASS_PATH not in spec:
        args = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        return _short(spec)
    text = ", ".join(f"{k}={_short(v)}" for k, v in args.items())
    return f"{_short(name)}({text})" if text else _short(name)


def normalized(spec: Any) -> Any:
    """A spec with its class resolved and its constructor defaults filled in, for comparing two specs.

    Two specs that build the same component compare equal, whether or not they spell out defaults.
    A class that cannot be imported is compared by its path.
    """
    if not is_spec(spec):
        return spec
    args = dict(spec.get(INIT_ARGS) or {})
    try:
        cls = resolve_class(spec[CLASS_PATH], object)
    except GPT2KitError:
        return spec[CLASS_PATH], args
    for name, param in inspect.signature(cls).parameters.items():
        if param.default is not inspect.Parameter.empty:
            args.setdefault(name, param.default)
    return cls, args
