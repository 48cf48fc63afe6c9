"""``python -m gpt2kit prepare --config RECIPE``: a recipe's data prepared (tokenizer, shards), no training."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gpt2kit.training.cli import GPT2KitArgumentParser


def prepare_main(args: Sequence[str]) -> None:
    """Prepare a recipe's data (tokenizer training, token shards) without training, with a progress bar.

    Only the recipe's ``data:`` section is read; its other sections are accepted and ignored, and
    ``--data.*`` overrides work as for ``fit``.
    """
    from jsonargparse import ActionConfigFile
    from lightning import LightningDataModule

    from gpt2kit.data import TextDataModule

    parser = GPT2KitArgumentParser(prog="python -m gpt2kit prepare", description=prepare_main.__doc__)
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
    sys.stdout.write(
        f"{prepared.path}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}, "
        f"{meta['val_bytes'] / meta['val_tokens']:.2f} bytes per token, split: {meta['split']})\n"
    )
