"""GPT-2's weight initialisation, applied by the model to whatever components it was built from.

Linear and embedding weights are drawn from N(0, 0.02). A linear layer that writes into the residual
stream is marked with :func:`mark_residual`; GPT-2 scales its init by 1/sqrt(2 * n_layer), since each
block adds two such branches to the stream. The mark is an attribute of the module itself, so a
renamed or new variant keeps it (no matching on parameter names). A component may instead ask for its
output projections to start at zero (``mark_residual(linear, init="zero")``, modded-nanogpt): each
block then starts as the identity and the residual stream carries the embedding unchanged. A component
that needs something else defines ``init_weights(self)``, called after the defaults.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError

STD = 0.02


OutputInit = Literal["scaled", "zero"]
"""How a projection into the residual stream starts: GPT-2's N(0, 0.02 / sqrt(2 n_layer)), or zeros."""


def mark_residual(linear: nn.Linear, init: OutputInit = "scaled") -> nn.Linear:
    """Mark ``linear`` as a projection into the residual stream: scaled init, or zeros (``init="zero"``)."""
    if init not in ("scaled", "zero"):
        raise GPT2KitError(f"output_init={init!r} is not one of 'scaled' (GPT-2), 'zero' (modded-nanogpt)")
    linear.residual_projection = True
    if init == "zero":
        linear.zero_init = True
    return linear


def grow_rows(weight: Tensor, rows: int) -> nn.Parameter:
    """``weight`` with rows added at the end, drawn from N(0, 0.02) as GPT-2 initialises (new tokens)."""
    grown = torch.empty(rows, weight.size(1), device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        nn.init.normal_(grown, mean=0.0, std=STD)
        grown[: weight.size(0)] = weight
    return nn.Parameter(grown, requires_grad=weight.requires_grad)


def gpt2_init(model: nn.Module, n_layer: int) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            std = STD / math.sqrt(2 * n_layer) if getattr(module, "residual_projection", False) else STD
            if getattr(module, "zero_init", False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=STD)
    for module in model.modules():
        if module is not model and hasattr(module, "init_weights"):
            module.init_weights()
