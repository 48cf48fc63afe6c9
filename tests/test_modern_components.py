"""The modern-training pack: ReLU² MLP, QK-norm attention, logit soft-capping, zero-initialised projections."""

from __future__ import annotations

import functools

import pytest
import torch

from gpt2kit import GPT, GPT2KitError, registry
from gpt2kit.nn import (
    ALiBiPosition,
    CausalSelfAttention,
    GeluMLP,
    LearnedPosition,
    QKNormCausalAttention,
    ReLU2MLP,
    RMSNorm,
    RotaryPosition,
    TiedLMHead,
    UntiedLMHead,
)
from gpt2kit.testing import (
    check_cache_matches_forward,
    check_causal,
    check_checkpoint_roundtrip,
    check_gradients_flow,
    check_left_padding,
    tiny_config,
)

ZERO_ATTN = functools.partial(QKNormCausalAttention, output_init="zero")
ZERO_MLP = functools.partial(ReLU2MLP, output_init="zero")
CAPPED = functools.partial(UntiedLMHead, softcap=5.0)


@pytest.mark.parametrize(
    "position", [LearnedPosition, RotaryPosition, ALiBiPosition], ids=lambda p: p.__name__
)
@pytest.mark.parametrize("n_kv_head", [None, 2], ids=["mha", "gqa"])
def test_qknorm_attention_contract(position, n_kv_head):
    attention = functools.partial(QKNormCausalAttention, n_kv_head=n_kv_head)
    make = functools.partial(GPT, tiny_config(), attention=attention, position=position)
    check_causal(make)
    check_cache_matches_forward(make)
    check_left_padding(make)
    check_gradients_flow(make)


@pytest.mark.parametrize(
    "parts",
    [
        {"mlp": ReLU2MLP},
        {"head": functools.partial(TiedLMHead, softcap=3.0)},
        {"head": CAPPED},
        {
            "attention": ZERO_ATTN,
            "mlp": ZERO_MLP,
            "position": RotaryPosition,
            "norm": RMSNorm,
            "head": CAPPED,
        },
    ],
    ids=["relu2", "tied-softcap", "untied-softcap", "modern"],
)
def test_modern_parts_contract(parts):
    make = functools.partial(GPT, tiny_config(), **parts)
    check_causal(make)
    check_cache_matches_forward(make)
    check_left_padding(make)


def test_modern_model_checkpoint_roundtrip(tmp_path):
    check_checkpoint_roundtrip(
        tmp_path, tiny_config(), attention=ZERO_ATTN, mlp=ZERO_MLP, position=RotaryPosition, head=CAPPED
    )


def test_zero_init_blocks_start_learning():
    # At step 0 only the zero projections (and what bypasses the blocks) get a gradient: nothing flows back
    # through a zero matrix. One step later they are not zero, and every parameter gets one.
    torch.manual_seed(0)
    model = GPT(tiny_config(), attention=ZERO_ATTN, mlp=ZERO_MLP)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    idx = torch.randint(37, (4, 16))
    grads = []
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        grads.append({n: p.grad.abs().sum().item() for n, p in model.named_parameters()})
        optimizer.step()
    assert grads[0]["blocks.0.attn.c_proj.weight"] > 0 and grads[0]["blocks.0.mlp.c_proj.weight"] > 0
    assert grads[0]["blocks.0.attn.c_attn.weight"] == 0 and grads[0]["blocks.0.mlp.c_fc.weight"] == 0
    assert all(g > 0 for g in grads[1].values()), [n for n, g in grads[1].items() if g == 0]


def test_relu2_computes_squared_relu():
    mlp = ReLU2MLP(tiny_config(), expansion=2)
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2))
    assert mlp.c_fc.out_features == 64


def test_qknorm_normalises_queries_and_keys():
    attn = QKNormCausalAttention(tiny_config())
    q, k, _ = attn.project(100 * torch.randn(2, 5, 32))
    rms = torch.cat([q, k], dim=1).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)


def test_softcap_bounds_the_logits():
    torch.manual_seed(0)
    model = GPT(tiny_config(), head=functools.partial(TiedLMHead, softcap=2.0))
    raw = GPT(tiny_config())
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        model.wte.weight.mul_(50)  # huge logits ...
        raw.wte.weight.mul_(50)
    idx = torch.randint(37, (2, 8))
    capped, plain = model(idx), raw(idx)
    assert (
        plain.abs().max() > 10.0 and capped.abs().max() <= 2.0
    )  # ... squashed into [-2, 2] (float32 tanh saturates)
    torch.testing.assert_close(capped, 2.0 * torch.tanh(plain / 2.0))


def test_zero_init_is_owned_by_the_component_not_its_name():
    torch.manual_seed(0)
    model = GPT(tiny_config(), attention=ZERO_ATTN, mlp=ZERO_MLP)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        assert block.attn.c_attn.weight.std() > 0.01  # the input projections keep GPT-2's N(0, 0.02)
    idx = torch.randint(37, (2, 8))
    with torch.no_grad():  # every block starts as the identity: the output is the embeddings' alone
        h = model.position.embed(model.wte(idx), torch.arange(8)[None])
        torch.testing.assert_close(model(idx), model.head(model.ln_f(h), model.wte))
    scaled = GPT(
        tiny_config(n_layer=8), attention=CausalSelfAttention, mlp=GeluMLP
    )  # default: scaled, as GPT-2
    assert scaled.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.15)


def test_registered_and_bad_options():
    assert registry("mlp").get("relu2") is ReLU2MLP
    assert registry("attention").get("qknorm") is QKNormCausalAttention
    with pytest.raises(GPT2KitError, match="softcap=0 must be > 0"):
        TiedLMHead(tiny_config(), softcap=0)
    with pytest.raises(GPT2KitError, match="softcap=-1.0 must be > 0"):
        UntiedLMHead(tiny_config(), softcap=-1.0)
    with pytest.raises(GPT2KitError, match="output_init='zeros' is not one of"):
        ReLU2MLP(tiny_config(), output_init="zeros")
    with pytest.raises(GPT2KitError, match="eps=0 must be > 0"):
        QKNormCausalAttention(tiny_config(), eps=0)
    with pytest.raises(GPT2KitError, match="n_kv_head=3 must divide n_head=4"):
        QKNormCausalAttention(tiny_config(), n_kv_head=3)
