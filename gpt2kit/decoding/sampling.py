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
    """A decode step's ``F.linear`` calls on the CPU, in the kernel that reads the weights fastest.

    Decoding multiplies every weight matrix (and the LM head, whatever component they belong to) by one
    vector per running sequence, so a step's time is reading the weights. PyTorch's CPU ``linear``
    picks a kernel that reads them well below the memory's speed for these shapes. Measured on GPT-2
    small's matrices (the 50257 × 768 head; 2 cores with AVX-512, MKL and oneDNN as torch ships them):

    * one bfloat16 row: ``addmv`` (oneDNN's GEMM reads at about half its speed);
    * one float32 row: a GEMM with the row twice as the right operand, ``weight @ [x, x]ᵀ`` (MKL's
      GEMV reads at about 60% of the speed of its two-column GEMM: 12.0 ms against 7.5 ms for the head);
    * 2 to 16 float32 rows: ``weight @ xᵀ``, the weight as the left operand (21 ms against 30 ms for the
      head at 8 rows).

    Other shapes, dtypes and devices pass through; the results are the same products, rounded in
    another order.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rows = x.numel() // x.shape[-1]
            if x.device.type == "cpu" and rows <= MAX_ROWS and not torch.is_grad_enabled():
                flat = x.reshape(rows, x.shape[-1])
                if weight.dtype == torch.bfloat16 and rows == 1:
                    y = torch.mv(weight, flat[0]) if bias is None else torch.addmv(bias, weight, flat[0])
                    return y.view(*x.shape[:-1], weight.shape[0])
                if weight.dtype == torch.float32 and (rows == 1 or weight.shape[0] >= TALL):
                    cols = torch.cat([flat, flat]) if rows == 1 else flat
                    y = (weight @ cols.T)[:, :rows].T  # (rows, out)
                    y = y if bias is None else y + bias
                    return y.reshape(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


MAX_ROWS = 16
"""Most rows :class:`MatVecLinear` takes (a decode step of up to 16 sequences)."""
TALL = 16384
"""Output features from which several float32 rows go weight-first (an LM head; the blocks' matrices
are faster through ``linear`` at 8 rows: 90.6 against 97.8 ms a step for GPT-2 small)."""
