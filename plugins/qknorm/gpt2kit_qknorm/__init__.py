"""QK-norm attention for gpt2kit: queries and keys are RMS-normalised per head before their dot product.

Installed (``pip install ./plugins/qknorm``), gpt2kit imports this module through its ``gpt2kit.plugins``
entry point; uninstalled, name it with ``--plugins gpt2kit_qknorm`` (its folder on ``PYTHONPATH``). Then::

    model:
      attention: QKNormAttention          # or class_path: gpt2kit_qknorm.QKNormAttention
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn import Attention
from gpt2kit.registry import register
from torch import Tensor, nn

__all__ = ["QKNormAttention"]


@register("attention", "qk_norm")
class QKNormAttention(Attention):
    """Queries and keys RMS-normalised per head, with learned gains (QK-norm: OLMo 2, Gemma 3, modded-nanogpt).

    Each head's q and k are scaled to unit root-mean-square and multiplied by a learned per-channel gain
    before RoPE (if any) and the dot product, so attention logits cannot grow without bound: training
    tolerates higher learning rates without loss spikes. Everything else -- causal mask, grouped-query
    heads, KV cache, additive biases (ALiBi) -- is the base class's, so the contract holds unchanged.
    """

    def __init__(self, config: GPTConfig, n_kv_head: int | None = None, eps: float = 1e-6) -> None:
        """
        Args:
            n_kv_head: key/value heads shared by the query heads (grouped-query attention); must divide
                n_head. None: one per query head.
            eps: added to the mean square before the square root.
        """
        super().__init__(config, n_kv_head)  # the base class makes c_attn, c_proj and checks n_kv_head
        if eps <= 0:
            raise GPT2KitError(f"QKNormAttention eps={eps} must be > 0 (the usual value is 1e-6)")
        self.eps = eps
        # Gains start at 1: the model begins as plain normalised attention. 1-D, so no weight decay.
        self.q_gain = nn.Parameter(torch.ones(self.head_dim))
        self.k_gain = nn.Parameter(torch.ones(self.head_dim))

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super().project(x)  # q (B, nh, T, hs), k and v (B, n_kv, T, hs)
        q = F.rms_norm(q, (self.head_dim,), self.q_gain, self.eps)  # over each head's channels
        k = F.rms_norm(k, (self.head_dim,), self.k_gain, self.eps)
        return q, k, v  # the base class rotates q and k, caches k and v, and attends

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, eps={self.eps}"
