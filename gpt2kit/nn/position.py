"""Position encodings.

An encoding can act in three places, and implements only those it needs:

* ``embed(x, pos)`` on the token embeddings before the first block (learned, sinusoidal);
* ``rotate(t, pos)`` on queries and keys inside every attention layer (RoPE);
* ``bias(q_pos, k_pos)`` as an additive attention bias (ALiBi).

Attention variants call all three hooks through the same interface, so every encoding composes with
every attention variant without branching on names. ``pos`` holds absolute positions, shape (B, T)
or (1, T). An encoding that returns a bias says so with ``produces_bias = True``; the model refuses
to pair it with an attention whose ``supports_bias`` is False (see ``Attention.check_position``).
Every encoding here is a function of positions alone, so decoding through a KV cache sees exactly
what a full forward pass sees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind


class PositionEncoding(nn.Module):
    """Base class: the identity in all three places (i.e. no position information, NoPE)."""

    max_positions: int | None = None
    """The largest position + 1 this encoding can represent; None means unbounded."""

    produces_bias: bool = False
    """Whether ``bias`` returns a tensor (so the attention must be able to add one)."""

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


@POSITION.register("sinusoidal")
class SinusoidalPosition(PositionEncoding):
    """Fixed sinusoids added to the token embeddings (Vaswani et al., 2017); no parameters, no limit.

    ``PE[p, 2i] = scale · sin(p / base^(2i/C))`` and ``PE[p, 2i+1] = scale · cos(p / base^(2i/C))``,
    computed from the positions on the fly, so any position works. An odd ``n_embd`` drops the last
    cosine.
    """

    def __init__(self, config: GPTConfig, base: float = 10000.0, scale: float = 0.02) -> None:
        """
        Args:
            base: the longest wavelength is 2π·base positions (the paper: 10000).
            scale: amplitude of the sinusoids. GPT-2's token embeddings start at std 0.02, and
                sinusoids of amplitude 1 (the paper, whose embeddings are multiplied by √n_embd) drown
                them: 0.02 gives position the weight a learned table starts with.
        """
        super().__init__(config)
        if scale <= 0:
            raise GPT2KitError(f"SinusoidalPosition scale={scale} must be > 0 (default 0.02)")
        self.n_embd, self.scale = config.n_embd, scale
        inv_freq = base ** (-torch.arange(0, config.n_embd, 2, dtype=torch.float32) / config.n_embd)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (ceil(C/2),)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        angles = pos[..., None].float() * self.inv_freq  # (B|1, T, ceil(C/2))
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (B|1, T, ≥C) sin, cos, ...
        return x + (self.scale * pe[..., : self.n_embd]).to(x.dtype)


@POSITION.register("rotary")
class RotaryPosition(PositionEncoding):
    """Rotary position embedding (RoPE, Su et al., 2021): rotates queries and keys by their position.

    Channel pairs (i, i + hs/2) of each head are rotated by the angle ``pos · base^(-2i/hs)`` (the
    "rotate half" layout of GPT-NeoX and Llama), so a query·key score depends only on the offset
    between the two positions. Needs an even head dimension.
    """

    def __init__(self, config: GPTConfig, base: float = 10000.0) -> None:
        """
        Args:
            base: the rotation frequencies are base^(-2i/head_dim); larger bases suit longer contexts.
        """
        super().__init__(config)
        hs = config.head_dim
        if hs % 2:
            raise GPT2KitError(
                f"RotaryPosition needs an even head dimension, but n_embd={config.n_embd} / "
                f"n_head={config.n_head} = {hs}: change n_embd or n_head so that n_embd / n_head is even"
            )
        if base <= 1.0:
            raise GPT2KitError(f"RotaryPosition base={base} must be > 1 (the usual value is 10000)")
        inv_freq = base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)

    def rotate(self, t: Tensor, pos: Tensor) -> Tensor:
        angles = pos[..., None].float() * self.inv_freq  # (B|1, T, hs/2)
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B|1, 1, T, hs) broadcasts over heads
        cos, sin = angles.cos().to(t.dtype), angles.sin().to(t.dtype)
        t1, t2 = t.chunk(2, dim=-1)  # (B, h, T, hs/2) each
        rotated = torch.cat([-t2, t1], dim=-1)  # the pair (a, b) becomes (-b, a)
        return t * cos + rotated * sin


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi's per-head slopes, as in the paper's reference code (Press et al., 2022).

    For a power of two n: the geometric sequence starting at and with ratio 2^(-8/n). Otherwise, the
    slopes of the largest power of two p < n, then every other slope of 2p's sequence, n - p of them.
    """

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(p) + geometric(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)


@POSITION.register("alibi")
class ALiBiPosition(PositionEncoding):
    """ALiBi (Press et al., 2022): no embeddings; each head adds -slope · (query pos - key pos) to its scores.

    Unbounded, so a model may run past the length it was trained on. Needs an attention that can add
    a bias (``supports_bias``).
    """

    produces_bias = True

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)  # (nh,)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = (q_pos[:, :, None] - k_pos[:, None, :]).float()  # (B|1, Tq, Tk) ≥ 0 where causal
        return -self.slopes[:, None, None] * distance[:, None]  # (B|1, nh, Tq, Tk)
