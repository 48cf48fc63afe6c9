"""One request's rules: its context, stop tokens and strings, seeded generator, text, slide and end.

A :class:`Request` is what goes into the engine (:mod:`gpt2kit.decoding.engine`): prompt ids and one
:class:`~gpt2kit.config.SamplingConfig`. Everything that concerns that request alone lives here, so the
engine only schedules slots and runs the model:

* **stop tokens**: ``stop_token_ids``, plus the tokenizer's end-of-text when ``stop_at_eot``; a stop
  token ends the request and is not part of its completion;
* **stop strings**: the :class:`Detokenizer` decodes the new tokens incrementally (whole characters
  only) and cuts the text before the first stop string, even one that spans tokens; text that might be
  the start of a stop string is held back until it is clearly not one;
* **the budget**: ``max_new_tokens`` ends it with ``length``;
* **the slide**: when the context fills the model's ``block_size``, the request keeps its most recent
  ``block_size - block_size // 4`` tokens (:meth:`Request.slide`), which the engine prefills again —
  one extra forward pass every ``block_size // 4`` tokens instead of one per token, and positions never
  exceed ``block_size - 1``;
* **the penalties' state**: which tokens the context holds and how often each was generated.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpt2kit.config import SamplingConfig
from gpt2kit.tokenizers import Tokenizer


class Detokenizer:
    """Incremental decoding of one completion: whole characters only, cut at the first stop string."""

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
        """Decode what is still pending (an incomplete character at the end)."""
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


@dataclass
class TokenLogprob:
    """The log-probability of one token under the model (its raw distribution, before sampling options)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    """The most likely alternatives at that position, most likely first."""

    @classmethod
    def of(cls, lp: Tensor, token: int, top: int) -> TokenLogprob:
        """``token``'s entry in a row of log-probabilities ``lp`` (vocab,), with the ``top`` most likely."""
        alts: list[tuple[int, float]] = []
        if top:
            values, idx = lp.topk(top)
            alts = list(zip(idx.tolist(), values.tolist(), strict=True))
        return cls(int(token), float(lp[token]), alts)


@dataclass
class Event:
    """What one step of the engine produced for one request."""

    text: str = ""
    """New text that is final (a possible start of a stop string is held back)."""
    tokens: list[int] = field(default_factory=list)
    """New token ids (a stop token is not among them)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """One per new token, when the request asked for logprobs."""
    finish_reason: str | None = None
    """Set on a request's last event: ``stop``, ``length``, ``abort`` (cancelled or shut down) or ``error``."""
    error: str | None = None
    """Why the request failed, when ``finish_reason`` is ``error``."""


@dataclass
class Completion:
    """What one prompt became (the result of :func:`gpt2kit.decoding.generate`)."""

    tokens: list[int]
    """The generated token ids (without the prompt and without a stop token)."""
    text: str | None
    """The generated text, ending before a stop string; None when no tokenizer was given."""
    finish_reason: str
    """``"stop"`` (a stop token or string) or ``"length"`` (max_new_tokens or nothing left to do)."""
    prompt_tokens: int
    """How many prompt tokens the model saw (after cropping to the context)."""


_ids = itertools.count()


class Request:
    """One prompt to complete, its options, and what it has produced so far."""

    def __init__(
        self,
        prompt: Sequence[int],
        cfg: SamplingConfig,
        listener: Callable[[Event], None] | None = None,
        *,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        keep_cache: bool = False,
    ) -> None:
        """
        Args:
            prompt: token ids (at least one, at most the model's block_size).
            cfg: sampling options and stop conditions (the penalties included).
            listener: called on the engine's thread with each :class:`Event`; its last has a finish_reason.
            logprobs: report each new token's logprob and this many top alternatives (0..5); None: off.
            prompt_logprobs: also report the logprob of each prompt token after the first (``echo``).
            keep_cache: keep this request's cache row when it ends, so that a next request that starts
                with the same tokens (the next turn of a chat) computes only what follows them.
        """
        self.id = next(_ids)
        self.prompt = [int(t) for t in prompt]
        self.cfg = cfg
        self.listener = listener
        self.logprobs = logprobs
        self.want_prompt_logprobs = prompt_logprobs
        self.keep_cache = keep_cache
        self.prompt_logprobs: list[TokenLogprob | None] = []
        """Filled at prefill when asked: None for the first prompt token, then one per token."""
        self.tokens: list[int] = []
        """The generated ids (a stop token excluded)."""
        self.context: list[int] = list(self.prompt)
        """The prompt and the generated ids: what a slide keeps the end of."""
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancelled = False
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.slot: int | None = None
        self.reused = 0
        """Prompt tokens taken from a kept cache row instead of computed (see ``keep_cache``)."""
        self.stop_ids: set[int] = set(cfg.stop_token_ids)
        self.generator: torch.Generator | None = None
        self.detok: Detokenizer | None = None
        self.shown = 0
        """How much of the text the events have delivered."""
        self.next_token: int | None = None
        """The last sampled token, fed at the next decode step."""
        self.pending_logprob: TokenLogprob | None = None
        """The logprob of the token being accepted, delivered with it."""

    @property
    def presence_penalty(self) -> float:
        return self.cfg.presence_penalty

    @property
    def frequency_penalty(self) -> float:
        return self.cfg.frequency_penalty

    def cancel(self) -> None:
        """Stop this request at the next token boundary (its slot is freed; it ends with ``abort``)."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str | None:
        """The completion's text so far (up to a stop string); None without a tokenizer."""
        return None if self.detok is None else self.detok.final

    # -- the rules, applied by the engine ----------------------------------------------------------------
    def begin(self, tokenizer: Tokenizer | None, device: torch.device) -> None:
        """Set up what the rules need when the request gets a slot: stop ids, generator, detokenizer."""
        if self.cfg.stop_at_eot and tokenizer is not None and tokenizer.eot_id is not None:
            self.stop_ids.add(tokenizer.eot_id)
        if self.cfg.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        if tokenizer is not None:
            self.detok = Detokenizer(tokenizer, self.cfg.stop)

    def penalty_state(self, vocab: int, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """(seen (1, vocab) bool over the context, counts (1, vocab) of generated ids), None where off."""
        seen = counts = None
        if self.cfg.repetition_penalty != 1.0:
            seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            seen[0, torch.tensor(self.context, device=device)] = True
        if self.cfg.presence_penalty or self.cfg.frequency_penalty:
            ids = torch.tensor(self.tokens, dtype=torch.long, device=device)
            counts = torch.bincount(ids, minlength=vocab)[:vocab][None]
        return seen, counts

    def accept(self, token: int) -> tuple[Event, str | None]:
        """Record a sampled token: the event that delivers it, and the finish reason if it ends the request."""
        ev = Event()
        lp, self.pending_logprob = self.pending_logprob, None
        if token in self.stop_ids:  # not part of the completion
            self.next_token = None
            return ev, "stop"
        self.tokens.append(token)
        self.context.append(token)
        self.next_token = token
        ev.tokens.append(token)
        if lp is not None:
            ev.logprobs.append(lp)
        if self.detok is not None and self.detok.add(token):
            return ev, "stop"
        if len(self.tokens) >= self.cfg.max_new_tokens:
            return ev, "length"
        if self.detok is not None:
            end = self.detok.safe_end()
            if end > self.shown:
                ev.text, self.shown = self.detok.text[self.shown : end], end
        return ev, None

    def end(self, reason: str, ev: Event | None = None, error: str | None = None) -> Event:
        """Mark the request finished; its last event, with the rest of its text (up to a stop string)."""
        self.finish_reason, self.error, self.next_token = reason, error, None
        ev = ev or Event()
        ev.finish_reason, ev.error = reason, error
        if self.detok is not None:
            self.detok.flush()
            final = self.detok.final
            if len(final) > self.shown:
                ev.text, self.shown = final[self.shown :], len(final)
        return ev

    @staticmethod
    def slide_keep(block_size: int) -> int:
        """How many of the most recent tokens a full context keeps."""
        return block_size - block_size // 4

    def completion(self) -> Completion:
        """The result, once done."""
        return Completion(
            tokens=list(self.tokens),
            text=self.text,
            finish_reason=self.finish_reason or "length",
            prompt_tokens=len(self.prompt),
        )
