"""The transformer block: pre-norm attention and MLP, each added to the residual stream."""

from __future__ import annotations

from torch import Tensor, nn

from gpt2kit.nn.attention import Attention, KVCache
from gpt2kit.nn.mlp import MLP
from gpt2kit.nn.norm import Norm
from gpt2kit.nn.position import PositionEncoding


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); the parts are passed in, already built."""

    def __init__(self, attn: Attention, mlp: MLP, ln_1: Norm, ln_2: Norm) -> None:
        super().__init__()
        self.ln_1 = ln_1
        self.attn = attn
        self.ln_2 = ln_2
        self.mlp = mlp

    def forward(
        self,
        x: Tensor,
        position: PositionEncoding,
        pos: Tensor,
        cache: KVCache | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), position, pos, cache, valid)
        return x + self.mlp(self.ln_2(x))
