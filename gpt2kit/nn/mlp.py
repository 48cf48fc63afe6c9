"""Feed-forward sub-layers (the MLP of each block)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.nn.init import mark_residual
from gpt2kit.registry import add_kind


class MLP(nn.Module):
    """Base class: maps (B, T, C) to (B, T, C), position by position."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()


MLP_KIND = add_kind("mlp", MLP)


@MLP_KIND.register("gelu")
class GeluMLP(MLP):
    """GPT-2's MLP: Linear(C, 4C) → GELU (tanh approximation, one fused kernel) → Linear(4C, C)."""

    def __init__(self, config: GPTConfig, expansion: int = 4) -> None:
        """
        Args:
            expansion: hidden width as a multiple of n_embd (GPT-2: 4).
        """
        super().__init__(config)
        hidden = expansion * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = mark_residual(nn.Linear(hidden, config.n_embd, bias=config.bias))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))
