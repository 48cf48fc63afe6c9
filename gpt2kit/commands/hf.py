"""``import-hf`` and ``export-hf``: Hugging Face GPT-2 folders (and ``hf:NAME`` hub models) in and out."""

from __future__ import annotations

import sys
from pathlib import Path

from gpt2kit.errors import GPT2KitError


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

    sys.stdout.write(f"wrote {import_hf(resolve_folder(hf_dir), out, tokenizer)}\n")


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
    sys.stdout.write(f"wrote {export_hf(ckpt, out_dir)}\n")
