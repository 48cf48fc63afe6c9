"""The routes, as two FastAPI routers: the open one (``/health``, the page) and the API behind the key.

``api_router`` carries the API key as a dependency, so every route added to it is guarded by default;
only :data:`OPEN_ROUTES` are served without it. Bodies are read by hand — size-limited, then
:mod:`gpt2kit.serve.protocol` — so every refusal is OpenAI's error object, never FastAPI's 422.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gpt2kit.chat.template import Message
from gpt2kit.serve import engine_client as engine
from gpt2kit.serve.engine_client import Options, ServedModel
from gpt2kit.serve.metrics import Metrics
from gpt2kit.serve.protocol import (
    MAX_PROMPTS,
    ApiError,
    ChatBody,
    CompletionBody,
    parse_json,
    too_large,
    validate,
)
from gpt2kit.serve.responses import chat_response, completion_response, model_card
from gpt2kit.serve.streaming import chat_chunks, completion_chunks, sse

OPEN_ROUTES = frozenset({"/health", "/"})
"""Routes served without the API key: the health probe, and the page (a static file with no data; it
asks for the key and sends it with every API call)."""


def served_of(request: Request) -> ServedModel:
    return request.app.state.served


def metrics_of(request: Request) -> Metrics:
    return request.app.state.metrics


async def require_key(request: Request) -> None:
    """The API key, when the app has one: ``Authorization: Bearer KEY`` (compared in constant time)."""
    key: str | None = request.app.state.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        what = "wrong API key" if token else "missing API key"
        raise ApiError(
            401,
            f"{what}: send the server's key as 'Authorization: Bearer KEY'",
            type="authentication_error",
            code="invalid_api_key",
        )


async def read_json(request: Request) -> Any:
    """The body, at most ``max_body_bytes`` (chunked bodies, which carry no Content-Length, too)."""
    limit: int = request.app.state.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise ApiError(
            404,
            f"model '{name[:200]}' does not exist: this server serves '{served.name}' (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )


open_router = APIRouter()
api_router = APIRouter(dependencies=[Depends(require_key)])


@open_router.get("/", include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    """The chat page, its controls set to the server's sampling options (numbers, and the escaped model id)."""
    served = served_of(request)
    text = resources.files("gpt2kit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    fields = {
        "MODEL": html.escape(served.name, quote=True),
        "TEMPERATURE": f"{served.sampling.temperature:g}",
        "TOP_P": f"{served.sampling.top_p or 1.0:g}",
        "MAX_TOKENS": str(min(served.sampling.max_new_tokens, served.block_size)),
    }
    for name, value in fields.items():
        text = text.replace("{{" + name + "}}", value)
    return HTMLResponse(text)


@open_router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api_router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(served_of(request))]}


@api_router.get("/v1/models/{name:path}")
async def model(request: Request, name: str) -> dict[str, Any]:
    served = served_of(request)
    check_model(served, name)
    return model_card(served)


@api_router.get("/metrics")
async def metrics(request: Request) -> Response:
    text, content_type = metrics_of(request).exposition()
    return Response(text, media_type=content_type)


@api_router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    served = served_of(request)
    body: ChatBody = validate(ChatBody, await read_json(request))
    check_model(served, body.model)
    if served.encoder is None:
        raise ApiError(
            400,
            f"'{served.name}' is a plain language model, trained without a chat template: it has no turns to "
            "reply in. Use POST /v1/completions, or serve a checkpoint fine-tuned for chat",
            param="messages",
            code="chat_not_supported",
        )
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    limit = _max_tokens(served, limit, param, minimum=1, default=served.sampling.max_new_tokens)
    messages = [Message(m.role, m.text) for m in body.messages]  # text only: never a turn marker
    reply_room = max(1, min(limit, served.block_size // 4))  # the chat session's room for the reply
    ids, _ = engine.chat_prompt(served, messages, reply_room)
    top = (body.top_logprobs or 0) if body.logprobs else None
    opts = _options(served, body, limit, logprobs=top, stop_ids=served.encoder.special_ids)
    pending = engine.submit(served, [ids], body.n, opts, param="messages")
    rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        chunks = chat_chunks(served, pending, rid, created, body.include_usage, body.n)
        return sse(chunks, pending, metrics_of(request))
    results = await engine.gather(pending)
    return JSONResponse(chat_response(served, rid, created, pending, results, body.n))


@api_router.post("/v1/completions")
async def completions(request: Request) -> Response:
    served = served_of(request)
    body: CompletionBody = validate(CompletionBody, await read_json(request))
    check_model(served, body.model)
    prompts = _prompts(served, body.prompt)
    limit = _max_tokens(
        served, body.max_tokens, "max_tokens", minimum=0, default=served.sampling.max_new_tokens
    )
    opts = _options(served, body, limit, logprobs=body.logprobs, echo=body.echo)
    pending = engine.submit(served, prompts, body.n, opts, param="prompt")
    rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        chunks = completion_chunks(served, pending, rid, created, body.include_usage, body.n)
        return sse(chunks, pending, metrics_of(request))
    results = await engine.gather(pending)
    return JSONResponse(completion_response(served, rid, created, pending, results, body.n))


# -- bodies to engine options ---------------------------------------------------------------------------------
def _max_tokens(served: ServedModel, limit: int | None, param: str, minimum: int, default: int) -> int:
    block = served.block_size
    if limit is None:
        return min(default, block)
    if not minimum <= limit <= block:
        raise ApiError(
            400,
            f"{param}={limit}: must be between {minimum} and the model's context, {block} tokens",
            param=param,
        )
    return limit


def _options(
    served: ServedModel,
    body: ChatBody | CompletionBody,
    limit: int,
    logprobs: int | None,
    echo: bool = False,
    stop_ids: list[int] | None = None,
) -> Options:
    """The request's decoding options: what the body sets, the server's sampling options for the rest."""
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            400, "stream_options: only applies to a streamed request (stream: true)", param="stream_options"
        )
    default = served.sampling

    def pick(value, server_value):
        return server_value if value is None else value

    top_p = pick(body.top_p, default.top_p)
    top_k = pick(body.top_k, default.top_k)
    return Options(
        max_new_tokens=limit,
        temperature=pick(body.temperature, default.temperature),
        top_p=None if top_p is None or top_p >= 1.0 else top_p,
        top_k=top_k or None,
        stop=body.stops if body.stop is not None else list(default.stop),
        seed=pick(body.seed, default.seed),
        presence_penalty=pick(body.presence_penalty, default.presence_penalty),
        frequency_penalty=pick(body.frequency_penalty, default.frequency_penalty),
        repetition_penalty=pick(body.repetition_penalty, default.repetition_penalty),
        logprobs=logprobs,
        echo=echo,
        stop_ids=[*default.stop_token_ids, *(stop_ids or [])],
    )


def _prompts(served: ServedModel, prompt: str | list) -> list[list[int]]:
    if isinstance(prompt, str):
        items: list = [prompt]
    elif all(isinstance(t, int) for t in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    assert 0 < len(items) <= MAX_PROMPTS  # protocol.CompletionBody checked it
    vocab = served.vocab_size
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(engine.text_prompt(served, item))
            continue
        if bad := [t for t in item if not 0 <= t < vocab]:
            raise ApiError(
                400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt"
            )
        out.append(list(item))
    return out
