"""Position encodings.

An encoding can act in three places, and implements only those it needs:

* ``embed(x, pos)`` on the token embeddings before the first block (learned, sinusoidal);
* ``rotate(t, pos)`` on queries and keys inside every attention layer (RoPE);
* ``bias(q_pos, k_pos)`` as an additive attention bias (ALiBi).

Attention variants call all three hooks through the same interface, so every encoding composes with
every attention variant without branching on names. ``pos`` holds absolute positions, shape (B, T)
or (1, T).
"""

from __future__ import annotations

from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.registry import add_kind


class PositionEncoding(nn.Module):
    """Base class: the identity in all three places (i.e. no position information, NoPE)."""

    max_positions: int | None = None
    """The largest position + 1 this encoding can represent; None means unbounded."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """Return the token embeddings ``x`` (B, T, C) with position information added."""
        return x

    def rotate(self, t: Tensor, pos: Tensor) -> Tensor:
        """Return queries or keys ``t`` (B, h, T, hs) transformed by position."""
        return t

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive attention bias (B or 1, n_head, Tq, Tk), or None for no bias."""
        return None


POSITION = add_kind("position", PositionEncoding)


@POSITION.register("learned")
class LearnedPosition(PositionEncoding):
    """GPT-2's learned absolute position table, added to the token embeddings."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.max_positions = config.block_size
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return x + self.wpe(pos)  # (B|1, T, C) broadcasts over the batch


@POSITION.register("none")
class NoPosition(PositionEncoding):
    """No position encoding (NoPE): causal masking alone tells tokens apart."""
