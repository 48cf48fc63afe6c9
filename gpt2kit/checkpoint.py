"""Loading gpt2kit checkpoints: weights, the resolved model config and the tokenizer, in one file.

Loading never runs code from the file: it is read with ``torch.load(weights_only=True)``, which
refuses pickled objects, and the model is rebuilt from the stored config through the same typed
parser the CLI uses.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.lit import GPTLitModule


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint file, read without running any code from it (``weights_only``)."""
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
    load_weights(module, ckpt["state_dict"], source=str(path))
    return module.to(map_location).eval()


def load_weights(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    optional: Collection[str] = (),
    fix: str = "use the model settings it was saved with",
) -> None:
    """Copy ``state`` into ``module``, refusing (with the list) tensors whose names or shapes don't fit.

    ``optional`` names the module's tensors that ``state`` may lack (adapters a fine-tuning policy
    added); they keep their values. ``fix`` ends the error message.
    """
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("shape mismatch (file vs model)", wrong),
                ("missing", missing),
                ("unexpected", unexpected),
            )
            if keys
        ]
        raise GPT2KitError(
            f"the weights in {source} do not fit this model ({len(wrong)} mismatched, {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; {'; '.join(parts)}): {fix}"
        )
    module.load_state_dict(state, strict=not optional)


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
