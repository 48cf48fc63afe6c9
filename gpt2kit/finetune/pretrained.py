"""Starting a run from a checkpoint's weights (``model.init_from``), and what a checkpoint of it keeps.

Unlike ``--ckpt_path``, which resumes a run (optimizer and loop state included), ``init_from`` takes the
weights alone and training starts at step 0. The checkpoint file is read safely by
:mod:`gpt2kit.ckptfile`; tensors are checked by name and shape by :func:`gpt2kit.ckptfile.load_weights`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gpt2kit.ckptfile import adapters_only, load_weights, read_checkpoint, stored_tokenizer
from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.policies import FreezePolicy
from gpt2kit.tokenizers import Tokenizer

if TYPE_CHECKING:
    from gpt2kit.model import GPT


def load_pretrained(
    model: GPT, path: str, adapters: Collection[str] = frozenset(), tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer | None, bool]:
    """Load a gpt2kit checkpoint's model weights (not its optimizer state) into ``model``.

    Every tensor must match by name and shape, except ``adapters`` (parameters a fine-tuning policy
    added, which the checkpoint need not hold); anything else is refused in one line that lists the
    mismatched tensors.

    ``tokenizer`` is the one the model is to use (the data's), if known. When it is the checkpoint's
    tokenizer with special tokens added after its vocabulary (a chat template's), the model's vocabulary
    is larger than the checkpoint's: the checkpoint's rows of every vocabulary-sized tensor (the token
    embedding, a head's own weight) are loaded, and the new rows keep the model's initialisation, as
    after :meth:`GPT.resize_token_embeddings`.

    Returns the tokenizer the model now speaks (the checkpoint's, or ``tokenizer`` when the vocabulary
    grew; None if the checkpoint carries none) and whether the vocabulary grew.
    """
    ckpt = read_checkpoint(path)
    if adapters_only(ckpt):
        raise GPT2KitError(
            f"init_from {path} holds LoRA adapters only: start from its base checkpoint instead "
            "(or from a checkpoint saved without save_adapters_only)"
        )
    weights = {
        k.removeprefix("model."): v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")
    }
    if not weights:
        raise GPT2KitError(
            f"init_from {path} is not a gpt2kit checkpoint: its state_dict has no model weights"
        )
    arch = ckpt.get("hyper_parameters", {}).get("arch", {})
    sizes = ", ".join(f"{k}={v}" for k, v in arch.items() if k not in ("vocab_size", "dropout")) or "?"
    fix = f"make model.arch and the components match the checkpoint's ({sizes})"
    grow = tokenizer is not None and tokenizer.vocab_size == model.config.vocab_size
    if grow:
        weights = _grown(model, weights)
    load_weights(model, weights, source=f"init_from {path}", optional=adapters, fix=fix)
    saved = stored_tokenizer(ckpt)
    saved_tok = Tokenizer.from_dict(saved) if saved is not None else None
    if grow and saved_tok is not None and tokenizer.vocab_size > saved_tok.vocab_size:
        if added_special_tokens(tokenizer, saved_tok) is None:
            raise GPT2KitError(
                f"the data's tokenizer ({tokenizer!r}) is not the tokenizer of init_from {path} "
                f"({saved_tok!r}) with special tokens added: prepare the data with the checkpoint's tokenizer "
                "(CheckpointTokenizer with the same path)"
            )
        return tokenizer, True  # the checkpoint's vocabulary and the new tokens: the model's vocabulary now
    return saved_tok, False


def _grown(model: GPT, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weights`` with each vocabulary-sized tensor extended to the model's vocabulary by its own rows."""
    old, new = weights["wte.weight"].shape[0], model.config.vocab_size
    if old >= new:
        return weights
    own = model.state_dict()
    grown = dict(weights)
    for name, w in weights.items():
        mine = own.get(name)
        if mine is not None and w.shape[0] == old and mine.shape[0] == new and w.shape[1:] == mine.shape[1:]:
            grown[name] = torch.cat([w.to(mine.dtype), mine[old:]])  # checkpoint rows, then the new ones
    return grown


def added_special_tokens(new: Tokenizer, old: Tokenizer) -> list[str] | None:
    """The special tokens ``new`` adds to ``old`` (same ids for all of ``old``'s), or None if it is not
    ``old`` with special tokens appended."""
    added = [t for t in new.special_tokens if t not in old.special_tokens]
    extended = copy.deepcopy(old)
    try:
        extended.add_special_tokens(added)
    except GPT2KitError:
        return None
    return added if extended == new else None


def kept_state(
    policy: FreezePolicy, model: GPT, state: Mapping[str, Any], grown_vocab: bool
) -> dict[str, Any] | None:
    """What a checkpoint being saved keeps of the module's ``state`` (keys ``model.…``): None for all of
    it, else only what the policy stores (LoRA's save_adapters_only) plus, when the vocabulary grew, the
    new tokens' rows, which exist nowhere else."""
    keep = policy.checkpoint_parameters(model)
    if keep is None:
        return None
    keep = {f"model.{name}" for name in keep}
    if grown_vocab:
        vocab = model.config.vocab_size
        keep |= {k for k, v in state.items() if v.ndim and v.shape[0] == vocab}
    return {k: v for k, v in state.items() if k in keep}
