"""``python -m gpt2kit``: LightningCLI (fit / validate / test / predict) plus gpt2kit's own commands.

    python -m gpt2kit fit --config recipes/pretrain/shakespeare-char.yaml
    python -m gpt2kit prepare --config recipes/pretrain/gutenberg-gpt2.yaml   # the data alone
    python -m gpt2kit generate --ckpt runs/shakespeare-char/.../last.ckpt --prompt "ROMEO:"
    python -m gpt2kit chat --ckpt runs/chat-topical/checkpoints/last.ckpt    # multi-turn chat REPL
    python -m gpt2kit predict --config recipes/predict/completions.yaml --ckpt_path CKPT --data.prompts FILE
    python -m gpt2kit import-hf HF_DIR OUT.ckpt        # Hugging Face GPT-2 folder → checkpoint
    python -m gpt2kit export-hf CKPT OUT_DIR           # and back
    python -m gpt2kit evaluate --ckpt CKPT_OR_hf:gpt2 --tasks shakespeare_mc,hellaswag [--limit N]
    python -m gpt2kit list [KIND] [PATTERN]
    python -m gpt2kit ablate --config recipes/ablations/position-encoding.yaml [--parallel N]

Plugins (``gpt2kit.plugins`` entry points, ``--plugins MOD[,MOD]``, ``GPT2KIT_PLUGINS``) are imported
before the command line is parsed, so their components can be named in a recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from jsonargparse import set_parsing_settings

from gpt2kit.components import load_builtins
from gpt2kit.config import SamplingConfig
from gpt2kit.errors import GPT2KitError, user_error
from gpt2kit.parsing import CommandParser, program_args
from gpt2kit.registry import export_plugins, load_plugins

__all__ = ["COMMANDS", "command", "lightning_main", "main"]

log = logging.getLogger("gpt2kit")

TRACEBACK_ENV = "GPT2KIT_TRACEBACK"
"""Set to 1 to see the traceback of an unexpected error (users never see one otherwise)."""


def _run_function(fn: Callable[..., None], args: Sequence[str], prog: str) -> None:
    """Parse ``args`` into ``fn``'s parameters; a ``sampling: SamplingConfig`` parameter becomes the flat
    options every decoding command shares (--temperature, --top_k, ...), with SamplingConfig's defaults."""
    takes_sampling = "sampling" in inspect.signature(fn).parameters
    parser = CommandParser(prog=f"python -m gpt2kit {prog}", description=(fn.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(
        fn, as_group=False, as_positional=prog in POSITIONAL, skip={"sampling"} if takes_sampling else None
    )
    if takes_sampling:
        # Each field's docstring is its --help text. jsonargparse's setting is global and reads the source of
        # every class it describes, so it is set here, for the one group that needs it, not at import
        # (where it cost every `fit` ~2 s to start).
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        parser.add_class_arguments(SamplingConfig, None, as_group=True)
    kwargs: dict[str, Any] = {
        k: v for k, v in parser.parse_args(list(args)).as_dict().items() if not k.startswith("__")
    }
    if takes_sampling:
        fields = [f.name for f in dataclasses.fields(SamplingConfig)]
        kwargs["sampling"] = SamplingConfig(**{k: kwargs.pop(k) for k in fields if k in kwargs})
    fn(**kwargs)


COMMANDS: dict[str, str] = {
    "list": "gpt2kit.commands.listing:list_main",
    "generate": "gpt2kit.commands.generate:generate_command",
    "chat": "gpt2kit.commands.chat:chat_command",
    "serve": "gpt2kit.commands.serve:serve_command",
    "evaluate": "gpt2kit.commands.evaluate:evaluate_command",
    "prepare": "gpt2kit.commands.prepare:prepare_main",
    "ablate": "gpt2kit.commands.ablate:ablate_main",
    "import-hf": "gpt2kit.commands.hf:import_hf_command",
    "export-hf": "gpt2kit.commands.hf:export_hf_command",
}
"""The one dispatch table: command → ``module:function`` (one module per command in this package),
imported only when that command runs (so ``generate``, ``chat`` and ``serve`` start without importing
Lightning). Its parameters are parsed here (a ``sampling`` parameter becomes the shared sampling
options), unless the command is one of :data:`OWN_PARSER`."""
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
"""LightningCLI's subcommands (:mod:`gpt2kit.training.cli`)."""
POSITIONAL = {"import-hf", "export-hf"}
"""Commands whose required arguments are positional (``import-hf HF_DIR OUT``)."""
OWN_PARSER = {"list", "prepare", "ablate"}
"""Commands whose function takes the argument list and parses it itself."""


def command(name: str) -> Callable[..., None]:
    """The function of a command of :data:`COMMANDS` (its module imported now)."""
    module, _, attr = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def lightning_main(*args: Any, **kwargs: Any) -> Any:
    """LightningCLI's entry point (:func:`gpt2kit.training.cli.lightning_main`), imported when called."""
    from gpt2kit.training.cli import lightning_main as run

    return run(*args, **kwargs)


def _pop_plugins(argv: list[str]) -> list[str]:
    modules: list[str] = []
    for i, arg in reversed(list(enumerate(argv))):
        if arg == "--plugins" and i + 1 < len(argv):
            modules += argv[i + 1].split(",")
            del argv[i : i + 2]
        elif arg.startswith("--plugins="):
            modules += arg.split("=", 1)[1].split(",")
            del argv[i]
    return [m for m in modules if m]


def _dispatch(argv: list[str]) -> None:
    explicit = _pop_plugins(argv)
    load_builtins()  # before the plugins, so that a plugin reusing a built-in name is told so
    load_plugins(explicit)
    export_plugins(explicit)  # DDP ranks and ablation runs load them too
    if argv and not argv[0].startswith("-") and argv[0] not in (*COMMANDS, *LIGHTNING_COMMANDS):
        close = difflib.get_close_matches(argv[0], [*LIGHTNING_COMMANDS, *COMMANDS], n=1, cutoff=0.5)
        hint = f": did you mean {close[0]}?" if close else ""
        raise GPT2KitError(
            f"unknown command '{argv[0]}'{hint} (commands: {', '.join([*LIGHTNING_COMMANDS, *COMMANDS])})"
        )
    if argv and argv[0] in COMMANDS:
        fn = command(argv[0])
        if argv[0] in OWN_PARSER:
            fn(argv[1:])
        else:
            _run_function(fn, argv[1:], argv[0])
    else:
        with program_args(argv):
            lightning_main()


def fail(exc: GPT2KitError) -> NoReturn:
    """End the program on a user error: ``error: ...`` (and a hint line, if the message has one), exit 2."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    hint = f"\n{' '.join(lines[1:])}" if len(lines) > 1 else ""
    sys.stderr.write(f"error: {lines[0]}{hint}\n")
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gpt2kit``: the one place where a user error becomes ``error: ...`` and exit code 2.

    Everything below raises :class:`~gpt2kit.errors.GPT2KitError` (or an exception caused by one); here it
    is said in one line (two with a hint), without a traceback, exit code 2. Anything else (a bug, or a
    failure of a library or the system under us: out of memory, a full disk) is said in one line too,
    exit code 1, with the traceback only when ``GPT2KIT_TRACEBACK=1``; Ctrl-C ends with exit code 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _dispatch(argv)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        cause = user_error(exc)
        if cause is not None:
            fail(cause)
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        sys.stderr.write(
            f"error: {type(exc).__name__}: {first}\n(not a mistake gpt2kit recognised; rerun with "
            f"{TRACEBACK_ENV}=1 for the traceback, and report it if it is a bug)\n"
        )
        sys.exit(1)
