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
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import set_parsing_settings

from gpt2kit.components import list_components, load_builtins
from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.loaded import Dtype
from gpt2kit.errors import GPT2KitError, user_error
from gpt2kit.parsing import CommandParser, program_args
from gpt2kit.registry import export_plugins, failed_plugins, load_plugins

__all__ = ["COMMANDS", "generate_command", "lightning_main", "list_command", "main"]

log = logging.getLogger("gpt2kit")

TRACEBACK_ENV = "GPT2KIT_TRACEBACK"
"""Set to 1 to see the traceback of an unexpected error (users never see one otherwise)."""


# --- gpt2kit's own subcommands ----------------------------------------------------------------------------


def list_command(kind: str | None = None, pattern: str = "*") -> None:
    """Print the registered components (optionally one kind, names matching a wildcard pattern), each with
    its source: ``built-in``, or the plugin and distribution it came from."""
    rows = [
        (e.kind, e.name, e.cls.__name__, e.source, e.summary)
        for entries in list_components(kind, pattern).values()
        for e in entries
    ]
    if not rows:
        print(f"no {kind or 'component'} matches '{pattern}'")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(
        "name, class, source, summary; recipes and options take the name or the class "
        "(--model.attention math or MathAttention)"
    )
    current = None
    for r in rows:
        if r[0] != current:
            current = r[0]
            print(f"\n{current}:")
        print(f"  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}")
    if failed_plugins:
        print("\nplugins that failed to load (skipped):")
        for name, reason in failed_plugins.items():
            print(f"  {name}: {reason}")


def generate_command(
    ckpt: str,
    prompt: str = "",
    prompt_file: str | None = None,
    num_samples: int = 1,
    sampling: SamplingConfig | None = None,
    device: str = "cpu",
    dtype: Dtype = "float32",
) -> None:
    """Sample text from a checkpoint, printing tokens as they are generated.

    Args:
        ckpt: path to a gpt2kit checkpoint (.ckpt), trained or from import-hf, or a hub name (hf:gpt2).
        prompt: text to continue; empty starts from the end-of-text token.
        prompt_file: a file of prompts (one per line, or .jsonl with {"prompt": ...}) instead of --prompt.
        num_samples: number of independent samples per prompt.
        sampling: the sampling options (--temperature, --top_k, ..., see docs/generation.md); a seed
            makes sample i use seed + i.
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        dtype: weight dtype; bfloat16 halves the bytes read per token (faster decoding), int8 (CPU)
            quarters them and is faster still, at a small cost in accuracy.
    """
    from gpt2kit.decoding import encode_prompt, load_for_inference, stream_text

    if num_samples < 1:
        raise GPT2KitError(f"num_samples={num_samples} must be >= 1")
    prompts = [prompt]
    if prompt_file is not None:
        from gpt2kit.data.prompts import read_prompts  # (the data package imports Lightning)

        prompts = read_prompts(prompt_file)
    loaded = load_for_inference(_local(ckpt), device, dtype)
    tok = loaded.require_tokenizer()
    cfg = loaded.sampling(sampling)
    seed = cfg.seed
    ids = [encode_prompt(tok, text) for text in prompts]  # every prompt is checked before sampling
    n = 0
    for i, (text, prompt_ids) in enumerate(zip(prompts, ids, strict=True)):
        for j in range(num_samples):
            if len(prompts) > 1:
                print(f"--- prompt {i + 1}, sample {j + 1} ---")
            elif num_samples > 1:
                print(f"--- sample {j + 1} ---")
            if seed is not None:
                cfg = dataclasses.replace(cfg, seed=seed + n)
            n += 1
            sys.stdout.write(text)
            for piece in stream_text(loaded.model, tok, prompt_ids, cfg):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")


def _local(ckpt: str) -> str:
    """A local checkpoint for ``ckpt``: itself, or the import of an ``hf:`` name (fetched once)."""
    from gpt2kit.interop.hub import resolve_checkpoint

    return resolve_checkpoint(ckpt)


def import_hf_command(hf_dir: str, out: str, tokenizer: str | None = None) -> None:
    """Turn a Hugging Face GPT-2 folder (config.json + model.safetensors) into a gpt2kit checkpoint.

    Args:
        hf_dir: the Hugging Face model folder (e.g. a downloaded `gpt2` snapshot), or a hub name:
            hf:gpt2, hf:ORG/NAME@REVISION.
        out: the checkpoint file to write (.ckpt).
        tokenizer: a gpt2kit tokenizer JSON to store instead of the folder's own tokenizer.
    """
    from gpt2kit.interop.hf import import_hf
    from gpt2kit.interop.hub import resolve_folder

    print(f"wrote {import_hf(resolve_folder(hf_dir), out, tokenizer)}")


def export_hf_command(ckpt: str, out_dir: str) -> None:
    """Write a gpt2kit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors).

    Args:
        ckpt: a gpt2kit checkpoint (.ckpt).
        out_dir: the folder to write.
    """
    from gpt2kit.interop.hf import export_hf

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise GPT2KitError(
            f"out_dir {out_dir} is a file, not a folder: give a new or existing folder to write"
        )
    print(f"wrote {export_hf(ckpt, out_dir)}")


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
    "list": "gpt2kit.cli:list_command",
    "generate": "gpt2kit.cli:generate_command",
    "chat": "gpt2kit.chat.repl:chat_command",
    "prepare": "gpt2kit.lightning_cli:prepare_command",
    "import-hf": "gpt2kit.cli:import_hf_command",
    "export-hf": "gpt2kit.cli:export_hf_command",
    "ablate": "gpt2kit.ablate:ablate_command",
    "serve": "gpt2kit.serve.command:serve_command",
    "evaluate": "gpt2kit.evaluate:evaluate_command",
}
"""The one dispatch table: command → ``module:function``, imported only when that command runs (so
``generate``, ``chat`` and ``serve`` start without importing Lightning)."""
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
"""LightningCLI's subcommands (:mod:`gpt2kit.lightning_cli`)."""
POSITIONAL = {"import-hf", "export-hf"}
"""Commands whose required arguments are positional (``import-hf HF_DIR OUT``)."""
OWN_PARSER = {"prepare", "ablate"}
"""Commands that parse their own arguments."""


def command(name: str) -> Callable[..., None]:
    """The function of a command of :data:`COMMANDS` (its module imported now)."""
    module, _, attr = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def lightning_main(*args: Any, **kwargs: Any) -> Any:
    """LightningCLI's entry point (:func:`gpt2kit.lightning_cli.lightning_main`), imported when called."""
    from gpt2kit.lightning_cli import lightning_main as run

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


def _list(args: Sequence[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(f"usage: python -m gpt2kit list [KIND] [PATTERN]\n\n{list_command.__doc__}\n")
        return
    flags = [a for a in args if a.startswith("-")]
    if flags or len(args) > 2:
        what = f"no option {flags[0]}" if flags else f"at most two arguments, not {len(args)}"
        raise GPT2KitError(
            f"list takes {what}: python -m gpt2kit list [KIND] [PATTERN], e.g. list attention '*window*'"
        )
    list_command(*args)


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
        if argv[0] == "list":
            _list(argv[1:])
        elif argv[0] in OWN_PARSER:
            command(argv[0])(argv[1:])
        else:
            _run_function(command(argv[0]), argv[1:], argv[0])
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
