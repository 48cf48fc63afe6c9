"""Continuous batching: many requests share one running decode batch, joining and leaving at token boundaries.

:class:`~gpt2kit.generate.Generation` runs a *static* batch: every prompt starts together and the batch
lives until its longest completion ends. A server cannot wait for that. :class:`BatchingEngine` keeps a
fixed number of **slots** instead, one KV-cache row each, and runs a loop of steps:

1. **Admit.** Queued requests take free slots. Each is prefilled on its own (one batch-1 forward over
   its prompt, the same pass ``generate`` makes for one unpadded prompt), its keys and values are
   copied into its slot's row, and its first token is sampled. Prefill happens between decode steps,
   at most ``prefill_tokens`` prompt tokens per step (but at least one request), so the requests
   already decoding keep producing tokens while new ones arrive.
2. **Decode.** One forward pass feeds every busy slot's last token at that slot's own position. The
   slot cache (:class:`SlotKVCache`) writes each row at its own length and marks the columns a row
   has not filled as invalid, so the attention mask hides them: a request sees exactly its own
   tokens, whoever shares the batch. Free slots in the batch feed a dummy token that nothing reads.
3. **Sample and stop.** Each request draws its next token with its own options and seeded generator
   (:func:`~gpt2kit.generate.sample_next`), then ends on a stop token, a stop string or its token
   budget — the same rules as ``generate``. A finished or cancelled request frees its slot at once;
   the next step may give it to a queued request.

A request whose context fills the model's ``block_size`` slides like ``generate``: it keeps its most
recent ``block_size - block_size // 4`` tokens, re-prefilled into its slot.

The engine runs on one thread (:meth:`BatchingEngine.start`) or is stepped by hand (:meth:`step`), and
talks to its callers only through each :class:`Request`'s listener, called on the engine's thread with
one :class:`Event` per step. It knows nothing of HTTP; ``gpt2kit.serve`` builds the API on it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import Detokenizer, SamplingConfig, sample_next
from gpt2kit.model import GPT
from gpt2kit.nn import KVCache
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the time-to-first-token histogram in :class:`EngineStats`."""


class QueueFull(GPT2KitError):
    """The engine's queue holds ``max_queue`` requests already: try again later."""


class EngineStopped(GPT2KitError):
    """The engine is shutting down and takes no new requests."""


@dataclass
class TokenLogprob:
    """The log-probability of one token under the model (its raw distribution, before sampling options)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    """The most likely alternatives at that position, most likely first."""


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


_ids = itertools.count()


class Request:
    """One prompt to complete, its options, and what it has produced so far."""

    def __init__(
        self,
        prompt: Sequence[int],
        cfg: SamplingConfig,
        listener: Callable[[Event], None] | None = None,
        *,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
    ) -> None:
        """
        Args:
            prompt: token ids (at least one, at most the model's block_size).
            cfg: sampling options and stop conditions.
            listener: called on the engine's thread with each :class:`Event`; its last has a finish_reason.
            presence_penalty: subtracted from the logits of tokens already generated (OpenAI's meaning).
            frequency_penalty: subtracted once per earlier occurrence in the generated tokens.
            logprobs: report each new token's logprob and this many top alternatives (0..5); None: off.
            prompt_logprobs: also report the logprob of each prompt token after the first (``echo``).
        """
        self.id = next(_ids)
        self.prompt = [int(t) for t in prompt]
        self.cfg = cfg
        self.listener = listener
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.logprobs = logprobs
        self.want_prompt_logprobs = prompt_logprobs
        self.prompt_logprobs: list[TokenLogprob | None] = []
        """Filled at prefill when asked: None for the first prompt token, then one per token."""
        self.tokens: list[int] = []
        self.context: list[int] = list(self.prompt)
        self.finish_reason: str | None = None
        self.cancelled = False
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.slot: int | None = None
        self.generator: torch.Generator | None = None
        self.detok: Detokenizer | None = None
        self.shown = 0
        self.next_token: int | None = None
        """The last sampled token, fed at the next decode step."""

    def cancel(self) -> None:
        """Stop this request at the next token boundary (its slot is freed; it ends with ``abort``)."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class SlotKVCache(KVCache):
    """One layer's KV cache seen as slots: row i holds request i's tokens, each row filled to its own length.

    It shares the preallocated tensors of a layer's :class:`KVCache` (from ``GPT.new_cache``) and keeps its
    contract (``append`` returns every cached key, value, position and validity), so every attention
    variant runs on it unchanged. Before each decode step the engine sets :attr:`cols`, the column each
    row writes its new token to; columns a row has not filled stay invalid and are masked out.
    """

    def __init__(self, layer: KVCache) -> None:  # noqa: D107 (no super().__init__: the tensors are shared)
        self.k, self.v, self.pos, self.valid = layer.k, layer.v, layer.pos, layer.valid
        self.max_len = layer.max_len
        self.padded = True  # rows of different lengths: every query needs the mask
        self.length = 0
        self.cols: Tensor | None = None
        """(R,) long: where each of the first R rows writes its token in the next ``append``."""
        self.width = 0
        """How many columns the next ``append`` returns (the longest row afterwards)."""

    def append(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None) -> tuple[Tensor, ...]:
        """Store one new token per row (k, v: (R, h, 1, hs)) at each row's own column; return rows :R."""
        if k.size(2) != 1 or self.cols is None or self.cols.numel() != k.size(0):
            raise GPT2KitError("SlotKVCache takes one token per row of the decode batch (set cols first)")
        R = k.size(0)
        rows = torch.arange(R, device=k.device)
        self.k[rows, :, self.cols] = k[:, :, 0]  # (R, h, hs) at (row, :, its column)
        self.v[rows, :, self.cols] = v[:, :, 0]
        self.pos[rows, self.cols] = pos[:, 0]
        self.valid[rows, self.cols] = True
        w = self.width
        return self.k[:R, :, :w], self.v[:R, :, :w], self.pos[:R, :w], self.valid[:R, :w]

    def load_row(self, row: int, source: KVCache) -> None:
        """Make slot ``row`` hold the tokens of a one-row cache (a prefill), and nothing else."""
        n = source.length
        self.k[row, :, :n] = source.k[0, :, :n]
        self.v[row, :, :n] = source.v[0, :, :n]
        self.pos[row, :n] = source.pos[0, :n]
        self.valid[row] = False
        self.valid[row, :n] = True

    def truncate(self, length: int) -> None:  # slots are reset with load_row, not truncated
        raise GPT2KitError("SlotKVCache rows are replaced with load_row, not truncated")


@dataclass
class EngineStats:
    """Counters for ``/metrics``; read them with :meth:`BatchingEngine.snapshot`."""

    requests_total: int = 0
    """Requests finished (any reason)."""
    requests_by_reason: dict[str, int] = field(default_factory=dict)
    generated_tokens_total: int = 0
    prompt_tokens_total: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS) + 1))
    """Counts per bucket of :data:`TTFT_BUCKETS` (not cumulative), the last one for +Inf."""
    ttft_sum: float = 0.0
    ttft_count: int = 0
    steps_total: int = 0
    active: int = 0
    queued: int = 0


class BatchingEngine:
    """Continuous batching over a slot KV cache; one instance per loaded model."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_tokens: int = 512,
    ) -> None:
        """
        Args:
            model: the model to decode with (its device and dtype are used as they are; int8 works).
            tokenizer: decodes text and stop strings; None: token ids only.
            max_batch: slots, i.e. requests decoding at once.
            max_queue: requests waiting for a slot beyond which :meth:`submit` raises :class:`QueueFull`.
            prefill_tokens: prompt tokens prefilled per step before decoding resumes (at least one request).
        """
        if max_batch < 1:
            raise GPT2KitError(f"max_batch={max_batch} must be >= 1")
        if max_queue < 0:
            raise GPT2KitError(f"max_queue={max_queue} must be >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.cache = [SlotKVCache(layer) for layer in model.new_cache(max_batch, self.block_size)]
        self.slots: list[Request | None] = [None] * max_batch
        self.lengths = [0] * max_batch
        self.queue: collections.deque[Request] = collections.deque()
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- the caller's side (any thread) ----------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        """Queue a request; its listener hears from the engine's thread. Raises QueueFull / EngineStopped."""
        if not request.prompt:
            raise GPT2KitError("empty prompt: give at least one token (e.g. the end-of-text token)")
        if len(request.prompt) > self.block_size:
            raise GPT2KitError(
                f"the prompt is {len(request.prompt)} tokens, longer than the model's {self.block_size}-token "
                "context: shorten it"
            )
        if request.cfg.stop and self.tokenizer is None:
            raise GPT2KitError("stop strings need a tokenizer: give the engine one or use stop_token_ids")
        if bad := [t for t in request.prompt if not 0 <= t < self.vocab_size]:
            raise GPT2KitError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down: it takes no new requests")
            free = sum(s is None for s in self.slots)
            if len(self.queue) >= self.max_queue + free:  # the queue is what waits beyond the free slots
                raise QueueFull(f"{len(self.queue)} requests are waiting already: try again shortly")
            self.queue.append(request)
            self.stats.queued = len(self.queue)
            self._wake.notify()
        return request

    def snapshot(self) -> EngineStats:
        """A consistent copy of the counters."""
        with self._lock:
            s = self.stats
            return EngineStats(
                s.requests_total,
                dict(s.requests_by_reason),
                s.generated_tokens_total,
                s.prompt_tokens_total,
                list(s.ttft_buckets),
                s.ttft_sum,
                s.ttft_count,
                s.steps_total,
                sum(r is not None for r in self.slots),
                len(self.queue),
            )

    def start(self) -> None:
        """Run the step loop on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gpt2kit-engine", daemon=True)
            self._thread.start()

    def stop(self, wait: bool = True, timeout: float = 10.0) -> None:
        """End every queued and running request with ``abort`` (each gets a final event) and stop the loop.

        ``wait=False`` only asks (safe from a signal handler or an event loop); the engine's thread then
        aborts the requests at its next step boundary and exits.
        """
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if not wait:
            return
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._abort_all()

    # -- the engine's thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.queue and all(s is None for s in self.slots):
                    self._wake.wait()
                if self._stopping:
                    break
            self.step()
        self._abort_all()

    def _abort_all(self) -> None:
        with self._lock:
            waiting, self.queue = list(self.queue), collections.deque()
        for req in waiting + [r for r in self.slots if r is not None]:
            self._finish(req, "abort")

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Step until nothing is queued or running (for tests and scripts that use no thread)."""
        for _ in range(max_steps):
            if not self.step():
                return

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit what fits, then decode one token for every running request; False when there was nothing."""
        for req in self.slots:
            if req is not None and req.cancelled:
                self._finish(req, "abort")
        with self._lock:  # requests cancelled while waiting leave the queue now, not when reached
            dropped = [r for r in self.queue if r.cancelled]
            if dropped:
                self.queue = collections.deque(r for r in self.queue if not r.cancelled)
                self.stats.queued = len(self.queue)
        for req in dropped:
            self._finish(req, "abort")
        budget, admitted = self.prefill_tokens, 0
        while None in self.slots:
            with self._lock:
                if not self.queue or (admitted and budget <= 0):
                    break
                req = self.queue.popleft()
                self.stats.queued = len(self.queue)
            admitted += 1
            if req.cancelled:
                self._finish(req, "abort")
                continue
            budget -= len(req.prompt)
            try:
                self._admit(req, self.slots.index(None))
            except Exception as exc:  # a failure of one request's prefill must not take the server down
                log.exception("prefill failed")
                self._finish(req, "error", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        running = [r for r in self.slots if r is not None and not r.done]
        if not running and not any(self.slots):
            return bool(self.queue)
        try:
            self._decode()
        except Exception as exc:
            log.exception("decode step failed")
            for req in [r for r in self.slots if r is not None]:
                self._finish(req, "error", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        with self._lock:
            self.stats.steps_total += 1
        return True

    def _admit(self, req: Request, slot: int) -> None:
        cfg = req.cfg
        req.slot = slot
        self.slots[slot] = req
        if cfg.seed is not None:
            req.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        if self.tokenizer is not None:
            req.detok = Detokenizer(self.tokenizer, cfg.stop)
        req.stop_ids = set(cfg.stop_token_ids)
        if cfg.stop_at_eot and self.tokenizer is not None and self.tokenizer.eot_id is not None:
            req.stop_ids.add(self.tokenizer.eot_id)
        with self._lock:
            self.stats.prompt_tokens_total += len(req.prompt)
        logits = self._prefill(req, req.prompt, all_logits=req.want_prompt_logprobs)
        if req.want_prompt_logprobs:
            lp = logits[0].float().log_softmax(-1)  # (T, vocab): position j predicts token j + 1
            req.prompt_logprobs = [None] + [
                self._logprob(lp[j], req.prompt[j + 1], req.logprobs or 0) for j in range(len(req.prompt) - 1)
            ]
            logits = logits[:, -1:]
        if cfg.max_new_tokens == 0:
            self._finish(req, "length")
            return
        self._sample([req], logits[:, -1])

    def _prefill(self, req: Request, ids: list[int], all_logits: bool = False) -> Tensor:
        """Run ``ids`` alone through a fresh one-row cache and load it into the request's slot; logits."""
        one = self.model.new_cache(1, len(ids))
        x = torch.tensor([ids], device=self.device)  # (1, T)
        logits = self.model(x, cache=one, last_only=not all_logits)  # (1, T or 1, vocab)
        for slot_layer, layer in zip(self.cache, one, strict=True):
            slot_layer.load_row(req.slot, layer)
        self.lengths[req.slot] = len(ids)
        return logits

    def _decode(self) -> None:
        running = [r for r in self.slots if r is not None and r.next_token is not None]
        if not running:
            return
        full = [r for r in running if self.lengths[r.slot] >= self.block_size]
        for req in full:  # the context is full: keep its most recent tokens, as generate does
            keep = self.block_size - self.block_size // 4
            self._sample([req], self._prefill(req, req.context[-keep:])[:, -1])
        feed = [r for r in running if r not in full and not r.done]
        if not feed:
            return
        R = max(r.slot for r in feed) + 1
        tokens = [0] * R
        cols = [0] * R
        for r in feed:
            tokens[r.slot], cols[r.slot] = r.next_token, self.lengths[r.slot]
        # Free slots (and slots that joined this step) below R write a dummy token at their column 0 or
        # at their length; a later load_row overwrites it, and the lengths below do not move.
        fed = {r.slot for r in feed}
        for i in range(R):
            if i not in fed:
                cols[i] = self.lengths[i] if self.slots[i] is not None else 0
        col_t = torch.tensor(cols, device=self.device)
        width = max(cols) + 1
        for layer in self.cache:
            layer.cols, layer.width = col_t, width
        ids = torch.tensor(tokens, device=self.device)[:, None]  # (R, 1)
        logits = self.model(ids, pos=col_t[:, None], cache=self.cache)[:, -1]  # (R, vocab)
        for r in feed:
            self.lengths[r.slot] += 1
        self._sample(feed, logits[[r.slot for r in feed]])

    def _sample(self, reqs: list[Request], logits: Tensor) -> None:
        """Draw each request's next token from its row of ``logits`` (len(reqs), vocab) and deliver it."""
        plain = [
            i
            for i, r in enumerate(reqs)
            if r.cfg.temperature == 0
            and r.cfg.repetition_penalty == 1.0
            and not r.presence_penalty
            and not r.frequency_penalty
        ]
        chosen: list[int] = [0] * len(reqs)
        if plain:  # greedy rows: one argmax, one copy to the host
            for i, t in zip(plain, logits[plain].float().argmax(-1).tolist(), strict=True):
                chosen[i] = t
        for i, r in enumerate(reqs):
            if i not in plain:
                chosen[i] = int(self._draw(r, logits[i : i + 1]))
        want = [i for i, r in enumerate(reqs) if r.logprobs is not None]
        lps = logits[want].float().log_softmax(-1) if want else None
        for j, i in enumerate(want):
            reqs[i].pending_logprob = self._logprob(lps[j], chosen[i], reqs[i].logprobs)
        for r, t in zip(reqs, chosen, strict=True):
            self._accept(r, t)

    def _draw(self, req: Request, logits: Tensor) -> Tensor:
        logits = logits.float()
        if req.presence_penalty or req.frequency_penalty:
            counts = torch.bincount(
                torch.tensor(req.tokens, dtype=torch.long, device=logits.device), minlength=self.vocab_size
            )[: self.vocab_size].to(logits.dtype)
            logits = logits - req.frequency_penalty * counts - req.presence_penalty * (counts > 0).float()
        seen = None
        if req.cfg.repetition_penalty != 1.0:
            seen = torch.zeros(1, self.vocab_size, dtype=torch.bool, device=logits.device)
            seen[0, torch.tensor(req.context, device=logits.device)] = True
        return sample_next(logits, req.cfg, req.generator, seen)[0]

    @staticmethod
    def _logprob(lp: Tensor, token: int, top: int) -> TokenLogprob:
        alts: list[tuple[int, float]] = []
        if top:
            values, idx = lp.topk(top)
            alts = list(zip(idx.tolist(), values.tolist(), strict=True))
        return TokenLogprob(int(token), float(lp[token]), alts)

    def _accept(self, req: Request, token: int) -> None:
        """Record a sampled token: deliver it, or end the request (mirrors Generation's rules)."""
        ev = Event()
        lp = getattr(req, "pending_logprob", None)
        req.pending_logprob = None
        if req.first_token_at is None:
            req.first_token_at = time.monotonic()
            self._observe_ttft(req.first_token_at - req.submitted)
        if token in req.stop_ids:
            req.next_token = None
            self._finish(req, "stop")
            return
        req.tokens.append(token)
        req.context.append(token)
        req.next_token = token
        ev.tokens.append(token)
        if lp is not None:
            ev.logprobs.append(lp)
        with self._lock:
            self.stats.generated_tokens_total += 1
        reason = None
        if req.detok is not None and req.detok.add(token):
            reason = "stop"
        elif len(req.tokens) >= req.cfg.max_new_tokens:
            reason = "length"
        if reason is not None:
            self._finish(req, reason, first=ev)
            return
        if req.detok is not None:
            end = req.detok.safe_end()
            if end > req.shown:
                ev.text, req.shown = req.detok.text[req.shown : end], end
        self._emit(req, ev)

    def _finish(
        self, req: Request, reason: str, first: Event | None = None, error: str | None = None
    ) -> None:
        if req.done:
            return
        req.finish_reason = reason
        ev = first or Event()
        ev.finish_reason, ev.error = reason, error
        if req.detok is not None:
            req.detok.flush()
            final = req.detok.final
            if len(final) > req.shown:
                ev.text, req.shown = final[req.shown :], len(final)
        if req.slot is not None and self.slots[req.slot] is req:
            self.slots[req.slot] = None
            self.lengths[req.slot] = 0
        req.next_token = None
        with self._lock:
            self.stats.requests_total += 1
            self.stats.requests_by_reason[reason] = self.stats.requests_by_reason.get(reason, 0) + 1
        self._emit(req, ev)

    def _emit(self, req: Request, ev: Event) -> None:
        if req.listener is None:
            return
        try:
            req.listener(ev)
        except Exception:  # a listener that fails (a closed connection) cancels its request
            log.debug("listener of request %d failed; cancelling it", req.id, exc_info=True)
            req.cancel()

    def _observe_ttft(self, seconds: float) -> None:
        with self._lock:
            s = self.stats
            s.ttft_sum += seconds
            s.ttft_count += 1
            s.ttft_buckets[
                next((i for i, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
            ] += 1

    # -- a convenience for scripts and tests -----------------------------------------------------------------
    def complete(
        self, prompts: Sequence[Sequence[int]], cfgs: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[Request]:
        """Submit prompts together and step (on this thread) until all are done; the finished requests."""
        if isinstance(cfgs, SamplingConfig):
            cfgs = [cfgs] * len(prompts)
        reqs = [self.submit(Request(p, c)) for p, c in zip(prompts, cfgs, strict=True)]
        self.run_until_idle()
        return reqs

    def text(self, req: Request) -> str:
        """The completion's text (up to a stop string), once it is done."""
        if req.detok is None:
            raise GPT2KitError("the engine has no tokenizer: read req.tokens instead")
        return req.detok.final
