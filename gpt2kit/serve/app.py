"""The HTTP side of ``gpt2kit serve``: OpenAI's wire format over the continuous-batching engine.

Routes: ``POST /v1/chat/completions`` (chat checkpoints), ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /``, the chat page. Every error is OpenAI's
error object, ``{"error": {"message", "type", "param", "code"}}``, with its status code.

Requests are read by hand (a size-limited body, ``json.loads``, then a strict pydantic model), never
unpickled or evaluated. Each accepted request becomes one :class:`~gpt2kit.batching.Request` per
choice; the engine's thread hands their events to the event loop with ``call_soon_threadsafe``. A
client that hangs up cancels its requests, which frees their slots at the next token boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2kit.batching import (
    TTFT_BUCKETS,
    BatchingEngine,
    EngineStopped,
    Event,
    QueueFull,
    TokenLogprob,
)
from gpt2kit.batching import Request as EngineRequest
from gpt2kit.chat.template import ROLES, ChatEncoder, ChatTemplate, Message
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import SamplingConfig, encode_prompt
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

MAX_STOP = 16
"""Most stop strings a request may give (OpenAI allows 4)."""
MAX_STOP_CHARS = 256
MAX_N = 8
"""Most choices per prompt (``n``)."""
MAX_PROMPTS = 64
"""Most prompts in one ``/v1/completions`` request."""
MAX_TOP_LOGPROBS = 5
OPEN_ROUTES = {"/health", "/", "/favicon.ico"}
"""Routes served without the API key: the health probe, and the static page (it holds no data; it asks
for the key and sends it with every API call)."""


class ApiError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code=None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class _Guard:
    """ASGI middleware: the API key, the body-size limit (by Content-Length) and counting responses by status."""

    def __init__(
        self, app, api_key: str | None, max_body_bytes: int, counters: dict, lock: threading.Lock
    ) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes
        self.counters, self.lock = counters, lock

    def _refusal(self, scope) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] not in OPEN_ROUTES:
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                what = "wrong API key" if token else "missing API key"
                return ApiError(
                    401,
                    f"{what}: send the server's key as 'Authorization: Bearer KEY'",
                    type="authentication_error",
                    code="invalid_api_key",
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return _too_large(self.max_body_bytes)
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [0]

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if (refusal := self._refusal(scope)) is not None:
                await refusal.response()(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        finally:
            with self.lock:
                self.counters["http"][status[0]] = self.counters["http"].get(status[0], 0) + 1


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over {limit:,} bytes: send less", code="request_too_large")


# -- request bodies (strict: "5" is not an int, "yes" is not a bool) ------------------------------------------
class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # unknown OpenAI fields are ignored, as vLLM does

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None


class _TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: str
    content: str | list[_TextPart] | None = None


class ChatBody(_Sampling):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionBody(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None


@dataclass
class ServedModel:
    """What the server serves: the engine, the tokenizer, and the chat template if the model has one."""

    engine: BatchingEngine
    tokenizer: Tokenizer
    name: str
    template: ChatTemplate | None = None
    default_max_tokens: int = 256

    def __post_init__(self) -> None:
        self.encoder = ChatEncoder(self.template, self.tokenizer) if self.template is not None else None
        self.created = int(time.time())


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        tags = {"str", "int", "float", "bool", "none"}  # pydantic names the member of a union it tried
        loc = ".".join(
            str(p) for p in err["loc"] if str(p) not in tags and not str(p).startswith(("list[", "dict["))
        )
        raise ApiError(400, f"{loc or 'body'}: {err['msg']}", param=loc or None) from None


def create_app(
    served: ServedModel,
    api_key: str | None = None,
    max_body_bytes: int = 1 << 20,
    owns_engine: bool = True,
) -> FastAPI:
    """The FastAPI application serving ``served``.

    Args:
        served: the engine, tokenizer and (for chat checkpoints) template.
        api_key: when set, every route but ``/health`` and the page needs ``Authorization: Bearer KEY``.
        max_body_bytes: larger request bodies are refused with 413.
        owns_engine: start the engine's thread with the app and stop it (aborting requests) at shutdown.
    """
    engine = served.engine
    counters: dict[str, Any] = {"http": {}, "streams": 0}
    lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_engine:
            engine.start()
        try:
            yield
        finally:
            if owns_engine:
                await asyncio.to_thread(engine.stop)

    app = FastAPI(title="gpt2kit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.served = served

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, counters=counters, lock=lock)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = (
            f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        )
        return ApiError(exc.status_code, str(message), code=code).response()

    @app.exception_handler(GPT2KitError)
    async def _user_error(
        request: Request, exc: GPT2KitError
    ) -> JSONResponse:  # e.g. text the tokenizer cannot encode
        return ApiError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s", request.url.path)
        return ApiError(500, "internal error (see the server's log)", type="server_error").response()

    async def read_json(request: Request) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked bodies, which carry no content-length
            size += len(chunk)
            if size > max_body_bytes:
                raise _too_large(max_body_bytes)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    def check_model(name: str) -> None:
        if name != served.name:
            raise ApiError(
                404,
                f"model '{name}' does not exist: this server serves '{served.name}' (see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    # -- routes -----------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("gpt2kit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", served.name))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(served)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        check_model(name)
        return _model_card(served)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        with lock:
            http, streams = dict(counters["http"]), counters["streams"]
        return PlainTextResponse(_prometheus(engine, http, streams), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = _parse(ChatBody, await read_json(request))
        check_model(body.model)
        if served.encoder is None:
            raise ApiError(
                400,
                f"'{served.name}' is a plain language model, trained without a chat template: it has no turns to "
                "reply in. Use POST /v1/completions, or serve a checkpoint fine-tuned for chat",
                param="messages",
                code="chat_not_supported",
            )
        messages = [_message(i, m) for i, m in enumerate(body.messages)]
        enc = served.encoder
        ids = [t for turn in enc.encode(messages) for t in turn.ids] + enc.reply_header_ids()
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        cfg = _sampling(body, served, limit, param="max_tokens", stop_ids=enc.special_ids, minimum=1)
        top = (body.top_logprobs or 0) if body.logprobs else None
        reqs = _submit(served, [ids], cfg, body, logprobs=top)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return _sse(_chat_chunks(served, reqs, rid, created, include_usage, body.n), reqs, counters, lock)
        results = await _gather(reqs)
        choices = []
        for i, (req, evs) in enumerate(results):
            msg = {"role": "assistant", "content": "".join(e.text for e in evs)}
            lps = [x for e in evs for x in e.logprobs]
            choices.append(
                {
                    "index": i,
                    "message": msg,
                    "logprobs": {"content": [_chat_logprob(served.tokenizer, x) for x in lps]}
                    if top is not None
                    else None,
                    "finish_reason": req.finish_reason,
                }
            )
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": served.name,
                "choices": choices,
                "usage": _usage(reqs, body.n),
            }
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = _parse(CompletionBody, await read_json(request))
        check_model(body.model)
        if body.suffix:
            raise ApiError(
                400, "suffix is not supported (a GPT is not trained to fill in the middle)", param="suffix"
            )
        prompts = _prompts(body.prompt, served)
        cfg = _sampling(body, served, body.max_tokens, param="max_tokens", stop_ids=[], minimum=0, default=16)
        reqs = _submit(served, prompts, cfg, body, logprobs=body.logprobs, echo=body.echo)
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return _sse(
                _completion_chunks(served, reqs, rid, created, body, include_usage, len(prompts)),
                reqs,
                counters,
                lock,
            )
        results = await _gather(reqs)
        choices = []
        for i, (req, evs) in enumerate(results):
            text = "".join(e.text for e in evs)
            logprobs = None
            if body.logprobs is not None:
                lps = [x for e in evs for x in e.logprobs]
                logprobs = _completion_logprobs(served.tokenizer, req, lps, body.echo)
            if body.echo:
                text = served.tokenizer.decode(req.prompt) + text
            choices.append(
                {"index": i, "text": text, "logprobs": logprobs, "finish_reason": req.finish_reason}
            )
        return JSONResponse(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": served.name,
                "choices": choices,
                "usage": _usage(reqs, body.n),
            }
        )

    return app


# -- turning bodies into engine requests ----------------------------------------------------------------------
def _message(i: int, m: _ChatMessage) -> Message:
    role = "system" if m.role == "developer" else m.role
    if role not in ROLES:
        raise ApiError(
            400,
            f"messages[{i}].role: unknown role '{m.role}': use one of {', '.join(ROLES)}",
            param=f"messages.{i}.role",
        )
    content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
    return Message(role, content)  # plain text: a special token's string in it is text, never a turn marker


def _prompts(prompt: str | list, served: ServedModel) -> list[list[int]]:
    tok, vocab = served.tokenizer, served.engine.vocab_size
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise ApiError(400, "prompt: give a string, a list of strings or token ids", param="prompt")
    if len(items) > MAX_PROMPTS:
        raise ApiError(
            400, f"prompt: at most {MAX_PROMPTS} prompts per request, got {len(items)}", param="prompt"
        )
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(encode_prompt(tok, item))
            continue
        if not item:
            raise ApiError(400, "prompt: a token-id prompt must not be empty", param="prompt")
        if bad := [t for t in item if not 0 <= t < vocab]:
            raise ApiError(
                400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt"
            )
        out.append(list(item))
    return out


def _sampling(
    body: _Sampling,
    served: ServedModel,
    limit: int | None,
    param: str,
    stop_ids: Sequence[int],
    minimum: int,
    default: int | None = None,
) -> SamplingConfig:
    block = served.engine.block_size
    if limit is None:
        limit = min(default or served.default_max_tokens, block)
    if not minimum <= limit <= block:
        raise ApiError(
            400,
            f"{param}={limit}: must be between {minimum} and the model's context, {block} tokens",
            param=param,
        )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} stop strings, got {len(stops)}", param="stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(
            400, f"stop: each stop string must have 1 to {MAX_STOP_CHARS} characters", param="stop"
        )
    try:
        return SamplingConfig(
            max_new_tokens=limit,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p if body.top_p < 1.0 else None,
            repetition_penalty=body.repetition_penalty,
            stop=stops,
            stop_token_ids=list(stop_ids),
            seed=body.seed,
        )
    except GPT2KitError as exc:
        raise ApiError(400, str(exc)) from None


def _submit(
    served: ServedModel,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    body: _Sampling,
    logprobs: int | None,
    echo: bool = False,
) -> list[EngineRequest]:
    block = served.engine.block_size
    for p in prompts:
        if len(p) > block:
            raise ApiError(
                400,
                f"the prompt is {len(p)} tokens, longer than the model's {block}-token context: shorten it",
                param="messages" if isinstance(body, ChatBody) else "prompt",
                code="context_length_exceeded",
            )
    loop = asyncio.get_running_loop()
    reqs = []
    for p in prompts:
        for j in range(body.n):
            seed = None if cfg.seed is None else cfg.seed + j  # choice j of a seeded request uses seed + j
            c = SamplingConfig(**{**cfg.__dict__, "seed": seed})
            req = EngineRequest(
                p,
                c,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
                logprobs=logprobs,
                prompt_logprobs=echo and logprobs is not None,
            )
            req.events = asyncio.Queue()
            req.listener = _bridge(loop, req.events)
            reqs.append(req)
    try:
        for req in reqs:
            served.engine.submit(req)
    except QueueFull as exc:
        for req in reqs:
            req.cancel()
        raise ApiError(429, f"server busy: {exc}", type="rate_limit_error", code="queue_full") from None
    except EngineStopped as exc:
        raise ApiError(503, str(exc), type="server_error", code="shutting_down") from None
    return reqs


def _bridge(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
    def deliver(ev: Event) -> None:  # on the engine's thread; raises once the loop is closed (then: cancel)
        loop.call_soon_threadsafe(queue.put_nowait, ev)

    return deliver


async def _gather(reqs: list[EngineRequest]) -> list[tuple[EngineRequest, list[Event]]]:
    """Wait for every request to finish; cancel them all if this handler is cancelled (client gone)."""

    async def one(req: EngineRequest) -> list[Event]:
        evs = []
        while True:
            ev = await req.events.get()
            evs.append(ev)
            if ev.finish_reason is not None:
                return evs

    try:
        results = await asyncio.gather(*(one(r) for r in reqs))
    finally:
        for r in reqs:
            r.cancel()  # no-op for finished requests
    for r, evs in zip(reqs, results, strict=True):
        if r.finish_reason == "error":
            raise ApiError(500, f"generation failed: {evs[-1].error}", type="server_error")
    return list(zip(reqs, results, strict=True))


async def _merged(reqs: list[EngineRequest]) -> AsyncIterator[tuple[int, Event]]:
    """Events of all requests as (index, event), as they come, until every request has finished."""
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, req: EngineRequest) -> None:
        while True:
            ev = await req.events.get()
            await merged.put((i, ev))
            if ev.finish_reason is not None:
                return

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
    left = len(reqs)
    try:
        while left:
            i, ev = await merged.get()
            left -= ev.finish_reason is not None
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()
        for r in reqs:
            r.cancel()


def _sse(
    chunks: AsyncIterator[dict], reqs: list[EngineRequest], counters: dict, lock: threading.Lock
) -> Response:
    async def body() -> AsyncIterator[bytes]:
        with lock:
            counters["streams"] += 1
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:  # the client hung up (Starlette cancels us) or the stream ended: free the slots now
            for r in reqs:
                r.cancel()
            await chunks.aclose()
            with lock:
                counters["streams"] -= 1

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _stream_error(ev: Event) -> dict:
    """What a stream sends when generation fails under it: OpenAI's error object, as an event."""
    return {
        "error": {
            "message": f"generation failed: {ev.error}",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


def _chunk(
    kind: str, rid: str, created: int, model: str, include_usage: bool, choices: list[dict], usage=None
) -> dict:
    """One streamed chunk of OpenAI's wire format (``usage`` only when the client asked for it)."""
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if include_usage:
        out["usage"] = usage
    return out


async def _chat_chunks(
    served: ServedModel, reqs: list[EngineRequest], rid: str, created: int, include_usage: bool, n: int
) -> AsyncIterator[dict]:
    chunk = functools.partial(_chunk, "chat.completion.chunk", rid, created, served.name, include_usage)

    for i in range(len(reqs)):
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
    async for i, ev in _merged(reqs):
        if ev.finish_reason == "error":
            yield _stream_error(ev)
            continue
        if not ev.text and ev.finish_reason is None:
            continue
        lp = None
        if reqs[i].logprobs is not None and ev.logprobs:
            lp = {"content": [_chat_logprob(served.tokenizer, x) for x in ev.logprobs]}
        delta = {"content": ev.text} if ev.text else {}
        yield chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": ev.finish_reason}])
    if include_usage:
        yield chunk([], _usage(reqs, n))


async def _completion_chunks(
    served: ServedModel,
    reqs: list[EngineRequest],
    rid: str,
    created: int,
    body: CompletionBody,
    include_usage: bool,
    n_prompts: int,
) -> AsyncIterator[dict]:
    chunk = functools.partial(_chunk, "text_completion", rid, created, served.name, include_usage)

    echoed: set[int] = set()
    async for i, ev in _merged(reqs):
        if ev.finish_reason == "error":
            yield _stream_error(ev)
            continue
        text, lps = ev.text, ev.logprobs
        echo_now = body.echo and i not in echoed
        if echo_now:
            echoed.add(i)
            text = served.tokenizer.decode(reqs[i].prompt) + text
        if not text and ev.finish_reason is None:
            continue
        logprobs = None
        if body.logprobs is not None:
            logprobs = _completion_logprobs(served.tokenizer, reqs[i], lps, echo_now)
        yield chunk([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": ev.finish_reason}])
    if include_usage:
        yield chunk([], _usage(reqs, body.n))


# -- response pieces ------------------------------------------------------------------------------------------
def _model_card(served: ServedModel) -> dict[str, Any]:
    return {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "gpt2kit",
        "context_length": served.engine.block_size,
        "chat": served.template is not None,
    }


def _usage(reqs: list[EngineRequest], n: int) -> dict[str, int]:
    prompt = sum(len(r.prompt) for r in reqs[::n])  # each prompt counted once, whatever n
    completion = sum(len(r.tokens) for r in reqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprob(tok: Tokenizer, x: TokenLogprob) -> dict[str, Any]:
    def entry(t: int, lp: float) -> dict[str, Any]:
        s = tok.decode([t])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {**entry(x.token, x.logprob), "top_logprobs": [entry(t, lp) for t, lp in x.top]}


def _completion_logprobs(
    tok: Tokenizer, req: EngineRequest, lps: list[TokenLogprob], echo: bool
) -> dict[str, list]:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    entries: list[TokenLogprob | None] = []
    ids: list[int] = []
    if echo:
        entries += req.prompt_logprobs or [None] * len(req.prompt)
        ids += req.prompt
    entries += lps
    ids += [x.token for x in lps]
    tokens = [tok.decode([t]) for t in ids]
    offsets, at = [], 0 if echo else len(tok.decode(req.prompt))
    for s in tokens:
        offsets.append(at)
        at += len(s)
    return {
        "tokens": tokens,
        "token_logprobs": [None if e is None else e.logprob for e in entries],
        "top_logprobs": [None if e is None else {tok.decode([t]): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def _prometheus(engine: BatchingEngine, http: dict[int, int], streams: int) -> str:
    s = engine.snapshot()
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP gpt2kit_{name} {help_}")
        out.append(f"# TYPE gpt2kit_{name} {kind}")
        out.extend(f"gpt2kit_{name}{labels} {value:g}" for labels, value in samples)

    reasons = sorted(s.requests_by_reason.items()) or [("stop", 0)]
    metric("requests_total", "counter", "Requests finished, by finish reason.",
           [(f'{{finish_reason="{r}"}}', c) for r, c in reasons])  # fmt: skip
    metric("generated_tokens_total", "counter", "Tokens generated.", [("", s.generated_tokens_total)])
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", s.prompt_tokens_total)])
    metric("active_requests", "gauge", "Requests holding a decode slot.", [("", s.active)])
    metric("queued_requests", "gauge", "Requests waiting for a slot.", [("", s.queued)])
    metric("slots", "gauge", "Decode slots (--max_batch).", [("", engine.max_batch)])
    metric("engine_steps_total", "counter", "Engine steps (one decode pass each).", [("", s.steps_total)])
    cumulative, samples = 0, []
    for bound, count in zip([*TTFT_BUCKETS, float("inf")], s.ttft_buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        samples.append((f'_bucket{{le="{le}"}}', cumulative))
    samples += [("_sum", s.ttft_sum), ("_count", s.ttft_count)]
    metric("time_to_first_token_seconds", "histogram", "From submission to the first token.", samples)
    metric("http_responses_total", "counter", "HTTP responses, by status.",
           [(f'{{status="{k}"}}', v) for k, v in sorted(http.items())])  # fmt: skip
    metric("open_streams", "gauge", "Streaming responses in progress.", [("", streams)])
    metric("threads", "gauge", "Threads of the server process.", [("", threading.active_count())])
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    metric("asyncio_tasks", "gauge", "Tasks on the server's event loop.", [("", tasks)])
    fds = _open_fds()
    if fds is not None:
        metric("open_fds", "gauge", "Open file descriptors of the server process.", [("", fds)])
    rss = _resident_bytes()
    if rss is not None:
        metric("resident_memory_bytes", "gauge", "Resident memory of the server process.", [("", rss)])
    return "\n".join(out) + "\n"


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
