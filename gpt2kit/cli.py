"""``python -m gpt2kit``: LightningCLI (fit / validate / test / predict) plus gpt2kit's own commands.

    python -m gpt2kit fit --config recipes/pretrain/shakespeare-char.yaml
    python -m gpt2kit prepare --config recipes/pretrain/gutenberg-gpt2.yaml   # the data alone
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


def _user_error(exc: BaseException | None) -> GPT2KitError | None:
    """The GPT2KitError behind ``exc``, if any (jsonargparse wraps errors raised while instantiating)."""
    while exc is not None and not isinstance(exc, GPT2KitError):
        exc = exc.__cause__ or exc.__context__
    return exc


class GPT2KitArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with errors on one line (plus a pointer to --help)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        cause = _user_error(ex)
        text = str(cause) if cause is not None else _readable(message)
        sys.stderr.write(
            f"error: {text}\n(run `python -m gpt2kit {' '.join(sys.argv[1:2])} --help` for the options)\n"
        )
        sys.exit(2)


class GPT2KitCLI(LightningCLI):
    """LightningCLI wired for gpt2kit: the data decides vocab_size, the model decides block_size."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.arch.block_size", "data.init_args.block_size")
        parser.link_arguments("data", "model.arch.vocab_size", compute_fn=_vocab_size, apply_on="instantiate")


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
        ids = tok.encode(prompt, allowed_special="all")  # a prompt may hold special tokens on purpose
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


def prepare_command(args: Sequence[str]) -> None:
    """Prepare a recipe's data (tokenizer training, token shards) without training, with a progress bar.

    Only the recipe's ``data:`` section is read; its other sections are accepted and ignored, and
    ``--data.*`` overrides work as for ``fit``.
    """
    import argparse

    from jsonargparse import ActionConfigFile
    from lightning import LightningDataModule

    from gpt2kit.data import TextDataModule

    parser = GPT2KitArgumentParser(prog="python -m gpt2kit prepare", description=prepare_command.__doc__)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a recipe; its data: section is used")
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=True)
    for section in ("seed_everything", "trainer", "model", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{section}", type=Any, default=None, help=argparse.SUPPRESS)
    cfg = parser.parse_args(list(args))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    data = instantiate(cfg).data
    if not isinstance(data, TextDataModule):
        data.prepare_data()
        return
    prepared = data.prepared(progress=True)
    meta = prepared.meta
    print(
        f"{prepared.path}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}, "
        f"{meta['val_bytes'] / meta['val_tokens']:.2f} bytes per token, split: {meta['split']})"
    )


def _run_function(fn: Callable[..., None], args: Sequence[str], prog: str) -> None:
    parser = ArgumentParser(prog=f"python -m gpt2kit {prog}", description=(fn.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(fn, as_group=False)
    cfg = parser.parse_args(list(args))
    fn(**{k: v for k, v in cfg.as_dict().items() if not k.startswith("__")})


COMMANDS: dict[str, Callable[..., None]] = {
    "list": list_command,
    "generate": generate_command,
    "prepare": prepare_command,
}


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
            elif argv[0] == "prepare":
                prepare_command(argv[1:])
            else:
                _run_function(COMMANDS[argv[0]], argv[1:], argv[0])
        else:
            sys.argv = [sys.argv[0], *argv]
            lightning_main()
    except Exception as exc:
        if (cause := _user_error(exc)) is None:
            raise
        sys.stderr.write(f"error: {cause}\n")
        sys.exit(1)
