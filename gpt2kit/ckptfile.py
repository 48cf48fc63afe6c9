"""Reading a gpt2kit checkpoint file safely: no code from the file runs, and what it holds is checked.

The file is read with ``torch.load(weights_only=True)``, which refuses pickled objects; what the
training layers need from it (the weights, the stored tokenizer and hyperparameters) is taken from the
plain data. This module knows no LightningModule: rebuilding a whole module is
:mod:`gpt2kit.checkpoint`'s job, starting a fine-tuning run from one is :mod:`gpt2kit.finetune`'s.
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The contents of a checkpoint file, read without running any code from it (``weights_only``).

    ``mmap``: map the tensors instead of reading them (cheap: to check a file before Lightning loads it).
    """
    path = Path(path)
    if not path.is_file():
        hint = (
            f"; checkpoints in it: {', '.join(p.name for p in sorted(path.glob('**/*.ckpt'))[:5])}"
            if path.is_dir()
            else ""
        )
        if str(path).startswith("hf:"):  # a hub name (gpt2kit.interop.hub), which only layers above resolve
            hint = (
                f": names like {path} are fetched by the command line; in Python, give "
                f"gpt2kit.interop.hub.resolve_checkpoint({str(path)!r}), the local checkpoint it imports"
            )
        raise GPT2KitError(f"checkpoint '{path}' does not exist{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and _is_zip(path))
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it names {named.group(1)})" if named else ""
        raise GPT2KitError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run "
            f"code when unpickled{what}"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise GPT2KitError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0][:160]}") from None


def module_hparams(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The hyperparameters that rebuild a checkpoint's module, after checking that it is a gpt2kit
    checkpoint and that every component class it names can be imported here."""
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise GPT2KitError(f"{path} is not a gpt2kit checkpoint (no state_dict / hyper_parameters)")
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "_instantiator"}
    for class_path in _class_paths(hparams):
        if not _importable(class_path):
            raise GPT2KitError(
                f"checkpoint needs {class_path}: install the plugin that provides it, or pass --plugins"
            )
    return hparams


def stored_tokenizer(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tokenizer a gpt2kit run stored in the checkpoint (its ``to_dict()``), or None."""
    return ckpt.get("gpt2kit", {}).get("tokenizer")


def adapters_only(ckpt: Mapping[str, Any]) -> bool:
    """Whether the checkpoint holds LoRA adapters alone (``save_adapters_only``), without base weights."""
    return bool(ckpt.get("gpt2kit", {}).get("adapters_only"))


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


def _is_zip(path: Path) -> bool:
    """Whether the file is in torch.save's zip format (the one that can be memory-mapped)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _class_paths(value: Any) -> Iterator[str]:
    """Every ``class_path`` in a nested config."""
    if isinstance(value, Mapping):
        if isinstance(value.get("class_path"), str):
            yield value["class_path"]
        for v in value.values():
            yield from _class_paths(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _class_paths(v)


def _importable(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    if not module:
        return True  # a short class name: the parser resolves it (and says so if it cannot)
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False
