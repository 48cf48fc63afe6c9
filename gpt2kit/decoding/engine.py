"""The one decoding engine: requests share a running decode batch, joining and leaving at token boundaries.

``generate``, ``predict``, the chat session, ``evaluate``'s generate_until and ``serve`` are its clients:
a static batch is "submit all, run until idle" (:func:`gpt2kit.decoding.static.generate`), a chat session is a request whose
cache row is kept between turns (``Request(keep_cache=True)``), a server submits from its own threads
while :meth:`Engine.start` runs the loop. The engine keeps a fixed number of **slots**, one KV-cache row
each, and runs a loop of steps:

1. **Admit.** Queued requests take free slots, at most ``prefill_tokens`` prompt tokens per step (but at
   least one request), so the requests already decoding keep producing tokens while new ones arrive;
   with none decoding, every queued request that has a slot (and a burst that arrives at an idle engine
   is gathered first, for a few milliseconds).
   The requests admitted together are **prefilled as one batch** (left-padded, each row masked to see
   what it would see alone; :mod:`~gpt2kit.decoding.prefill`), their rows copied into their slots and
   their first tokens sampled. A prompt longer than ``prefill_tokens`` is prefilled alone, in chunks of
   that many tokens. A request whose prompt starts with the tokens a kept row holds (the next turn of a
   chat) computes only what follows them.
2. **Decode.** One forward pass feeds every busy slot's last token at that slot's own position. The
   slot cache (:class:`SlotKVCache`) writes each row at its own length and marks the columns a row has
   not filled as invalid, so the attention mask hides them: a request sees exactly its own tokens,
   whoever shares the batch. On the CPU the linear layers take the kernel that reads their weights
   fastest for a step's few rows (:class:`~gpt2kit.decoding.sampling.MatVecLinear`), and one unpadded
   row needs no mask.
3. **Sample and stop.** Each request draws its next token with its own options and seeded generator
   (:func:`~gpt2kit.decoding.sampling.sample_next`); greedy rows without penalties share one argmax.
   The request's own rules (:class:`~gpt2kit.decoding.sequence.Request`) end it on a stop token, a stop
   string or its token budget; a finished or cancelled request frees its slot at once.

The engine runs on one thread (:meth:`Engine.start`) or is stepped by hand (:meth:`Engine.step`), and
talks to its callers only through each request's listener, called on the engine's thread with one
:class:`~gpt2kit.decoding.sequence.Event` per step. It knows nothing of HTTP.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.prefill import batches, prefill_batch, prefill_row
from gpt2kit.decoding.sampling import MAX_ROWS, MatVecLinear, penalized, sample_next
from gpt2kit.decoding.sequence import Event, Request, TokenLogprob
from gpt2kit.decoding.slots import SlotKVCache
from gpt2kit.decoding.stats import EngineStats
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

BURST_GAP_S, BURST_WAIT_S = 0.003, 0.02
"""An idle engine woken by a request waits while more arrive, each within BURST_GAP_S of the last, for
BURST_WAIT_S at most (:meth:`Engine._gather_burst`): clients that start together are prefilled together."""


class QueueFull(GPT2KitError):
    """The engine's queue holds ``max_queue`` requests already: try again later."""


class EngineStopped(GPT2KitError):
    """The engine is shutting down and takes no new requests."""


class Engine:
    """Continuous batching over a slot KV cache; one instance per loaded model."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_tokens: int = 512,
        cache_len: int | None = None,
    ) -> None:
        """
        Args:
            model: the model to decode with (its device and dtype are used as they are; int8 works).
            tokenizer: decodes text and stop strings; None: token ids only.
            max_batch: slots, i.e. requests decoding at once.
            max_queue: requests waiting for a slot beyond which :meth:`submit` raises :class:`QueueFull`.
            prefill_tokens: prompt tokens prefilled per step before decoding resumes (at least one
                request), and the size of one prefill chunk.
            cache_len: tokens each slot holds (default and most: the model's block_size); a static batch
                that needs fewer allocates fewer.
        """
        if max_batch < 1:
            raise GPT2KitError(f"max_batch={max_batch} must be >= 1")
        if max_queue < 0:
            raise GPT2KitError(f"max_queue={max_queue} must be >= 0")
        if prefill_tokens < 1:
            raise GPT2KitError(f"prefill_tokens={prefill_tokens} must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens
        self.block_size = model.config.block_size
        self.cache_len = min(cache_len or self.block_size, self.block_size)
        self.vocab_size = model.config.vocab_size
        param = next(model.parameters())
        self.device = param.device
        dtypes = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
        # MatVecLinear sees every op of a step, so it is entered only for the rows where it changes a kernel:
        # up to MAX_ROWS with float32 linear layers, one with bfloat16 ones, never with int8 ones
        self._matvec_rows = 0 if self.device.type != "cpu" else (
            MAX_ROWS if torch.float32 in dtypes else 1 if torch.bfloat16 in dtypes else 0
        )  # fmt: skip
        self.cache = [SlotKVCache(layer) for layer in model.new_cache(max_batch, self.cache_len)]
        self.slots: list[Request | None] = [None] * max_batch
        self.lengths = [0] * max_batch
        self.kept: list[list[int] | None] = [None] * max_batch
        """Per slot, the ids a kept row holds (a finished ``keep_cache`` request's), else None."""
        self._row_ids: list[list[int]] = [[] for _ in range(max_batch)]
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
            raise GPT2KitError(
                f"stop strings {request.cfg.stop} need a tokenizer: give the engine one or use stop_token_ids"
            )
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
            return self.stats.copy(active=sum(r is not None for r in self.slots), queued=len(self.queue))

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

    def forget(self) -> None:
        """Drop every kept cache row (the next request computes its prompt in full)."""
        for i in range(self.max_batch):
            if self.slots[i] is None:
                self.kept[i], self.lengths[i], self._row_ids[i] = None, 0, []

    # -- running it on the caller's thread -------------------------------------------------------------------
    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Step until nothing is queued or running (a static batch: submit all, then this)."""
        for _ in range(max_steps):
            if not self.step():
                return

    def stream(self, request: Request) -> Iterator[Event]:
        """Submit ``request`` and step on this thread, yielding its events as they come (the last one has
        a finish_reason). Closing the iterator early cancels the request."""
        events: collections.deque[Event] = collections.deque()
        previous = request.listener

        def listen(ev: Event) -> None:
            events.append(ev)
            if previous is not None:
                previous(ev)

        request.listener = listen
        self.submit(request)
        try:
            while True:
                while events:
                    ev = events.popleft()
                    yield ev
                    if ev.finish_reason is not None:
                        return
                if not self.step() and not events:
                    return
        finally:
            if not request.done:
                request.cancel()
                self.step()  # ends it ("abort") and frees its slot (keeping its row if asked)

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

    # -- the engine's thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                idle = False
                while not self._stopping and not self.queue and all(s is None for s in self.slots):
                    idle = True
                    self._wake.wait()
                if idle:
                    self._gather_burst()
                if self._stopping:
                    break
            self.step()
        self._abort_all()

    def _gather_burst(self) -> None:
        """Woken from idle by a request: let the rest of a burst arrive before the first prefill.

        Clients that start together reach the server a few milliseconds apart; prefilling the first one
        alone would make all the others wait for it and for a decode step. So the loop waits while
        requests keep arriving (each within ``BURST_GAP_S`` of the last, ``BURST_WAIT_S`` at most) -- a
        lone request loses ``BURST_GAP_S``, a burst is prefilled as one. (Called with the lock held.)
        """
        deadline = time.monotonic() + BURST_WAIT_S
        seen = len(self.queue)
        while not self._stopping and seen < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.wait(min(left, BURST_GAP_S))
            if len(self.queue) == seen:
                break  # nothing more arrived
            seen = len(self.queue)

    def _abort_all(self) -> None:
        with self._lock:
            waiting, self.queue = list(self.queue), collections.deque()
        for req in waiting + [r for r in self.slots if r is not None]:
            self._finish(req, "abort")

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit what fits, then decode one token for every running request; False when there was nothing."""
        # A training loop's model (predict_step, a callback) is put back after the step; a model already in
        # eval mode is not switched (that walks every module: a tenth of an int8 batch-8 step, each step).
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            return self._step()
        finally:
            if was_training:
                self.model.train()

    def _step(self) -> bool:
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
        admitted: list[Request] = []
        # The budget keeps running requests producing tokens while new ones arrive; when none is running,
        # every queued request that has a slot is admitted (a burst is prefilled before the first decode).
        budget = self.prefill_tokens if any(self.slots) else float("inf")
        while None in self.slots:
            with self._lock:
                if not self.queue or (admitted and budget <= 0):
                    break
                req = self.queue.popleft()
                self.stats.queued = len(self.queue)
            budget -= len(req.prompt)
            self._take_slot(req)
            admitted.append(req)
        if admitted:
            self._admit(admitted)
        if not any(self.slots):
            return bool(self.queue) or bool(admitted)
        try:
            self._decode()
        except Exception as exc:
            log.exception("decode step failed")
            for req in [r for r in self.slots if r is not None]:
                self._finish(req, "error", error=_say(exc))
        with self._lock:
            self.stats.steps_total += 1
        return True

    # -- admission and prefill -------------------------------------------------------------------------------
    def _take_slot(self, req: Request) -> None:
        """Give ``req`` a free slot: the kept row it continues (longest shared prefix), else one not kept."""
        free = [i for i, s in enumerate(self.slots) if s is None]
        best, best_n = None, 0
        if req.keep_cache:
            for i in free:
                kept = self.kept[i]
                if kept:
                    n = _common_prefix(kept, req.prompt, len(req.prompt) - 1)  # the last prompt token is fed
                    if n > best_n:
                        best, best_n = i, n
        if best is None:
            best = next((i for i in free if self.kept[i] is None), free[0])
        self.slots[best], req.slot, req.reused = req, best, best_n
        if best_n == 0:
            self.kept[best], self.lengths[best], self._row_ids[best] = None, 0, []

    def _admit(self, reqs: list[Request]) -> None:
        """Prefill the requests admitted together, batched where they can be; sample their first tokens."""
        plain: list[Request] = []
        for req in reqs:
            req.begin(self.tokenizer, self.device)
            with self._lock:
                self.stats.prompt_tokens_total += len(req.prompt)
            if req.cancelled:
                self._finish(req, "abort")
            elif req.reused or req.want_prompt_logprobs or len(req.prompt) > self.prefill_tokens:
                self._guarded([req], lambda r=req: self._prefill_one(r))
            else:
                plain.append(req)
        for group in batches(plain, self.prefill_tokens):
            self._guarded(group, lambda g=group: self._prefill_batch(g))

    def _guarded(self, reqs: list[Request], prefill) -> None:
        try:
            prefill()
        except Exception as exc:  # a failure of one prefill must not take the server down
            log.exception("prefill failed")
            for req in reqs:
                self._finish(req, "error", error=_say(exc))

    def _prefill_batch(self, reqs: list[Request]) -> None:
        """One left-padded forward over the prompts of ``reqs`` (:func:`~.prefill.prefill_batch`)."""
        logits = prefill_batch(self.model, self.cache, [r.prompt for r in reqs], [r.slot for r in reqs])
        for req in reqs:
            self._set_row(req.slot, list(req.prompt))
        self._first_tokens(reqs, logits)

    def _prefill_one(self, req: Request) -> None:
        """Prefill one prompt alone: after the prefix its kept row holds, in chunks, all logits if asked."""
        n = req.reused
        logits = self._prefill_row(req.slot, req.prompt, n, all_logits=req.want_prompt_logprobs)
        if req.want_prompt_logprobs:
            lp = logits[0].float().log_softmax(-1)  # (T, vocab): position j predicts token j + 1
            req.prompt_logprobs = [None] + [
                TokenLogprob.of(lp[j], req.prompt[j + 1], req.logprobs or 0)
                for j in range(len(req.prompt) - 1)
            ]
        self._first_tokens([req], logits[:, -1])

    def _prefill_row(self, slot: int, ids: list[int], reuse: int = 0, all_logits: bool = False) -> Tensor:
        """:func:`~.prefill.prefill_row` in ``prefill_tokens`` chunks; the slot now holds ``ids``."""
        logits = prefill_row(self.model, self.cache, slot, ids, reuse, self.prefill_tokens, all_logits)
        self._set_row(slot, list(ids))
        return logits

    def _set_row(self, slot: int, ids: list[int]) -> None:
        self.lengths[slot], self._row_ids[slot], self.kept[slot] = len(ids), ids, None

    def _first_tokens(self, reqs: list[Request], logits: Tensor) -> None:
        live = [i for i, r in enumerate(reqs) if not r.done]
        for i in list(live):
            if reqs[i].cfg.max_new_tokens == 0:
                self._finish(reqs[i], "length")
                live.remove(i)
        if live:
            self._sample([reqs[i] for i in live], logits[live])

    # -- decoding --------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        running = [r for r in self.slots if r is not None and r.next_token is not None]
        if not running:
            return
        full = [r for r in running if self.lengths[r.slot] >= self.cache_len]
        for req in full:  # the context is full: keep its most recent tokens
            keep = min(Request.slide_keep(self.block_size), self.cache_len - 1)
            self._sample([req], self._prefill_row(req.slot, req.context[-keep:])[:, -1])
        feed = [r for r in running if r not in full and not r.done]
        if not feed:
            return
        R = max(r.slot for r in feed) + 1
        tokens = [0] * R
        cols = [0] * R
        for r in feed:
            tokens[r.slot], cols[r.slot] = r.next_token, self.lengths[r.slot]
        # Free slots (and slots that joined this step) below R write a dummy token at their column 0 or
        # past their length; a later prefill overwrites it, and the lengths below do not move.
        fed = {r.slot for r in feed}
        for i in range(R):
            if i not in fed:
                busy = self.slots[i] is not None or self.kept[i] is not None
                cols[i] = min(self.lengths[i], self.cache_len - 1) if busy else 0
                if self.kept[i] is not None and self.lengths[i] >= self.cache_len:
                    self._drop_kept(i)  # no column left past it: the dummy would overwrite it
        col_t = torch.tensor(cols, device=self.device)
        width = max(cols) + 1
        # Rows that all hold the same number of tokens, all fed, have every column below width valid:
        # no mask is needed (one row, or a static batch of equal-length prompts), as for one sequence.
        uniform = len(feed) == R and len(set(cols)) == 1
        for layer in self.cache:
            layer.cols, layer.width, layer.padded = col_t, width, not uniform
        ids = torch.tensor(tokens, device=self.device)[:, None]  # (R, 1)
        with MatVecLinear() if self._matvec_rows >= R else contextlib.nullcontext():
            logits = self.model(ids, pos=col_t[:, None], cache=self.cache)[:, -1]  # (R, vocab)
        for r in feed:
            self.lengths[r.slot] += 1
            self._row_ids[r.slot].append(r.next_token)
        self._sample(feed, logits if len(feed) == R and all(r.slot == i for i, r in enumerate(feed))
                     else logits[[r.slot for r in feed]])  # fmt: skip

    def _drop_kept(self, slot: int) -> None:
        self.kept[slot], self.lengths[slot], self._row_ids[slot] = None, 0, []

    def _sample(self, reqs: list[Request], logits: Tensor) -> None:
        """Draw each request's next token from its row of ``logits`` (len(reqs), vocab) and deliver it."""
        plain = [i for i, r in enumerate(reqs) if r.cfg.temperature == 0 and not penalized(r.cfg)]
        chosen: list[int] = [0] * len(reqs)
        if plain:  # greedy rows: one argmax, one copy to the host
            rows = logits if len(plain) == len(reqs) else logits[plain]
            for i, t in zip(plain, rows.argmax(-1).tolist(), strict=True):
                chosen[i] = t
        for i, r in enumerate(reqs):
            if i not in plain:
                seen, counts = r.penalty_state(self.vocab_size, logits.device)
                chosen[i] = int(sample_next(logits[i : i + 1], r.cfg, r.generator, seen, counts)[0])
        want = [i for i, r in enumerate(reqs) if r.logprobs is not None]
        lps = logits[want].float().log_softmax(-1) if want else None
        for j, i in enumerate(want):
            reqs[i].pending_logprob = TokenLogprob.of(lps[j], chosen[i], reqs[i].logprobs)
        for r, t in zip(reqs, chosen, strict=True):
            self._accept(r, t)

    def _accept(self, req: Request, token: int) -> None:
        if req.first_token_at is None:
            req.first_token_at = time.monotonic()
            self._observe_ttft(req.first_token_at - req.submitted)
        ev, reason = req.accept(token)
        if ev.tokens:
            with self._lock:
                self.stats.generated_tokens_total += 1
        if reason is not None:
            self._finish(req, reason, first=ev)
        else:
            self._emit(req, ev)

    def _finish(
        self, req: Request, reason: str, first: Event | None = None, error: str | None = None
    ) -> None:
        if req.done:
            return
        ev = req.end(reason, first, error)
        slot = req.slot
        if slot is not None and self.slots[slot] is req:
            self.slots[slot] = None
            if req.keep_cache and self.lengths[slot] and self.lengths[slot] < self.cache_len:
                self.kept[slot] = self._row_ids[slot]  # the ids whose keys and values the row holds
            else:
                self._drop_kept(slot)
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
            self.stats.observe_ttft(seconds)


BatchingEngine = Engine
"""The engine's former name (``gpt2kit.decoding.BatchingEngine``)."""


def _say(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n
