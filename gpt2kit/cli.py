"""``python -m gpt2kit``: LightningCLI (fit / validate / test / predict) plus gpt2kit's own commands.

    python -m gpt2kit fit --config recipes/pretrain/shakespeare-char.yaml
    python -m gpt2kit generate --ckpt runs/shakespeare-char/.../last.ckpt --prompt "ROMEO:"
    python -m gpt2kit list [KIND] [PATTERN]

Plugins (``gpt2kit.plugins`` entry points, ``--plugins MOD[,MOD]``, ``GPT2KIT_PLUGINS``) are imported
before the command line is parsed, so their components can be named in a recipe.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import kinds, list_components, load_plugins, registry

log = logging.getLogger("gpt2kit")


def _readable(message: str) -> str:
    """Turn jsonargparse's nested report into one line; name registered alternatives for a bad component."""
    key = re.search(r'Parser key "([\w.]+)"', message)
    bad = re.search(r"(?:dot import path string|import|class path)[^:]*: '?([\w.]+)'?", message)
    slot = key.group(1).split(".")[-1] if key else ""
    if key and bad and slot in kinds():
        try:
            registry(slot).entry(bad.group(1))
        except GPT2KitError as exc:
            return f"{key.group(1)}: {exc}"
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    return "; ".join(dict.fromkeys(lines)).replace(":; ", ": ")


class GPT2KitArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with errors on one line (plus a pointer to --help)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        cause = ex
        while cause is not None and not isinstance(cause, GPT2KitError):
            cause = cause.__cause__ or cause.__context__
        text = str(cause) if cause is not None else _readable(message)
        sys.stderr.write(
            f"error: {text}\n(run `python -m gpt2kit {' '.join(sys.argv[1:2])} --help` for the options)\n"
        )
        sys.exit(2)


class GPT2KitCLI(LightningCLI):
    """LightningCLI wired for gpt2kit: the data decides vocab_size, the model decides block_size.

    The Trainer's hardware flags are checked first (one-line errors, :mod:`gpt2kit.hardware`), and its
    checkpoints are written atomically (:class:`gpt2kit.resume.AtomicCheckpointIO`) unless the recipe
    brings its own CheckpointIO.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.arch.block_size", "data.init_args.block_size")
        parser.link_arguments("data", "model.arch.vocab_size", compute_fn=_vocab_size, apply_on="instantiate")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.pytorch.plugins.io import CheckpointIO

        from gpt2kit.hardware import check_trainer_flags
        from gpt2kit.resume import AtomicCheckpointIO

        check_trainer_flags(
            *(config.get(k, "auto") for k in ("accelerator", "devices", "strategy")), config.get("precision")
        )
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except GPT2KitError:
            raise
        except (MisconfigurationException, ValueError) as exc:  # Lightning's own checks, on one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GPT2KitError(f"trainer settings: {first}") from None


def _vocab_size(data: Any) -> int:
    return data.vocab_size


def lightning_main(args: Sequence[str] | None = None, run: bool = True) -> GPT2KitCLI:
    from gpt2kit.data import TextDataModule
    from gpt2kit.lit import GPTLitModule

    return GPT2KitCLI(
        GPTLitModule,
        TextDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_class=GPT2KitArgumentParser,
    )


# --- gpt2kit's own subcommands ----------------------------------------------------------------------------


def list_command(kind: str | None = None, pattern: str = "*") -> None:
    """Print the registered components (optionally one kind, names matching a wildcard pattern)."""
    rows = [
        (e.kind, e.name, e.cls.__name__, e.source, e.summary)
        for entries in list_components(kind, pattern).values()
        for e in entries
    ]
    if not rows:
        print(f"no {kind or 'component'} matches '{pattern}'")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    current = None
    for r in rows:
        if r[0] != current:
            current = r[0]
            print(f"\n{current}:")
        print(f"  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}")


def generate_command(
    ckpt: str,
    prompt: str = "",
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "cpu",
) -> None:
    """Sample text from a checkpoint, printing tokens as they are generated.

    Args:
        ckpt: path to a gpt2kit checkpoint (.ckpt).
        prompt: text to continue; empty starts from the end-of-text token.
        num_samples: number of independent samples.
        max_new_tokens: tokens to generate per sample.
        temperature: softmax temperature; 0 is greedy.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling threshold in (0, 1] (None: off).
        seed: seed for reproducible samples.
        device: torch device to run on (cpu, cuda, mps).
    """
    import torch

    from gpt2kit.checkpoint import load_module
    from gpt2kit.generate import SamplingConfig, stream

    cfg = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed)
    module = load_module(ckpt, map_location=device)
    tok = module.tokenizer
    if tok is None:
        raise GPT2KitError(
            f"checkpoint {ckpt} carries no tokenizer: it was not saved by a gpt2kit training run"
        )
    if prompt:
        ids = tok.encode(prompt)
    elif tok.eot_id is not None:
        ids = [tok.eot_id]
    else:
        ids = tok.encode("\n")
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1} ---")
        if seed is not None:
            cfg.seed = seed + i
        x = torch.tensor([ids], device=device)
        sys.stdout.write(prompt)
        tokens = (int(t) for t in stream(module.model, x, cfg))
        for piece in tok.decode_stream(tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def _run_function(fn: Callable[..., None], args: Sequence[str], prog: str) -> None:
    parser = ArgumentParser(prog=f"python -m gpt2kit {prog}", description=(fn.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(fn, as_group=False)
    cfg = parser.parse_args(list(args))
    fn(**{k: v for k, v in cfg.as_dict().items() if not k.startswith("__")})


COMMANDS: dict[str, Callable[..., None]] = {"list": list_command, "generate": generate_command}


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


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        load_plugins(_pop_plugins(argv))
        if argv and argv[0] in COMMANDS:
            if argv[0] == "list":
                list_command(*argv[1:3])
            else:
                _run_function(COMMANDS[argv[0]], argv[1:], argv[0])
        else:
            sys.argv = [sys.argv[0], *argv]
            lightning_main()
    except GPT2KitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)
