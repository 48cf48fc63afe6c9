"""The ReLU² MLP for gpt2kit: Linear(C, 4C) → ReLU(x)² → Linear(4C, C).

Installed (``pip install ./plugins/relu2``), gpt2kit imports this module through its ``gpt2kit.plugins``
entry point; uninstalled, name it with ``--plugins gpt2kit_relu2`` (its folder on ``PYTHONPATH``). Then::

    model:
      mlp: ReLUSquaredMLP                 # or class_path: gpt2kit_relu2.ReLUSquaredMLP
"""

from __future__ import annotations

import torch.nn.functional as F
from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn import MLP, mark_residual
from gpt2kit.registry import register
from torch import Tensor, nn

__all__ = ["ReLUSquaredMLP"]


@register("mlp", "relu_squared")
class ReLUSquaredMLP(MLP):
    """Linear(C, 4C) → ReLU(x)² → Linear(4C, C): squared ReLU (Primer, So et al., 2021; modded-nanogpt).

    As cheap as GPT-2's GELU MLP (same two matrices, no exp or tanh), and in Primer's search it trained
    faster than GELU and SwiGLU at equal compute.
    """

    def __init__(self, config: GPTConfig, expansion: int = 4) -> None:
        """
        Args:
            expansion: hidden width as a multiple of n_embd (GPT-2: 4).
        """
        super().__init__(config)
        if expansion <= 0:
            raise GPT2KitError(f"ReLUSquaredMLP expansion={expansion} must be a positive integer (usually 4)")
        hidden = expansion * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        # Writes into the residual stream: the model gives it GPT-2's scaled init (the mark, not its name).
        self.c_proj = mark_residual(nn.Linear(hidden, config.n_embd, bias=config.bias))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c_fc(x)).square()  # (B, T, expansion·C)
        return self.dropout(self.c_proj(h))  # (B, T, C)
