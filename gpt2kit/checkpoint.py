"""Whole modules in and out of checkpoint files: weights, the resolved model config and the tokenizer.

Loading never runs code from the file (:mod:`gpt2kit.ckptfile` reads it with ``weights_only``), and
the model is rebuilt from the stored config through the same typed parser the CLI uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpt2kit.ckptfile import load_weights, module_hparams, read_checkpoint
from gpt2kit.training.lit import GPTLitModule

__all__ = ["load_module", "load_weights", "read_checkpoint", "save_checkpoint"]


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> GPTLitModule:
    """Rebuild the trained :class:`GPTLitModule` (model + tokenizer) from a checkpoint file."""
    from lightning.pytorch.cli import instantiate_module

    ckpt = read_checkpoint(path)
    module = instantiate_module(GPTLitModule, module_hparams(ckpt, path))
    module.on_load_checkpoint(ckpt)  # first, as Lightning does: it may complete an adapters-only state
    load_weights(module, ckpt["state_dict"], source=str(path))
    return module.to(map_location).eval()


def save_checkpoint(module: GPTLitModule, path: str | Path) -> Path:
    """Write ``module`` as a checkpoint that ``load_module`` and Lightning's ``--ckpt_path`` accept.

    It has what a Lightning checkpoint of this module has (weights, hyperparameters, tokenizer) but
    no optimizer or loop state: a start for fine-tuning (``model.init_from``), not a run to resume.
    """
    import lightning

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path
