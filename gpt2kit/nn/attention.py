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
kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn.init import mark_residual
from gpt2kit.nn.position import PositionEncoding
from gpt2kit.registry import add_kind


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

    def append(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None) -> tuple[Tensor, ...]:
        """Store (B, h, T, hs) keys/values at the end; return everything cached so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise GPT2KitError(f"KV cache overflow: {end} tokens do not fit in a cache of {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.pos[:, start:end] = pos
        self.valid[:, start:end] = True if valid is None else valid
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], self.pos[:, :end], self.valid[:, :end]

    def truncate(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens (e.g. to reuse a shared prefix)."""
        assert 0 <= length <= self.length
        self.length = length


class Attention(nn.Module):
    """Base class: causal multi-head self-attention with fused q/k/v and output projections."""

    causal_fast_path: bool = True
    """Whether an unpadded, uncached forward may use the kernel's built-in causal mask."""

    def __init__(self, config: GPTConfig, n_kv_head: int | None = None) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = n_kv_head or config.n_head
        self.head_dim = config.head_dim
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        qkv = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv, bias=config.bias)
        self.c_proj = mark_residual(nn.Linear(config.n_embd, config.n_embd, bias=config.bias))
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
        if mask is None and bias is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if bias is not None:
            bias = bias.to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
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
        if not (self.causal_fast_path and cache is None and valid is None and bias is None):
            if k_valid is None:
                k_valid = torch.ones(k_pos.shape, dtype=torch.bool, device=x.device)
            mask = self.mask(pos, k_pos, k_valid)
            mask = mask | ~mask.any(-1, keepdim=True)  # a padding query that sees nothing: avoid NaN
        y = self.attend(q, k, v, mask, bias)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, device=device, dtype=dtype)


ATTENTION = add_kind("attention", Attention)


@ATTENTION.register("causal")
class CausalSelfAttention(Attention):
    """GPT-2 attention through torch's scaled_dot_product_attention (flash/fused kernels where available)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
