"""Feed-forward sub-layers (the MLP of each block)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn.init import OutputInit, mark_residual
from gpt2kit.registry import add_kind


class MLP(nn.Module):
    """Base class: maps (B, T, C) to (B, T, C), position by position."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()


MLP_KIND = add_kind("mlp", MLP)


class TwoLayerMLP(MLP):
    """Linear(C, expansion·C) → activation → Linear(expansion·C, C); subclasses choose the activation."""

    def __init__(self, config: GPTConfig, expansion: int = 4, output_init: OutputInit = "scaled") -> None:
        """
        Args:
            expansion: hidden width as a multiple of n_embd (GPT-2: 4).
            output_init: how the output projection starts: "scaled" (GPT-2's N(0, 0.02 / sqrt(2 n_layer)))
                or "zero" (the block starts as the identity; modded-nanogpt).
        """
        super().__init__(config)
        if expansion <= 0:
            raise GPT2KitError(
                f"{type(self).__name__} expansion={expansion} must be a positive integer (usually 4)"
            )
        hidden = expansion * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = mark_residual(nn.Linear(hidden, config.n_embd, bias=config.bias), output_init)
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


@MLP_KIND.register("gelu")
class GeluMLP(TwoLayerMLP):
    """GPT-2's MLP: Linear(C, 4C) → GELU (tanh approximation, one fused kernel) → Linear(4C, C)."""

    def activation(self, h: Tensor) -> Tensor:
        return F.gelu(h, approximate="tanh")


@MLP_KIND.register("gelu_exact")
class ExactGeluMLP(TwoLayerMLP):
    """nanoGPT's and BERT's MLP: Linear(C, 4C) → GELU (exact, with erf) → Linear(4C, C).

    The same shape as :class:`GeluMLP`; the activation differs from GPT-2's tanh approximation by at
    most ~5e-4. On CPUs torch's erf kernel is the cheaper one: forward and backward of the baby GPT's
    (12, 64, 512) activations take 0.93 ms against 1.74 ms with AVX-512 and 0.95 ms against 2.7 ms
    with AVX2 (one thread), so a 4-layer CPU step is 3-7 ms shorter (benchmarks/results/nanogpt-step-cpu.md).
    """

    def activation(self, h: Tensor) -> Tensor:
        return F.gelu(h)


@MLP_KIND.register("relu")
class ReluMLP(TwoLayerMLP):
    """Linear(C, 4C) → ReLU → Linear(4C, C): the original Transformer's feed-forward layer."""

    def activation(self, h: Tensor) -> Tensor:
        return F.relu(h)


@MLP_KIND.register("relu2")
class ReLU2MLP(TwoLayerMLP):
    """Linear(C, 4C) → ReLU(x)² → Linear(4C, C): squared ReLU (Primer, So et al., 2021; modded-nanogpt).

    As cheap as GPT-2's GELU MLP (same two matrices, no exp or tanh); in Primer's search it trained
    faster than GELU at equal compute. (plugins/relu2 is the same idea written as a third-party plugin.)
    """

    def activation(self, h: Tensor) -> Tensor:
        return F.relu(h).square()


def swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """SwiGLU's customary hidden width: 8/3 · n_embd (as many parameters as a 4·C GELU MLP, since it
    has three matrices instead of two), rounded up to a multiple of ``multiple_of`` for fast matmuls.
    E.g. 768 → 2048, 64 → 192, 32 → 128."""
    return multiple_of * math.ceil(8 * n_embd / (3 * multiple_of))


@MLP_KIND.register("swiglu")
class SwiGLUMLP(MLP):
    """SwiGLU (Shazeer, 2020; Llama): Linear(H, C)(silu(x W_gate) ⊙ x W_up), H ≈ 8/3 · C.

    The gate and up projections are one fused Linear(C, 2H); see :func:`swiglu_hidden` for H.
    """

    def __init__(self, config: GPTConfig, hidden: int | None = None, multiple_of: int = 64) -> None:
        """
        Args:
            hidden: hidden width H; None: 8/3 · n_embd rounded up to a multiple of ``multiple_of``.
            multiple_of: rounding of the default hidden width (Llama uses 256 at scale).
        """
        super().__init__(config)
        if multiple_of <= 0 or (hidden is not None and hidden <= 0):
            raise GPT2KitError(
                f"SwiGLUMLP needs positive sizes, got hidden={hidden}, multiple_of={multiple_of}: "
                "leave hidden unset for 8/3 · n_embd"
            )
        self.hidden = hidden or swiglu_hidden(config.n_embd, multiple_of)
        self.c_fc = nn.Linear(config.n_embd, 2 * self.hidden, bias=config.bias)  # gate and up, fused
        self.c_proj = mark_residual(nn.Linear(self.hidden, config.n_embd, bias=config.bias))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.dropout(self.c_proj(F.silu(gate) * up))
