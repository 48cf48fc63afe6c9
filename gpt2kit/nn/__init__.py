"""Building blocks: one base class per kind of component, plus the built-in variants."""

from gpt2kit.nn.attention import Attention, CausalSelfAttention, KVCache
from gpt2kit.nn.block import Block
from gpt2kit.nn.heads import Head, TiedLMHead
from gpt2kit.nn.init import gpt2_init, mark_residual
from gpt2kit.nn.mlp import MLP, GeluMLP
from gpt2kit.nn.norm import LayerNorm, Norm
from gpt2kit.nn.position import LearnedPosition, NoPosition, PositionEncoding

__all__ = [
    "Attention",
    "Block",
    "CausalSelfAttention",
    "GeluMLP",
    "Head",
    "KVCache",
    "LayerNorm",
    "LearnedPosition",
    "MLP",
    "NoPosition",
    "Norm",
    "PositionEncoding",
    "TiedLMHead",
    "gpt2_init",
    "mark_residual",
]
