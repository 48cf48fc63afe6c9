"""Building blocks: one base class per kind of component, plus the built-in variants.

Every class listed here can be named in a recipe by its registered name or its class name
(``attention: sliding_window`` or ``attention: SlidingWindowAttention``); ``python -m gpt2kit list``
shows both. GPT-2's choice for each slot is :data:`gpt2kit.model.GPT2`.
"""

from gpt2kit.nn.attention import (
    Attention,
    CausalSelfAttention,
    GroupedQueryAttention,
    KVCache,
    MathAttention,
    QKNormCausalAttention,
    SlidingWindowAttention,
)
from gpt2kit.nn.block import Block
from gpt2kit.nn.heads import Head, SequenceClassificationHead, TiedLMHead, UntiedLMHead
from gpt2kit.nn.init import gpt2_init, mark_residual
from gpt2kit.nn.mlp import MLP, ExactGeluMLP, GeluMLP, ReLU2MLP, ReluMLP, SwiGLUMLP
from gpt2kit.nn.norm import LayerNorm, Norm, RMSNorm
from gpt2kit.nn.position import (
    ALiBiPosition,
    LearnedPosition,
    NoPosition,
    PositionEncoding,
    RotaryPosition,
    SinusoidalPosition,
)

__all__ = [
    "ALiBiPosition",
    "Attention",
    "Block",
    "CausalSelfAttention",
    "GeluMLP",
    "ExactGeluMLP",
    "GroupedQueryAttention",
    "Head",
    "KVCache",
    "LayerNorm",
    "LearnedPosition",
    "MLP",
    "MathAttention",
    "NoPosition",
    "Norm",
    "PositionEncoding",
    "QKNormCausalAttention",
    "ReLU2MLP",
    "RMSNorm",
    "ReluMLP",
    "RotaryPosition",
    "SequenceClassificationHead",
    "SinusoidalPosition",
    "SlidingWindowAttention",
    "SwiGLUMLP",
    "TiedLMHead",
    "UntiedLMHead",
    "gpt2_init",
    "mark_residual",
]
