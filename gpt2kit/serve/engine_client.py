"""The server's one door to the decoding engine (:mod:`gpt2kit.decoding`): loading, prompts, submitting, hearing back.

The rest of ``gpt2kit.serve`` speaks HTTP and OpenAI's format; this module turns an accepted request into
engine requests and hands their events to the event loop. Each engine request travels with a
:class:`Pending`, the declared per-request state of the server (its event queue, whether its prompt is
echoed), so nothing is bolted onto the engine's objects. The engine's thread calls each request's
listener; the listener hands the event to the event loop with ``call_soon_threadsafe``. A client that
hangs up cancels its requests, which frees their slots at the next token boundary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.chat.context import turns_to_drop
from gpt2kit.chat.template import ChatEncoder, ChatTemplate, Message
from gpt2kit.decoding import (
    Engine,
    EngineStats,
    EngineStopped,
    Event,
    QueueFull,
    SamplingConfig,
    TokenLogprob,
    encode_prompt,
    load_for_inference,
)
from gpt2kit.decoding import Request as EngineRequest
from gpt2kit.decoding.stats import TTFT_BUCKETS
from gpt2kit.errors import GPT2KitError
from gpt2kit.interop.hub import resolve_checkpoint
from gpt2kit.serve.protocol import ApiError
from gpt2kit.tokenizers import Tokenizer

__all__ = ["TTFT_BUCKETS", "EngineStats", "Event", "Pending", "ServedModel", "TokenLogprob"]


@dataclass
class ServedModel:
    """What the server serves: the engine, the tokenizer, and the chat template if the model has one."""

    engine: Engine
    tokenizer: Tokenizer
    name: str
    template: ChatTemplate | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """The server's sampling options: a request's defaults for the fields it leaves out."""
    encoder: ChatEncoder | None = field(init=False)
    """The template bound to the tokenizer (None for a plain language model)."""
    created: int = field(init=False)
    """When the server loaded the model (Unix time), for the model card."""

    def __post_init__(self) -> None:
        self.encoder = ChatEncoder(self.template, self.tokenizer) if self.template is not None else None
        self.created = int(time.time())

    @property
    def block_size(self) -> int:
        return self.engine.block_size

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    def stats(self) -> EngineStats:
        return self.engine.snapshot()

    @property
    def slots(self) -> int:
        return self.engine.max_batch


@dataclass
class Options:
    """A request's decoding options, read from its body (the engine's names)."""

    max_new_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    stop: list[str]
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logprobs: int | None
    """Top alternatives to report per token (None: no logprobs)."""
    echo: bool = False
    """Put the prompt before the completion (and score it, with logprobs)."""
    stop_ids: list[int] = field(default_factory=list)


@dataclass
class Pending:
    """One choice of one accepted request: the engine's request and the server's state for it."""

    request: EngineRequest
    events: asyncio.Queue[Event]
    """Filled from the engine's thread, read by the handler or the stream."""
    logprobs: int | None
    echo: bool

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt

    @property
    def tokens(self) -> list[int]:
        return self.request.tokens

    @property
    def finish_reason(self) -> str | None:
        return self.request.finish_reason

    @property
    def prompt_logprobs(self) -> list[TokenLogprob | None]:
        return self.request.prompt_logprobs

    def cancel(self) -> None:
        self.request.cancel()  # no-op for a finished request


def load_served_model(
    ckpt: str,
    device: str = "cpu",
    dtype: str = "float32",
    max_batch: int = 8,
    max_queue: int = 64,
    name: str | None = None,
    sampling: SamplingConfig | None = None,
) -> ServedModel:
    """A checkpoint's model in ``dtype`` behind a batching engine, with its tokenizer and template.

    ``sampling``: the server's defaults for what a request leaves out; the checkpoint's recommended
    options replace the fields it leaves at SamplingConfig's defaults (as ``generate`` and ``chat`` do).
    """
    loaded = load_for_inference(resolve_checkpoint(ckpt), device, dtype)
    tokenizer = loaded.require_tokenizer()
    engine = Engine(loaded.model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    return ServedModel(
        engine, tokenizer, name or Path(ckpt).stem, loaded.chat_template, sampling=loaded.sampling(sampling)
    )


# -- prompts --------------------------------------------------------------------------------------------------
def text_prompt(served: ServedModel, text: str) -> list[int]:
    """A completion prompt's ids (an empty string is the end-of-text token, as in ``generate``)."""
    return encode_prompt(served.tokenizer, text)


def chat_prompt(served: ServedModel, messages: Sequence[Message], reply_room: int) -> tuple[list[int], int]:
    """The prompt for a reply to ``messages`` and how many of the oldest messages were dropped to fit it.

    The rule is the chat session's (:func:`gpt2kit.chat.context.turns_to_drop`): the leading system
    messages stay; when the prompt would leave fewer than ``reply_room`` tokens of the context free,
    the oldest exchanges go, whole messages from a user message on, never the last message. A last
    message that alone does not fit the context is refused (the session would cut it; an API must not
    change what a client sent without saying so).
    """
    enc = served.encoder
    assert enc is not None
    head = 0
    while head < len(messages) and messages[head].role == "system":
        head += 1
    turns = enc.encode(messages)
    system = [t for turn in turns[:head] for t in turn.ids]
    rest, header = turns[head:], enc.reply_header_ids()
    budget = served.block_size - reply_room - len(system) - len(header)
    dropped = turns_to_drop(rest, budget)
    ids = system + [t for turn in rest[dropped:] for t in turn.ids] + header
    if len(ids) > served.block_size:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens even without the older messages, longer than the model's "
            f"{served.block_size}-token context: shorten the last message or the system prompt",
            param="messages",
            code="context_length_exceeded",
        )
    return ids, dropped


# -- submitting and hearing back ------------------------------------------------------------------------------
def submit(served: ServedModel, prompts: list[list[int]], n: int, opts: Options, param: str) -> list[Pending]:
    """Queue ``n`` choices of every prompt (choice j of a seeded request uses seed + j); 429 when full."""
    block = served.block_size
    for p in prompts:
        if len(p) > block:
            raise ApiError(
                400,
                f"the prompt is {len(p)} tokens, longer than the model's {block}-token context: shorten it",
                param=param,
                code="context_length_exceeded",
            )
    try:
        cfg = SamplingConfig(
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            repetition_penalty=opts.repetition_penalty,
            presence_penalty=opts.presence_penalty,
            frequency_penalty=opts.frequency_penalty,
            stop=opts.stop,
            stop_token_ids=list(opts.stop_ids),
            seed=opts.seed,
            stop_at_eot=served.sampling.stop_at_eot,
        )
    except GPT2KitError as exc:
        raise ApiError(400, str(exc)) from None
    loop = asyncio.get_running_loop()
    pending = []
    for p in prompts:
        for j in range(n):
            seed = None if cfg.seed is None else cfg.seed + j
            queue: asyncio.Queue[Event] = asyncio.Queue()
            req = EngineRequest(
                p,
                dataclasses.replace(cfg, seed=seed),
                _bridge(loop, queue),
                logprobs=opts.logprobs,
                prompt_logprobs=opts.echo and opts.logprobs is not None,
            )
            pending.append(Pending(req, queue, opts.logprobs, opts.echo))
    try:
        for one in pending:
            served.engine.submit(one.request)
    except QueueFull as exc:
        for one in pending:
            one.cancel()
        raise ApiError(429, f"server busy: {exc}", type="rate_limit_error", code="queue_full") from None
    except EngineStopped as exc:
        for one in pending:
            one.cancel()
        raise ApiError(503, str(exc), type="server_error", code="shutting_down") from None
    return pending


def _bridge(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
    def deliver(ev: Event) -> None:  # on the engine's thread; raises once the loop is closed (then: cancel)
        loop.call_soon_threadsafe(queue.put_nowait, ev)

    return deliver


async def gather(pending: list[Pending]) -> list[list[Event]]:
    """Every choice's events, once all have finished; all are cancelled if this handler is (client gone)."""

    async def one(p: Pending) -> list[Event]:
        evs = []
        while True:
            ev = await p.events.get()
            evs.append(ev)
            if ev.finish_reason is not None:
                return evs

    try:
        results = await asyncio.gather(*(one(p) for p in pending))
    finally:
        for p in pending:
            p.cancel()
    for p, evs in zip(pending, results, strict=True):
        if p.finish_reason == "error":
            raise ApiError(500, f"generation failed: {evs[-1].error}", type="server_error")
    return list(results)


async def merged(pending: list[Pending]) -> AsyncIterator[tuple[int, Event]]:
    """Events of all choices as (index, event), as they come, until every choice has finished."""
    out: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(i: int, p: Pending) -> None:
        while True:
            ev = await p.events.get()
            await out.put((i, ev))
            if ev.finish_reason is not None:
                return

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(pending)]
    left = len(pending)
    try:
        while left:
            i, ev = await out.get()
            left -= ev.finish_reason is not None
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()
        for p in pending:
            p.cancel()
