"""Sampling from a GPT with a preallocated KV cache, one token at a time (streamable).

The prompt is run through the model once (prefill) and each new token then costs one forward pass
of a single position. A context longer than the model's block_size keeps its most recent tokens:
when the cache is full, the last ``block_size - block_size // 4`` tokens are run through a fresh
cache and decoding goes on from there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How the next token is drawn from the model's distribution."""

    max_new_tokens: int = 200
    """Number of tokens to generate."""
    temperature: float = 0.8
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = 200
    """Sample only among the k most likely tokens; None: no limit."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches p; None: off."""
    seed: int | None = None
    """Seed for reproducible sampling; None: nondeterministic."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GPT2KitError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GPT2KitError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k is not None and self.top_k <= 0:
            raise GPT2KitError(f"top_k={self.top_k} must be a positive integer (or None for no limit)")
        if self.max_new_tokens < 0:
            raise GPT2KitError(f"max_new_tokens={self.max_new_tokens} must be >= 0")


def sample_next(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token id per row from logits (B, vocab) → (B, 1)."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= cfg.top_p  # keep the token that crosses p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def stream(model: GPT, prompt: Tensor, cfg: SamplingConfig) -> Iterator[Tensor]:
    """Yield the next token ids (B, 1) one step at a time, continuing ``prompt`` (B, T)."""
    if prompt.size(1) == 0:
        raise GPT2KitError("empty prompt: give at least one token (e.g. the end-of-text token)")
    model.eval()
    block = model.config.block_size
    keep = block - block // 4
    if prompt.size(1) > block:
        log.warning(
            "prompt of %d tokens is longer than the context (%d): keeping the last %d",
            prompt.size(1),
            block,
            block,
        )
        prompt = prompt[:, -block:]
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(cfg.seed)
    cache = model.new_cache(prompt.size(0), block)
    context = prompt
    logits = model(prompt, cache=cache)[:, -1]
    for _ in range(cfg.max_new_tokens):
        token = sample_next(logits, cfg, generator)
        yield token
        context = torch.cat([context, token], dim=1)
        if cache[0].length >= block:  # full: restart from the most recent tokens
            context = context[:, -keep:]
            cache = model.new_cache(prompt.size(0), block)
            logits = model(context, cache=cache)[:, -1]
        else:
            logits = model(token, cache=cache)[:, -1]


def generate(model: GPT, prompt: Tensor, cfg: SamplingConfig) -> Tensor:
    """The prompt followed by ``cfg.max_new_tokens`` sampled tokens, (B, T + new)."""
    new = list(stream(model, prompt, cfg))
    return torch.cat([prompt, *new], dim=1) if new else prompt
