"""LoRA: low-rank adapters on chosen linear layers of a GPT; the base weights stay frozen."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.policies import FREEZE, FreezePolicy

if TYPE_CHECKING:
    from gpt2kit.model import GPT


class LoRALinear(nn.Linear):
    """A linear layer plus a low-rank update: ``y = x Wᵀ + b + (alpha / rank) · dropout(x) Aᵀ Bᵀ``.

    It keeps the wrapped layer's ``weight`` and ``bias`` (same tensors, same names), so a base
    checkpoint loads into it unchanged; ``lora_A`` (rank, in) and ``lora_B`` (out, rank) are new. B
    starts at zero, so until it trains the layer computes exactly what the base layer does.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse the base weights, allocate nothing
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        if getattr(base, "residual_projection", False):
            self.residual_projection = True
        self.rank = rank
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the update folded in: ``W + (alpha / rank) · B A``."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        if getattr(self, "residual_projection", False):
            linear.residual_projection = True
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


@FREEZE.register("lora")
class LoRA(FreezePolicy):
    """Low-rank adapters on the linear layers whose names match ``targets``; only the adapters train."""

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: list[str] | None = None,
        save_adapters_only: bool = False,
    ) -> None:
        """
        Args:
            rank: rank r of each update B A.
            alpha: the update is scaled by alpha / rank.
            dropout: dropout on the adapter's input.
            targets: regular expressions searched in linear layers' names, such as
                ``blocks.0.attn.c_attn`` or ``blocks.3.mlp.c_fc``; each must match one at least.
                Default: the attention's q/k/v projection, ``["attn.c_attn"]``.
            save_adapters_only: checkpoints store the adapters alone (kilobytes); loading one rebuilds
                the model from ``model.init_from`` and adds them.
        """
        if rank < 1:
            raise GPT2KitError(f"LoRA rank={rank} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise GPT2KitError(f"LoRA dropout={dropout} must be in [0, 1)")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = list(targets) if targets is not None else ["attn.c_attn"]
        self.save_adapters_only = save_adapters_only

    def setup(self, model: GPT) -> None:
        linears = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
        ]
        chosen: dict[str, nn.Linear] = {}
        for pattern in self.targets:
            try:
                found = {name: m for name, m in linears if re.search(pattern, name)}
            except re.error as exc:
                raise GPT2KitError(f"LoRA target {pattern!r} is not a regular expression: {exc}") from None
            if not found:
                raise GPT2KitError(
                    f"LoRA target {pattern!r} matches no linear layer; they are named like "
                    f"{', '.join(name for name, _ in linears[:4])}, ..."
                )
            chosen.update(found)
        for name, linear in chosen.items():
            _replace(model, name, LoRALinear(linear, self.rank, self.alpha, self.dropout))
        super().setup(model)

    def lr_scales(self, model: GPT) -> dict[str, float]:
        return dict.fromkeys(sorted(self.added_parameters(model)), 1.0)

    def added_parameters(self, model: GPT) -> set[str]:
        return {
            f"{name}.{p}"
            for name, m in model.named_modules()
            if isinstance(m, LoRALinear)
            for p in ("lora_A", "lora_B")
        }

    def checkpoint_parameters(self, model: GPT) -> set[str] | None:
        return self.added_parameters(model) if self.save_adapters_only else None

    @staticmethod
    def merge(model: nn.Module) -> int:
        """Fold every adapter into its layer's weight, in place (for export); returns how many."""
        names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
        for name in names:
            _replace(model, name, model.get_submodule(name).merged())
        return len(names)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
