"""Causal self-attention and the KV cache.

Every attention variant keeps one contract, ``forward(x, position, pos, cache=None, valid=None)``:

* ``x`` (B, T, C): the normalised residual stream;
* ``position``: the model's :class:`~gpt2kit.nn.position.PositionEncoding`, whose ``rotate`` and
  ``bias`` hooks the attention applies (RoPE, ALiBi ...);
* ``pos`` (B or 1, T): absolute positions of x's tokens;
* ``cache``: this layer's :class:`KVCache` for incremental decoding, or None;
* ``valid`` (B, T): False where x holds padding, or None when there is none.

Decoding T tokens one at a time through the cache gives the same outputs as one forward pass over
all T (the tests check this for every attention x position combination). A variant overrides one
piece: ``project`` (how q, k, v are made), ``mask`` (which keys a query sees) or ``attend`` (the
kernel). One that cannot add an attention bias sets ``supports_bias = False``, and the model then
refuses a position encoding that produces one (ALiBi) when it is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn.init import OutputInit, mark_residual
from gpt2kit.nn.position import PositionEncoding
from gpt2kit.registry import add_kind


def causal_mask(Tq: int, Tk: int, device: torch.device) -> Tensor:
    """Bool (Tq, Tk): the Tq queries are the last Tq of the Tk keys, each seeing itself and earlier ones."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)


class KVCache:
    """Preallocated keys and values of one attention layer, filled left to right."""

    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros(batch_size, max_len, device=device, dtype=torch.long)
        self.valid = torch.zeros(batch_size, max_len, device=device, dtype=torch.bool)
        self.max_len = max_len
        self.length = 0
        self.padded = False
        """Whether any entry may be padding (then every query needs a mask over the keys)."""

    def append(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None) -> tuple[Tensor, ...]:
        """Store (B, h, T, hs) keys/values at the end; return everything cached so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise GPT2KitError(f"KV cache overflow: {end} tokens do not fit in a cache of {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.pos[:, start:end] = pos
        self.valid[:, start:end] = True if valid is None else valid
        self.padded |= valid is not None
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], self.pos[:, :end], self.valid[:, :end]

    def truncate(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens (e.g. to reuse a shared prefix)."""
        assert 0 <= length <= self.length
        self.length = length
        self.padded &= length > 0


class Attention(nn.Module):
    """Base class: causal multi-head self-attention with fused q/k/v and output projections."""

    causal_fast_path: bool = True
    """Whether an unpadded, uncached forward may use the kernel's built-in causal mask."""

    supports_bias: bool = True
    """Whether ``attend`` adds the position encoding's additive bias (needed by ALiBi)."""

    def __init__(
        self, config: GPTConfig, n_kv_head: int | None = None, output_init: OutputInit = "scaled"
    ) -> None:
        super().__init__()
        n_kv_head = config.n_head if n_kv_head is None else n_kv_head
        if n_kv_head <= 0 or config.n_head % n_kv_head:
            divisors = [d for d in range(1, config.n_head + 1) if config.n_head % d == 0]
            raise GPT2KitError(
                f"{type(self).__name__}: n_kv_head={n_kv_head} must divide n_head={config.n_head}: "
                f"choose one of {divisors}"
            )
        self.n_head = config.n_head
        self.n_kv_head = n_kv_head
        self.head_dim = config.head_dim
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        qkv = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv, bias=config.bias)
        self.c_proj = mark_residual(nn.Linear(config.n_embd, config.n_embd, bias=config.bias), output_init)
        self.resid_dropout = nn.Dropout(config.dropout)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, nh, T, hs), k and v (B, n_kv, T, hs) from x (B, T, C)."""
        B, T, _ = x.shape
        sizes = (self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim)
        q, k, v = self.c_attn(x).split(sizes, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hs)
        return q, k, v

    def mask(self, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
        """Bool (B, 1, Tq, Tk): True where a query may attend to a key."""
        allowed = k_pos[:, None, :] <= q_pos[:, :, None]  # (B, Tq, Tk) causal by position
        return (allowed & k_valid[:, None, :]).unsqueeze(1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
        """softmax(q kᵀ / √hs + bias, masked) v, shape (B, nh, Tq, hs). ``mask=None``: plain causal."""
        p = self.dropout if self.training else 0.0
        if mask is None and bias is None and q.size(2) == k.size(2):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if mask is None and bias is None and q.size(2) == 1:  # the newest token: it sees every key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        if mask is None:  # (torch's is_causal aligns a shorter query block to the first keys, not the last)
            mask = causal_mask(q.size(2), k.size(2), q.device)
        if bias is not None:
            mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))  # (B|1, nh, Tq, Tk) additive
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def forward(
        self,
        x: Tensor,
        position: PositionEncoding,
        pos: Tensor,
        cache: KVCache | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x)
        q, k = position.rotate(q, pos), position.rotate(k, pos)
        k_pos, k_valid = pos, valid
        if cache is not None:
            k, v, k_pos, k_valid = cache.append(k, v, pos.expand(B, T), valid)
        if self.n_kv_head != self.n_head:  # grouped-query: each kv head serves n_head/n_kv query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, Tk, hs)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        bias = position.bias(pos, k_pos)
        mask = None
        # No mask to build when the kernel's causal rule is the whole story: no padding, no bias, and
        # either no cache or one new token after unpadded ones (one-sequence decoding).
        plain = self.causal_fast_path and valid is None and bias is None
        if not (plain and (cache is None or (T == 1 and not cache.padded))):
            if k_valid is None:
                k_valid = torch.ones(k_pos.shape, dtype=torch.bool, device=x.device)
            mask = self.mask(pos, k_pos, k_valid)
            mask = mask | ~mask.any(-1, keepdim=True)  # a padding query that sees nothing: avoid NaN
        y = self.attend(q, k, v, mask, bias)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, device=device, dtype=dtype)

    def check_position(self, position: PositionEncoding) -> None:
        """Refuse a position encoding this attention cannot apply (called when the model is built)."""
        if position.produces_bias and not self.supports_bias:
            raise GPT2KitError(
                f"{type(position).__name__} adds an attention bias but {type(self).__name__} cannot take one "
                "(supports_bias=False): pick an attention that can (e.g. CausalSelfAttention) or a position "
                "encoding without a bias (e.g. RotaryPosition)"
            )


ATTENTION = add_kind("attention", Attention)


@ATTENTION.register("causal")
class CausalSelfAttention(Attention):
    """GPT-2 attention through torch's scaled_dot_product_attention (flash/fused kernels where available)."""

    def __init__(self, config: GPTConfig, output_init: OutputInit = "scaled") -> None:
        """
        Args:
            output_init: how the output projection starts: "scaled" (GPT-2's N(0, 0.02 / sqrt(2 n_layer)))
                or "zero" (the block starts as the identity; modded-nanogpt).
        """
        super().__init__(config, output_init=output_init)


@ATTENTION.register("qknorm")
class QKNormCausalAttention(Attention):
    """Causal attention with queries and keys RMS-normalised per head (QK-norm: OLMo 2, Gemma 3, modded-nanogpt).

    Each head's q and k are scaled to unit root-mean-square times a learned per-channel gain, before
    RoPE (if any) and the dot product, so attention logits cannot grow without bound and higher
    learning rates stay stable. Masks, grouped-query heads, the KV cache and biases are the base
    class's. (plugins/qknorm is the same idea written as a third-party plugin.)
    """

    def __init__(
        self,
        config: GPTConfig,
        n_kv_head: int | None = None,
        eps: float = 1e-6,
        output_init: OutputInit = "scaled",
    ) -> None:
        """
        Args:
            n_kv_head: key/value heads shared by the query heads; must divide n_head. None: one per head.
            eps: added to the mean square before the square root.
            output_init: how the output projection starts: "scaled" (GPT-2) or "zero" (modded-nanogpt).
        """
        super().__init__(config, n_kv_head, output_init)
        if eps <= 0:
            raise GPT2KitError(f"QKNormCausalAttention eps={eps} must be > 0 (the usual value is 1e-6)")
        self.eps = eps
        self.q_gain = nn.Parameter(torch.ones(self.head_dim))  # 1-D: AdamW, no weight decay
        self.k_gain = nn.Parameter(torch.ones(self.head_dim))

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super().project(x)  # q (B, nh, T, hs), k and v (B, n_kv, T, hs)
        q = F.rms_norm(q, (self.head_dim,), self.q_gain, self.eps)  # over each head's channels
        k = F.rms_norm(k, (self.head_dim,), self.k_gain, self.eps)
        return q, k, v

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, eps={self.eps}"


@ATTENTION.register("math")
class MathAttention(Attention):
    """Reference attention written out: softmax(q kᵀ / √hs + bias, masked) v. Slow; for tests and teaching."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
        if bias is not None:
            att = att + bias.to(att.dtype)
        if mask is None:
            mask = causal_mask(q.size(2), k.size(2), q.device)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        att = F.dropout(att, self.dropout, self.training)
        return att @ v  # (B, nh, Tq, hs)


@ATTENTION.register("sliding_window")
class SlidingWindowAttention(Attention):
    """Local causal attention: each token sees itself and the window - 1 tokens before it.

    The window is a mask on absolute positions, so it holds with a KV cache too (the cache still keeps
    every token; only the last ``window`` are attended to).
    """

    causal_fast_path = False  # the band needs an explicit mask

    def __init__(self, config: GPTConfig, window: int = 512) -> None:
        """
        Args:
            window: tokens each query attends to, itself included; window >= block_size is full attention.
        """
        super().__init__(config)
        if window <= 0:
            raise GPT2KitError(f"SlidingWindowAttention window={window} must be a positive number of tokens")
        self.window = window

    def mask(self, q_pos: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
        near = q_pos[:, :, None] - k_pos[:, None, :] < self.window  # (B, Tq, Tk) fewer than w back
        return super().mask(q_pos, k_pos, k_valid) & near.unsqueeze(1)  # (B, 1, Tq, Tk)

    def extra_repr(self) -> str:
        return f"window={self.window}"


@ATTENTION.register("grouped_query")
class GroupedQueryAttention(Attention):
    """Grouped-query attention (Ainslie et al., 2023): n_head query heads share n_kv_head key/value heads.

    ``n_kv_head == 1`` is multi-query attention; ``n_kv_head == n_head`` is ordinary multi-head
    attention. The KV cache holds only the n_kv_head heads, n_head / n_kv_head times smaller.
    """

    def __init__(self, config: GPTConfig, n_kv_head: int) -> None:
        """
        Args:
            n_kv_head: key/value heads; must divide n_head (1: multi-query attention).
        """
        super().__init__(config, n_kv_head)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}"
