"""QKNormAttention against gpt2kit's shared component contract (gpt2kit.testing), plus what is its own.

pip install -e ./plugins/qknorm && pytest plugins/qknorm      # or: cd plugins/qknorm && pytest
"""

import functools

import pytest
import torch
from gpt2kit import GPT, GPT2KitError, registry
from gpt2kit.nn import ALiBiPosition, LearnedPosition, RotaryPosition
from gpt2kit.testing import (
    check_cache_matches_forward,
    check_causal,
    check_checkpoint_roundtrip,
    check_gradients_flow,
    check_left_padding,
    tiny_config,
)

from gpt2kit_qknorm import QKNormAttention

POSITIONS = [LearnedPosition, RotaryPosition, ALiBiPosition]  # embed, rotate and bias: every hook


@pytest.mark.parametrize("position", POSITIONS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("n_kv_head", [None, 2], ids=["mha", "gqa"])
def test_contract(position, n_kv_head):
    attention = functools.partial(QKNormAttention, n_kv_head=n_kv_head)
    make = functools.partial(GPT, tiny_config(), attention=attention, position=position)
    check_causal(make)  # no output depends on a later token
    check_cache_matches_forward(make)  # KV-cache decoding == one full forward pass
    check_left_padding(make)  # padded batches give each real token its unpadded output
    check_gradients_flow(make)  # the gains train too


def test_checkpoint_roundtrip(tmp_path):
    attention = functools.partial(QKNormAttention, n_kv_head=2, eps=1e-5)
    check_checkpoint_roundtrip(tmp_path, tiny_config(), attention=attention, position=RotaryPosition)


def test_queries_and_keys_are_normalised():
    attn = QKNormAttention(tiny_config())
    x = 100 * torch.randn(2, 5, 32)  # a large residual stream ...
    q, k, _ = attn.project(x)
    rms = torch.cat([q, k], dim=1).pow(2).mean(-1).sqrt()  # (B, 2·nh, T)
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)  # ... unit-RMS q and k


def test_registered_and_bad_options():
    assert registry("attention").get("qk_norm") is QKNormAttention
    with pytest.raises(GPT2KitError, match="n_kv_head=3 must divide n_head=4"):
        QKNormAttention(tiny_config(), n_kv_head=3)
    with pytest.raises(GPT2KitError, match="eps=0"):
        QKNormAttention(tiny_config(), eps=0)
