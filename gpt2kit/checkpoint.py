"""Loading gpt2kit checkpoints: weights, the resolved model config and the tokenizer, in one file.

Loading never runs code from the file: it is read with ``torch.load(weights_only=True)``, which
refuses pickled objects, and the model is rebuilt from the stored config through the same typed
parser the CLI uses.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gpt2kit.errors import GPT2KitError
from gpt2kit.lit import GPTLitModule


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        hint = (
            f"; checkpoints in it: {', '.join(p.name for p in sorted(path.glob('**/*.ckpt'))[:5])}"
            if path.is_dir()
            else ""
        )
        raise GPT2KitError(f"checkpoint '{path}' does not exist{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GPT2KitError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run "
            f"code when unpickled ({str(exc).splitlines()[0][:120]})"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise GPT2KitError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0][:160]}") from None


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> GPTLitModule:
    """Rebuild the trained :class:`GPTLitModule` (model + tokenizer) from a checkpoint file."""
    from lightning.pytorch.cli import instantiate_module

    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise GPT2KitError(f"{path} is not a gpt2kit checkpoint (no state_dict / hyper_parameters)")
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "_instantiator"}
    module = instantiate_module(GPTLitModule, hparams)
    module.on_load_checkpoint(ckpt)  # first, as Lightning does: it may complete an adapters-only state
    module.load_state_dict(ckpt["state_dict"])
    return module.to(map_location).eval()
