"""ReLUSquaredMLP against gpt2kit's shared component contract (gpt2kit.testing), plus what is its own.

pip install -e ./plugins/relu2 && pytest plugins/relu2      # or: cd plugins/relu2 && pytest
"""

import functools

import pytest
import torch
from gpt2kit import GPT, GPT2KitError, registry
from gpt2kit.nn import RMSNorm, RotaryPosition
from gpt2kit.testing import (
    check_cache_matches_forward,
    check_causal,
    check_checkpoint_roundtrip,
    check_gradients_flow,
    tiny_config,
)

from gpt2kit_relu2 import ReLUSquaredMLP


def test_contract():
    make = functools.partial(GPT, tiny_config(), mlp=ReLUSquaredMLP, position=RotaryPosition, norm=RMSNorm)
    check_causal(make)
    check_cache_matches_forward(make)
    check_gradients_flow(make)


def test_checkpoint_roundtrip(tmp_path):
    check_checkpoint_roundtrip(tmp_path, tiny_config(), mlp=functools.partial(ReLUSquaredMLP, expansion=2))


def test_squared_relu_and_scaled_init():
    mlp = ReLUSquaredMLP(tiny_config(), expansion=2)
    assert mlp.c_fc.out_features == 64
    x = torch.randn(3, 32)
    expected = mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2)
    torch.testing.assert_close(mlp(x), expected)
    model = GPT(tiny_config(n_layer=8), mlp=ReLUSquaredMLP)  # residual projections: 0.02 / sqrt(2 · 8)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)


def test_registered_and_bad_options():
    assert registry("mlp").get("relu_squared") is ReLUSquaredMLP
    with pytest.raises(GPT2KitError, match="expansion=0"):
        ReLUSquaredMLP(tiny_config(), expansion=0)
