"""The component contract, as checks a plugin's own tests can call.

Each check builds a small model from a *factory* (a zero-argument callable returning a
:class:`~gpt2kit.model.GPT`) and raises ``AssertionError`` with the worst mismatch if the contract is
broken::

    import functools
    from gpt2kit import GPT
    from gpt2kit.nn import RotaryPosition
    from gpt2kit.testing import check_cache_matches_forward, check_causal, tiny_config

    from my_plugin import MyAttention

    def test_my_attention():
        make = functools.partial(GPT, tiny_config(), attention=MyAttention, position=RotaryPosition)
        check_causal(make)
        check_cache_matches_forward(make)

The checks run in float32 on the CPU, with dropout off. The model-level checks expect a language-model
head (outputs (B, T, ...) position by position); :func:`check_checkpoint_roundtrip` works with any head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gpt2kit.config import GPTConfig
from gpt2kit.model import GPT

ModelFactory = Callable[[], GPT]


def tiny_config(**overrides: Any) -> GPTConfig:
    """A model small enough to check in milliseconds: 2 layers, 4 heads of 8, 16 positions, 37 tokens."""
    sizes: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=37, dropout=0.0)
    return GPTConfig(**{**sizes, **overrides})


def build(make: ModelFactory, seed: int = 0) -> GPT:
    """The factory's model, seeded, in eval mode and float32."""
    torch.manual_seed(seed)
    return make().float().eval()


def random_tokens(model: GPT, batch: int = 2, length: int | None = None, seed: int = 1) -> Tensor:
    """Token ids (batch, length) drawn uniformly; length defaults to the model's block_size."""
    g = torch.Generator().manual_seed(seed)
    length = length or model.config.block_size
    return torch.randint(model.config.vocab_size, (batch, length), generator=g)


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str) -> None:
    """Fail with the largest absolute difference and where it is."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs()
    worst = diff.max().item() if diff.numel() else 0.0
    if not worst <= atol:  # also catches NaN
        where = tuple(int(i) for i in torch.unravel_index(diff.nan_to_num(float("inf")).argmax(), diff.shape))
        raise AssertionError(f"{what}: max |difference| {worst:.3g} > {atol:g} at index {where}")


@torch.no_grad()
def check_causal(make: ModelFactory, *, batch: int = 2, atol: float = 1e-6) -> None:
    """Changing the tokens from position t on leaves every output before t unchanged, for every t."""
    model = build(make)
    idx = random_tokens(model, batch)
    T = idx.size(1)
    base = model(idx)
    for t in range(1, T):
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 1 + torch.arange(T - t)) % model.config.vocab_size
        assert_close(model(changed)[:, :t], base[:, :t], atol, f"outputs before position {t} (causality)")


@torch.no_grad()
def check_cache_matches_forward(
    make: ModelFactory, *, batch: int = 2, prefills: Sequence[int] | None = None, atol: float = 1e-5
) -> None:
    """Prefilling a KV cache, then decoding one token at a time, gives the full forward's outputs.

    Checked for each prefill length in ``prefills`` (default: 0, 1 and half the block), at every step.
    """
    model = build(make)
    idx = random_tokens(model, batch)
    T = idx.size(1)
    full = model(idx)
    for p in prefills if prefills is not None else (0, 1, T // 2):
        cache = model.new_cache(batch, T)
        if p:
            assert_close(model(idx[:, :p], cache=cache), full[:, :p], atol, f"prefill of {p} tokens")
        for t in range(p, T):
            step = model(idx[:, t : t + 1], cache=cache)  # (B, 1, ...)
            assert_close(step[:, 0], full[:, t], atol, f"cached decoding at position {t} after prefill {p}")


@torch.no_grad()
def check_left_padding(make: ModelFactory, *, atol: float = 1e-5) -> None:
    """A left-padded batch (``valid`` False on the pads, positions counted from the first real token)
    gives each real token the output it has unpadded, in a full forward and through a KV cache."""
    model = build(make)
    T = model.config.block_size
    idx = random_tokens(model, batch=3)
    n_pad = torch.tensor([0, 3, T // 2])
    valid = torch.arange(T)[None, :] >= n_pad[:, None]  # (B, T)
    pos = (torch.arange(T)[None, :] - n_pad[:, None]).clamp(min=0)  # (B, T)
    padded = torch.full_like(idx, 0)
    for b, n in enumerate(n_pad.tolist()):
        padded[b, n:] = idx[b, : T - n]
    out = model(padded, pos=pos, valid=valid)
    cache = model.new_cache(3, T)
    half = T // 2 + 2
    model(padded[:, :half], pos=pos[:, :half], valid=valid[:, :half], cache=cache)
    steps = [model(padded[:, t : t + 1], pos=pos[:, t : t + 1], cache=cache) for t in range(half, T)]
    decoded = torch.cat(steps, dim=1)  # (B, T - half, ...)
    for b, n in enumerate(n_pad.tolist()):
        alone = model(idx[b : b + 1, : T - n])[0]
        assert_close(out[b, n:], alone, atol, f"row {b} with {n} pads vs unpadded")
        assert_close(decoded[b], alone[half - n :], atol, f"row {b} with {n} pads, cached decoding")


@torch.no_grad()
def check_matches_reference(
    make: ModelFactory, make_reference: ModelFactory, *, atol: float = 1e-5, strict: bool = True
) -> None:
    """With the same weights (the reference's state dict loaded into the model), both compute the
    same outputs: plain, right-padded and left-padded batches."""
    reference = build(make_reference)
    model = build(make, seed=1)
    model.load_state_dict(reference.state_dict(), strict=strict)
    idx = random_tokens(model, batch=3)
    T = idx.size(1)
    assert_close(model(idx), reference(idx), atol, "outputs vs the reference")
    lengths = torch.tensor([T, T - 3, T // 2])
    for valid in (torch.arange(T) < lengths[:, None], torch.arange(T) >= T - lengths[:, None]):
        out, ref = model(idx, valid=valid), reference(idx, valid=valid)
        assert_close(out[valid], ref[valid], atol, "outputs vs the reference with padding")


def check_gradients_flow(make: ModelFactory, *, steps: int = 3, lr: float = 3e-3) -> None:
    """Every trainable parameter receives a finite, non-zero gradient, and a few AdamW steps on one
    batch lower the loss."""
    model = build(make).train()
    idx = random_tokens(model, batch=4)
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps + 1):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None, f"parameter {name} gets no gradient (is it used?)"
                    assert torch.isfinite(p.grad).all(), f"parameter {name} has a non-finite gradient"
                    assert p.grad.abs().sum() > 0, f"parameter {name} has an all-zero gradient"
        optimizer.step()
    assert losses[-1] < losses[0], f"the loss did not go down in {steps} steps: {losses}"


@torch.no_grad()
def check_checkpoint_roundtrip(directory: str | Path, config: GPTConfig, **components: Any) -> None:
    """A :class:`~gpt2kit.training.lit.GPTLitModule` built from ``components`` (``attention=..., position=...``:
    classes, or ``functools.partial`` of a class with keyword options) survives a checkpoint file:
    :func:`gpt2kit.checkpoint.load_module` rebuilds the same classes from the stored config and gives
    identical outputs."""
    from gpt2kit.checkpoint import load_module, save_checkpoint
    from gpt2kit.training.lit import GPTLitModule

    torch.manual_seed(0)
    module = GPTLitModule(config, **components).eval()
    path = save_checkpoint(module, Path(directory) / "roundtrip.ckpt")  # the format training writes
    loaded = load_module(path)
    for (name, a), (_, b) in zip(module.model.named_modules(), loaded.model.named_modules(), strict=True):
        where = name or "model"
        assert type(a) is type(b), f"{where}: {type(b).__name__} after loading, was {type(a).__name__}"
        assert a.extra_repr() == b.extra_repr(), (
            f"{where}: {b.extra_repr()!r} after loading, was {a.extra_repr()!r}"
        )
    idx = random_tokens(module.model)
    assert torch.equal(loaded.model(idx), module.model(idx)), "outputs differ after the checkpoint round trip"
