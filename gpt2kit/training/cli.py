"""The recipe parser: LightningCLI wired for gpt2kit (fit / validate / test / predict).

:class:`GPT2KitCLI` turns a recipe into a Trainer, a GPTLitModule and a DataModule -- component specs
into factories, type-checked by jsonargparse -- and runs the subcommand. :func:`recipe_parser` is its
parser alone, for callers that resolve recipes without running them (ablation studies).
:mod:`gpt2kit.commands` dispatches to :func:`lightning_main`; errors are turned into one line there.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from gpt2kit.ckptfile import read_checkpoint
from gpt2kit.errors import GPT2KitError
from gpt2kit.names import RegistryNames
from gpt2kit.parsing import OneLineErrors, program_args

__all__ = ["GPT2KitArgumentParser", "GPT2KitCLI", "lightning_main", "recipe_parser"]

_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
"""Values of ``--ckpt_path`` that Lightning resolves itself."""


class GPT2KitArgumentParser(RegistryNames, OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser with errors on one line (plus a pointer to --help), and did-you-mean;
    components take registered names too (:mod:`gpt2kit.names`)."""


class GPT2KitCLI(LightningCLI):
    """LightningCLI wired for gpt2kit: the data decides vocab_size, the model decides block_size.

    The Trainer's hardware flags are checked first (one-line errors, :mod:`gpt2kit.training.hardware`), and its
    checkpoints are written atomically (:class:`gpt2kit.training.resume.AtomicCheckpointIO`) unless the recipe
    brings its own CheckpointIO. A ``--ckpt_path`` file is checked (it exists, and holds only tensors and
    plain data) before anything is built or written. A step-based run's progress bar counts steps
    (:func:`gpt2kit.training.callbacks.step_progress_bar`) unless the recipe brings its own.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.arch.block_size", "data.init_args.block_size")
        # Only data that has a tokenizer decides vocab_size: prompts for `predict` keep the checkpoint's.
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """``hf:NAME`` in ``model.init_from`` and a CheckpointTokenizer's ``path``: the imported checkpoint."""
        from gpt2kit.interop.hub import is_hub_name, resolve_checkpoint

        config = self.config[self.subcommand] if self.subcommand else self.config
        if not isinstance(config, Namespace):  # recipe_parser(): nothing parsed
            return
        for key, value in config.items(branches=False):
            if key.split(".")[-1] in ("init_from", "path") and is_hub_name(value):
                config[key] = resolve_checkpoint(value)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check a ``--ckpt_path`` file (before LightningCLI reads its hyperparameters)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and str(path) not in _SPECIAL_CKPT_PATHS and ":" not in str(path):
            read_checkpoint(path, mmap=True)  # missing, unreadable or unsafe: one line, nothing written yet

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The recipe's Trainer, its hardware flags checked, with atomic checkpoints and a step progress bar
        unless the recipe brings its own (given to LightningCLI as custom trainer arguments)."""
        from lightning.pytorch.callbacks import ProgressBar
        from lightning.pytorch.plugins.io import CheckpointIO

        from gpt2kit.training.callbacks import step_progress_bar
        from gpt2kit.training.hardware import check_trainer_flags
        from gpt2kit.training.resume import AtomicCheckpointIO

        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = {**(init.get("trainer") or {}), **kwargs}
        check_trainer_flags(
            *(config.get(k, "auto") for k in ("accelerator", "devices", "strategy")), config.get("precision")
        )
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, step_progress_bar()]
        try:
            return super().instantiate_trainer(**kwargs)
        except GPT2KitError:
            raise
        except (MisconfigurationException, ValueError) as exc:  # Lightning's own checks, on one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GPT2KitError(f"trainer settings: {first}") from None


def _import_recipe_classes() -> None:
    """Import the classes recipes name by their short names (jsonargparse finds them among the imported
    subclasses). ``gpt2kit.data`` imports its DataModules only when asked for them, so they are asked for."""
    from gpt2kit.data import ChatDataModule, PromptDataModule, TextDataModule  # noqa: F401
    from gpt2kit.training.callbacks import JSONLWriter  # noqa: F401


def lightning_main(args: Sequence[str] | None = None, run: bool = True) -> GPT2KitCLI:
    """Run LightningCLI on ``args`` (default: ``sys.argv``): ``fit --config RECIPE ...`` and the like."""
    import lightning as L

    from gpt2kit.training.lit import GPTLitModule

    _import_recipe_classes()
    return GPT2KitCLI(
        GPTLitModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_class=GPT2KitArgumentParser,
    )


class _ParserOnly(GPT2KitCLI):
    """Builds the parser with every subcommand, then stops: nothing is parsed or instantiated."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = {"subcommand": None, "seed_everything": False}  # no subcommand, no seeding

    def instantiate_classes(self) -> None:
        pass


@functools.cache
def recipe_parser() -> LightningArgumentParser:
    """The CLI's parser (``fit`` and the other subcommands), built once, that raises instead of exiting.

    ``recipe_parser().parse_args(["fit", "--config", RECIPE, ...])`` resolves a recipe with the same
    types, defaults and links as ``python -m gpt2kit fit``, without building anything.
    """
    import lightning as L

    from gpt2kit.training.lit import GPTLitModule

    _import_recipe_classes()
    with program_args():
        cli = _ParserOnly(
            GPTLitModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=[],
            run=True,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
            load_from_checkpoint_support=False,
            parser_class=GPT2KitArgumentParser,
        )
    return cli.parser
