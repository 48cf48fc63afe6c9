"""Drawing the next token: the penalties, temperature, top-k and top-p of a :class:`SamplingConfig`.

:func:`sample_next` applies, in this order, the penalties (:func:`penalize`), the temperature, top-k
and top-p to the last logits (temperature 0 is greedy) and draws from a seeded generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from gpt2kit.config import SamplingConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; an empty prompt starts from the end-of-text token (or a newline)."""
    if text:
        return tokenizer.encode(text, allowed_special="all")  # a prompt may hold special tokens on purpose
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except GPT2KitError:
        raise GPT2KitError(
            "empty prompt, and this tokenizer has neither an end-of-text token nor a newline to start "
            "from: give a prompt with --prompt"
        ) from None


def penalized(cfg: SamplingConfig) -> bool:
    """Whether ``cfg`` changes any logit before sampling (a penalty is on)."""
    return cfg.repetition_penalty != 1.0 or cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0


def penalize(logits: Tensor, cfg: SamplingConfig, seen: Tensor | None, counts: Tensor | None) -> Tensor:
    """The logits (B, vocab) after the penalties; only the logits of the tokens concerned change.

    ``seen`` (B, vocab) bool marks each row's context (prompt and generated): the repetition penalty
    divides their positive logits (multiplies their negative ones) by ``repetition_penalty``.
    ``counts`` (B, vocab) holds how often each token was generated (the prompt not counted): the
    presence penalty subtracts ``presence_penalty`` from every token generated at least once, the
    frequency penalty ``frequency_penalty`` times its count (OpenAI's definitions).
    """
    logits = logits.float()
    if seen is not None and cfg.repetition_penalty != 1.0:
        rp = cfg.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
    if counts is not None and (cfg.presence_penalty or cfg.frequency_penalty):
        counts = counts.to(logits.dtype)
        logits = (
            logits - cfg.frequency_penalty * counts - cfg.presence_penalty * (counts > 0).to(logits.dtype)
        )
    return logits


def sample_next(
    logits: Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    seen: Tensor | None = None,
    counts: Tensor | None = None,
) -> Tensor:
    """Draw one token id per row from the last logits (B, vocab) → (B,).

    ``seen`` and ``counts`` are what the penalties read (see :func:`penalize`); None: that penalty is off.
    """
    logits = penalize(logits, cfg, seen, counts)
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= cfg.top_p  # keep the token whose mass crosses p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class MatVecLinear(TorchFunctionMode):
    """Runs a one-row bfloat16 ``F.linear`` on the CPU as a matrix-vector product (``addmv``).

    Decoding one sequence multiplies every weight matrix by a single vector. For bfloat16 weights,
    PyTorch's CPU ``linear`` (a oneDNN GEMM) reads them at about half the speed of its ``addmv``
    kernel in that case, so batch-1 decoding on the CPU runs its linear layers (and the LM head,
    whatever component they belong to) through ``addmv``. Other shapes, dtypes and devices pass through.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.numel() == x.shape[-1] and weight.dtype == torch.bfloat16 and x.device.type == "cpu":
                y = (
                    torch.mv(weight, x.reshape(-1))
                    if bias is None
                    else torch.addmv(bias, weight, x.reshape(-1))
                )
                return y.view(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)
