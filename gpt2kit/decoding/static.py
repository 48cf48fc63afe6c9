"""Static batches on the one engine: submit every prompt, run until idle (``generate``, ``predict``,
``evaluate``'s generate_until), and one prompt streamed as text (the ``generate`` command)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

from torch import Tensor

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.engine import Engine
from gpt2kit.decoding.sampling import encode_prompt
from gpt2kit.decoding.sequence import Completion, Request
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)


def _rows(model: GPT, prompts: Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    rows = prompts.tolist() if isinstance(prompts, Tensor) else [[int(t) for t in p] for p in prompts]
    if not rows:
        raise GPT2KitError("no prompts given: pass at least one prompt")
    if any(len(r) == 0 for r in rows):
        raise GPT2KitError("empty prompt: give at least one token (e.g. the end-of-text token)")
    block = model.config.block_size
    longest = max(len(r) for r in rows)
    if longest > block:
        log.warning(
            "prompt of %d tokens is longer than the context (%d): keeping its last %d tokens",
            longest,
            block,
            block,
        )
        rows = [r[-block:] for r in rows]
    return rows


def static_engine(
    model: GPT, rows: list[list[int]], cfg: SamplingConfig, tokenizer: Tokenizer | None
) -> Engine:
    """An engine sized for one static batch: a slot per prompt, a cache as long as the batch needs, and a
    prefill budget that admits every prompt at the first step, in one left-padded forward."""
    longest = max(len(r) for r in rows)
    return Engine(
        model,
        tokenizer,
        max_batch=len(rows),
        max_queue=0,
        cache_len=longest + cfg.max_new_tokens,
        prefill_tokens=max(512, len(rows) * longest),
    )


def requests_for(rows: list[list[int]], cfg: SamplingConfig) -> list[Request]:
    """One request per prompt; with a seed, prompt i samples with ``seed + i`` (reproducible per batch)."""
    return [
        Request(r, cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + i))
        for i, r in enumerate(rows)
    ]


def generate(
    model: GPT,
    prompts: Tensor | Sequence[Sequence[int]],
    cfg: SamplingConfig,
    tokenizer: Tokenizer | None = None,
) -> list[Completion]:
    """Complete a batch of prompts (token ids, any lengths; longer than the context: their end); one
    :class:`~gpt2kit.decoding.sequence.Completion` per prompt."""
    rows = _rows(model, prompts)
    engine = static_engine(model, rows, cfg, tokenizer)
    reqs = [engine.submit(r) for r in requests_for(rows, cfg)]
    engine.run_until_idle()
    return [r.completion() for r in reqs]


def stream_text(
    model: GPT, tokenizer: Tokenizer, prompt: str | Sequence[int], cfg: SamplingConfig
) -> Iterator[str]:
    """Yield the completion of one prompt as text, piece by piece, as soon as each piece is final.

    Text that might be the start of a stop string is held back until it is clearly not one.
    """
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    rows = _rows(model, [ids])
    engine = static_engine(model, rows, cfg, tokenizer)
    for ev in engine.stream(requests_for(rows, cfg)[0]):
        if ev.text:
            yield ev.text
