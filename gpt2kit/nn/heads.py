"""Output heads: what the model computes from the final hidden states."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.registry import add_kind


class Head(nn.Module):
    """Base class: ``forward(h, wte, valid)`` maps hidden states (B, T, C) to outputs.

    ``wte`` is the model's token embedding (for weight tying); ``valid`` (B, T) is False on padding.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def resize_vocab(self, vocab_size: int) -> None:
        """Follow a resized token embedding (new tokens added); a head with its own vocab-sized weight
        keeps its rows and initialises the new ones. Heads that read ``wte`` need nothing."""


HEAD = add_kind("head", Head)


@HEAD.register("tied_lm")
class TiedLMHead(Head):
    """Language-model head sharing its weight with the token embedding (GPT-2)."""

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        return F.linear(h, wte.weight)  # (B, T, vocab)
