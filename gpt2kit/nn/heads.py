"""Output heads: what the model computes from the final hidden states."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn.init import grow_rows
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


def soft_cap(logits: Tensor, cap: float | None) -> Tensor:
    """``cap · tanh(logits / cap)``: logits squashed smoothly into (-cap, cap) (Gemma 2, modded-nanogpt)."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _check_cap(head: str, softcap: float | None) -> None:
    if softcap is not None and softcap <= 0:
        raise GPT2KitError(f"{head} softcap={softcap} must be > 0 (e.g. 15 or 30), or null for none")


@HEAD.register("tied_lm")
class TiedLMHead(Head):
    """Language-model head sharing its weight with the token embedding (GPT-2)."""

    def __init__(self, config: GPTConfig, softcap: float | None = None) -> None:
        """
        Args:
            softcap: soft-cap the logits to (-softcap, softcap) with ``softcap · tanh(logits / softcap)``
                (modded-nanogpt: 15-30); None: raw logits (GPT-2).
        """
        super().__init__(config)
        _check_cap("TiedLMHead", softcap)
        self.softcap = softcap

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        return soft_cap(F.linear(h, wte.weight), self.softcap)  # (B, T, vocab)


@HEAD.register("untied_lm")
class UntiedLMHead(Head):
    """Language-model head with its own weight (vocab_size × n_embd more parameters than tied)."""

    def __init__(self, config: GPTConfig, softcap: float | None = None) -> None:
        """
        Args:
            softcap: soft-cap the logits to (-softcap, softcap) with ``softcap · tanh(logits / softcap)``
                (modded-nanogpt: 15-30); None: raw logits.
        """
        super().__init__(config)
        _check_cap("UntiedLMHead", softcap)
        self.softcap = softcap
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        return soft_cap(self.lm_head(h), self.softcap)  # (B, T, vocab)

    def resize_vocab(self, vocab_size: int) -> None:
        old = self.lm_head.weight
        lm_head = nn.Linear(old.size(1), vocab_size, bias=False, device="meta")
        lm_head.weight = grow_rows(old, vocab_size)
        self.lm_head = lm_head


@HEAD.register("sequence_classification")
class SequenceClassificationHead(Head):
    """Classifies each sequence from the hidden state of its last non-padding token (like GPT-2 in HF).

    Returns logits (B, num_classes). With ``valid`` (B, T) the last True position of each row is
    pooled, so right, left or no padding all work; without it, the last position.
    """

    def __init__(self, config: GPTConfig, num_classes: int) -> None:
        """
        Args:
            num_classes: number of classes to predict.
        """
        super().__init__(config)
        if num_classes < 1:
            raise GPT2KitError(f"SequenceClassificationHead num_classes={num_classes} must be at least 1")
        self.score = nn.Linear(config.n_embd, num_classes, bias=False)

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        B, T, _ = h.shape
        if valid is None:
            last = torch.full((B,), T - 1, device=h.device)
        else:  # the index of each row's last True: argmax of position · valid (0 for an all-padding row)
            last = (torch.arange(T, device=h.device) * valid).argmax(dim=-1)  # (B,)
        pooled = h[torch.arange(B, device=h.device), last]  # (B, C)
        return self.score(pooled)  # (B, num_classes)
