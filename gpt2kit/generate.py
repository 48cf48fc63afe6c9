"""Sampling from a GPT: the one generation engine behind ``generate``, ``predict`` and chat.

How one batch of prompts becomes completions (:class:`Generation`):

1. **Prefill.** Prompts of different lengths are *left*-padded to a common length ``L``. Each row
   gets its own positions (its first real token is position 0) and a ``valid`` mask that hides the
   padding, so a padded row sees exactly what it would see alone. One forward pass fills a KV cache
   preallocated for ``L + max_new_tokens`` tokens (at most ``block_size``).
2. **Decode.** Each step feeds one token per row at its own next position; the cache holds every key
   and value seen so far, so a step reads each weight once and builds nothing that grows per token.
3. **Sample.** :func:`sample_next` applies, in this order, the repetition penalty, the temperature,
   top-k and top-p to the last logits (temperature 0 is greedy) and draws from a seeded generator.
4. **Stop.** A row finishes when it draws a stop token (not part of its completion), when its text
   contains a stop string (the completion's text ends before it), or after ``max_new_tokens``.
   Finished rows draw nothing more; the loop ends when every row has finished.

Context policy: a prompt longer than ``block_size`` keeps its most recent ``block_size`` tokens (with a
warning). When the cache is full during decoding, every row keeps its most recent
``block_size - block_size // 4`` tokens, which are prefilled into a fresh cache (one extra forward
pass every ``block_size // 4`` tokens instead of one per token). Positions therefore never exceed
``block_size - 1``, the last entry of a learned position table.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from gpt2kit.config import SamplingConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

FINISHED = -1
"""What a row that has already finished yields in a step of :class:`Generation` or :func:`stream`."""


@dataclass
class Completion:
    """What one prompt became."""

    tokens: list[int]
    """The generated token ids (without the prompt and without a stop token)."""
    text: str | None
    """The generated text, ending before a stop string; None when no tokenizer was given."""
    finish_reason: str
    """``"stop"`` (a stop token or string) or ``"length"`` (max_new_tokens or nothing left to do)."""
    prompt_tokens: int
    """How many prompt tokens the model saw (after cropping to the context)."""


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


def sample_next(
    logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None, seen: Tensor | None = None
) -> Tensor:
    """Draw one token id per row from the last logits (B, vocab) → (B,).

    ``seen`` (B, vocab) bool marks the tokens in each row's context, for the repetition penalty.
    """
    logits = logits.float()
    if seen is not None and cfg.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
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


class _MatVecLinear(TorchFunctionMode):
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


class _Detokenizer:
    """Incremental decoding of one row: whole characters only, cut at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending: list[int] = []
        self.text = ""
        self.cut: int | None = None
        """Where the first stop string begins in ``text``, once one has appeared."""

    def add(self, token: int) -> bool:
        """Append a token; True when a stop string has now appeared."""
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)
        # A multi-byte character split across tokens decodes to U+FFFD until its last byte arrives
        # (at most 4 bytes, so give up waiting after 4 tokens: the model produced invalid UTF-8).
        if piece.endswith("\ufffd") and len(self.pending) < 4:
            return False
        self.pending = []
        return self._append(piece)

    @property
    def final(self) -> str:
        """The text, up to the first stop string if one appeared."""
        return self.text[: self.cut]

    def flush(self) -> None:
        if self.pending:
            self._append(self.tokenizer.decode(self.pending))
            self.pending = []

    def _append(self, piece: str) -> bool:
        start = max(0, len(self.text) - self.longest + 1)  # a new stop string ends in the new piece
        self.text += piece
        if self.cut is None and self.stops:
            found = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
            self.cut = min(found) if found else None
        return self.cut is not None

    def safe_end(self) -> int:
        """How much of ``text`` can be shown: up to a stop string, minus a possible start of one."""
        if self.cut is not None:
            return self.cut
        held = max(
            (k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])),
            default=0,
        )
        return len(self.text) - held


Detokenizer = _Detokenizer
"""Public name of the incremental detokenizer, for other decoders (the continuous-batching engine)."""


class PromptCache:
    """A batch-1 KV cache kept from one generation to the next, e.g. across the turns of a chat.

    A :class:`Generation` given one prefills only what follows the longest prefix of its prompt that
    the cache already holds (at least the last prompt token, whose logits it needs). The next turn of
    a chat extends the previous prompt and reply, so it costs only its new tokens. The cache spans the
    model's whole context; it is rebuilt when the model, its dtype or its device changes.
    """

    def __init__(self) -> None:
        self.kv: list | None = None
        self.tokens: list[int] = []
        """The ids whose keys and values the cache holds, in order from position 0."""
        self.reused = 0
        """How many prompt tokens the last generation took from the cache instead of computing them."""
        self._model: GPT | None = None

    def clear(self) -> None:
        """Forget everything (the next prompt is computed in full)."""
        self.tokens, self.reused = [], 0
        if self.kv is not None:
            for layer in self.kv:
                layer.truncate(0)

    def _attach(self, model: GPT) -> list:
        ref = next(model.parameters())
        kv = self.kv
        if (
            kv is None
            or self._model is not model
            or kv[0].k.dtype != ref.dtype
            or kv[0].k.device != ref.device
        ):
            self.kv, self._model, self.tokens = model.new_cache(1, model.config.block_size), model, []
        return self.kv


class Generation:
    """One batched generation run; iterate it to get each step's new token per row.

    Iterating yields one ``list[int]`` per step (one id per row, :data:`FINISHED` for rows that are
    done); :meth:`completions` gives the results afterwards. A tokenizer is needed for stop strings,
    end-of-text and the completions' text.
    """

    def __init__(
        self,
        model: GPT,
        prompts: Tensor | Sequence[Sequence[int]],
        cfg: SamplingConfig,
        tokenizer: Tokenizer | None = None,
        cache: PromptCache | None = None,
    ) -> None:
        """
        Args:
            model: the model (its device and dtype are used as they are).
            prompts: token ids, (B, T) or a list of B lists of any lengths.
            cfg: sampling options.
            tokenizer: decodes completions and stop strings; None: token ids only.
            cache: a KV cache kept between generations of one prompt each (chat turns): the prompt's
                prefix that it already holds is not computed again, and it holds prompt and completion
                afterwards. None: a fresh cache for this run.
        """
        rows = prompts.tolist() if isinstance(prompts, Tensor) else [[int(t) for t in p] for p in prompts]
        if not rows:
            raise GPT2KitError("no prompts given: pass at least one prompt")
        if any(len(r) == 0 for r in rows):
            raise GPT2KitError("empty prompt: give at least one token (e.g. the end-of-text token)")
        if cache is not None and len(rows) != 1:
            raise GPT2KitError(f"a PromptCache serves one prompt at a time, got a batch of {len(rows)}")
        if cfg.stop and tokenizer is None:
            raise GPT2KitError(
                f"stop strings {cfg.stop} need a tokenizer: pass tokenizer= or use stop_token_ids"
            )
        self.model = model
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        longest = max(len(r) for r in rows)
        if longest > self.block_size:
            log.warning(
                "prompt of %d tokens is longer than the context (%d): keeping its last %d tokens",
                longest,
                self.block_size,
                self.block_size,
            )
            rows = [r[-self.block_size :] for r in rows]
        self.context = rows
        """Each row's prompt and generated tokens (what a context slide keeps the end of)."""
        self.prompt_tokens = [len(r) for r in rows]
        self.new_tokens: list[list[int]] = [[] for _ in rows]
        self.finish_reason: list[str | None] = [None] * len(rows)
        self.stop_ids = set(cfg.stop_token_ids)
        if cfg.stop_at_eot and tokenizer is not None and tokenizer.eot_id is not None:
            self.stop_ids.add(tokenizer.eot_id)
        self.text = [_Detokenizer(tokenizer, cfg.stop) for _ in rows] if tokenizer is not None else None
        param = next(model.parameters())
        self.device = param.device
        self.generator = None
        if cfg.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        fast_path = self.batch_size == 1 and self.device.type == "cpu" and param.dtype == torch.bfloat16
        self.matvec = _MatVecLinear() if fast_path else contextlib.nullcontext()
        self.cache: list | None = None
        self.next_pos: Tensor | None = None  # (B,) each row's next position
        self.prompt_cache = cache

    @property
    def batch_size(self) -> int:
        return len(self.context)

    def _prefill(self, rows: list[list[int]], room: int) -> Tensor:
        """Run left-padded ``rows`` through a fresh cache with ``room`` free slots; last logits (B, vocab)."""
        if self.prompt_cache is not None:
            return self._prefill_reusing(rows[0])
        lengths = [len(r) for r in rows]
        L = max(lengths)
        # Padding repeats the row's first token: it is masked out of attention, and keeps ids valid.
        ids = torch.tensor([[r[0]] * (L - len(r)) + r for r in rows], device=self.device)  # (B, L)
        pos = valid = None
        if min(lengths) < L:
            pad = torch.tensor([L - n for n in lengths], device=self.device)[:, None]  # (B, 1)
            cols = torch.arange(L, device=self.device)[None, :]  # (1, L)
            valid = cols >= pad  # (B, L) False on padding
            pos = (cols - pad).clamp(min=0)  # (B, L) each row starts at position 0
        self.cache = self.model.new_cache(len(rows), min(self.block_size, L + room))
        self.next_pos = torch.tensor(lengths, device=self.device)
        return self.model(ids, pos=pos, valid=valid, cache=self.cache, last_only=True)[:, -1]  # (B, vocab)

    def _prefill_reusing(self, row: list[int]) -> Tensor:
        """Prefill one row into the kept cache from the end of the prefix it already holds; (1, vocab)."""
        kept = self.prompt_cache
        self.cache = kept._attach(self.model)
        n, limit = 0, min(len(row) - 1, len(kept.tokens))  # the last prompt token is always fed: its logits
        while n < limit and row[n] == kept.tokens[n]:
            n += 1
        for layer in self.cache:
            layer.truncate(n)
        kept.tokens, kept.reused = row[:n], n  # true even if the forward below is interrupted
        ids = torch.tensor([row[n:]], device=self.device)  # (1, T - n) positions continue from n
        logits = self.model(ids, cache=self.cache, last_only=True)[:, -1]
        kept.tokens = list(row)
        self.next_pos = torch.tensor([len(row)], device=self.device)
        return logits

    def _seen(self) -> Tensor | None:
        if self.cfg.repetition_penalty == 1.0:
            return None
        vocab = self.model.config.vocab_size
        seen = torch.zeros(self.batch_size, vocab, dtype=torch.bool, device=self.device)
        for i, row in enumerate(self.context):
            seen[i, torch.tensor(row, device=self.device)] = True
        return seen

    def _accept(self, i: int, token: int) -> int:
        """Record row i's new token; FINISHED if it ends the row without being part of it."""
        if token in self.stop_ids:
            self.finish_reason[i] = "stop"
            return FINISHED
        self.new_tokens[i].append(token)
        self.context[i].append(token)
        if self.text is not None and self.text[i].add(token):
            self.finish_reason[i] = "stop"
        elif len(self.new_tokens[i]) >= self.cfg.max_new_tokens:
            self.finish_reason[i] = "length"
        return token

    def __iter__(self) -> Iterator[list[int]]:
        model, cfg = self.model, self.cfg
        was_training = model.training
        model.eval()
        try:
            yield from self._steps(model, cfg)
        finally:
            model.train(was_training)
            for i, reason in enumerate(self.finish_reason):
                if reason is None:
                    self.finish_reason[i] = "length"
            for text in self.text or []:
                text.flush()

    @torch.inference_mode()  # entered around each step only: the caller's code between steps is not affected
    def _steps(self, model: GPT, cfg: SamplingConfig) -> Iterator[list[int]]:
        if cfg.max_new_tokens == 0:
            return
        logits = self._prefill(self.context, cfg.max_new_tokens)
        seen = self._seen()
        for step in range(cfg.max_new_tokens):
            token = sample_next(logits, cfg, self.generator, seen)  # (B,)
            ids = token.tolist()  # the one copy to the host this step
            out = [
                FINISHED if self.finish_reason[i] is not None else self._accept(i, t)
                for i, t in enumerate(ids)
            ]
            yield out
            if all(r is not None for r in self.finish_reason) or step == cfg.max_new_tokens - 1:
                return
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            if self.cache[0].length >= self.cache[0].max_len:  # full: keep the most recent tokens
                keep = self.block_size - self.block_size // 4
                logits = self._prefill([r[-keep:] for r in self.context], cfg.max_new_tokens - step - 1)
            else:  # finished rows still step (their token is ignored): the batch keeps its shape
                with self.matvec:
                    logits = model(token[:, None], pos=self.next_pos[:, None], cache=self.cache)[:, -1]
                self.next_pos += 1
                if self.prompt_cache is not None:
                    self.prompt_cache.tokens.append(ids[0])

    def completions(self) -> list[Completion]:
        """The results, once iteration has ended."""
        return [
            Completion(
                tokens=self.new_tokens[i],
                text=None if self.text is None else self.text[i].final,
                finish_reason=self.finish_reason[i] or "length",
                prompt_tokens=self.prompt_tokens[i],
            )
            for i in range(self.batch_size)
        ]


def generate(
    model: GPT,
    prompts: Tensor | Sequence[Sequence[int]],
    cfg: SamplingConfig,
    tokenizer: Tokenizer | None = None,
) -> list[Completion]:
    """Complete a batch of prompts (token ids, any lengths); one :class:`Completion` per prompt."""
    run = Generation(model, prompts, cfg, tokenizer)
    for _ in run:
        pass
    return run.completions()


def stream(
    model: GPT, prompt: Tensor, cfg: SamplingConfig, tokenizer: Tokenizer | None = None
) -> Iterator[Tensor]:
    """Yield each step's new token ids (B, 1) as they are produced (:data:`FINISHED` for done rows)."""
    for step in Generation(model, prompt, cfg, tokenizer):
        yield torch.tensor(step)[:, None]


def stream_text(
    model: GPT, tokenizer: Tokenizer, prompt: str | Sequence[int], cfg: SamplingConfig
) -> Iterator[str]:
    """Yield the completion of one prompt as text, piece by piece, as soon as each piece is final.

    Text that might be the start of a stop string is held back until it is clearly not one.
    """
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    yield from text_pieces(Generation(model, [ids], cfg, tokenizer))


def text_pieces(run: Generation) -> Iterator[str]:
    """Run a one-prompt generation, yielding its text as soon as each piece is final (stop strings cut)."""
    shown = 0
    text = run.text[0]
    for _ in run:
        end = text.safe_end()
        if end > shown:
            yield text.text[shown:end]
            shown = end
    end = len(text.final)
    if end > shown:
        yield text.text[shown:end]
