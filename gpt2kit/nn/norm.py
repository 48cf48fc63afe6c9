"""Normalisation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.registry import add_kind


class Norm(nn.Module):
    """Base class: normalises the last dimension (width ``n_embd``)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()


NORM = add_kind("norm", Norm)


@NORM.register("layernorm")
class LayerNorm(Norm):
    """LayerNorm (GPT-2), with an optional bias."""

    def __init__(self, config: GPTConfig, bias: bool = True, eps: float = 1e-5) -> None:
        """
        Args:
            bias: learn an additive bias (GPT-2: True).
            eps: added to the variance for numerical stability.
        """
        super().__init__(config)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@NORM.register("rmsnorm")
class RMSNorm(Norm):
    """RMSNorm (Zhang & Sennrich, 2019): x / rms(x) · weight, no mean subtraction and no bias."""

    def __init__(self, config: GPTConfig, eps: float = 1e-5) -> None:
        """
        Args:
            eps: added to the mean square for numerical stability.
        """
        super().__init__(config)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
