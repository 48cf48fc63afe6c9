"""The HTTP side of ``gpt2kit serve``: OpenAI's wire format over the continuous-batching engine.

Routes: ``POST /v1/chat/completions`` (chat checkpoints), ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /``, the chat page. Every error is OpenAI's
error object, ``{"error": {"message", "type", "param", "code"}}``, with its status code.

The rooms: :mod:`~gpt2kit.serve.protocol` (request bodies and the error object),
:mod:`~gpt2kit.serve.routes` (the routers; the API key is a dependency of the API's router),
:mod:`~gpt2kit.serve.streaming` (server-sent events), :mod:`~gpt2kit.serve.responses` (response bodies),
:mod:`~gpt2kit.serve.metrics` (``prometheus_client``) and :mod:`~gpt2kit.serve.engine_client` (the one
module that calls the engine). This module assembles them: the outermost middleware, the exception
handlers and the engine's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2kit.errors import GPT2KitError
from gpt2kit.serve.engine_client import ServedModel
from gpt2kit.serve.metrics import Metrics
from gpt2kit.serve.protocol import ApiError, too_large
from gpt2kit.serve.routes import api_router, open_router

__all__ = ["ApiError", "ServedModel", "create_app"]

log = logging.getLogger(__name__)


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


class _Outermost:
    """ASGI middleware around everything: the body-size limit (by Content-Length), crashes answered with
    OpenAI's 500 object, and every response counted by the status its client received."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status: int | None = None

        async def counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await error_response(too_large(self.max_body_bytes))(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        except Exception:  # a bug: log it; the client gets OpenAI's 500 object unless the response started
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if status is None:
                crash = ApiError(500, "internal error (see the server's log)", type="server_error")
                await error_response(crash)(scope, receive, counted)
        finally:
            if status is not None:  # None: the client left before any answer
                self.metrics.observe(status)


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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_engine:
            served.engine.start()
        try:
            yield
        finally:
            if owns_engine:
                await asyncio.to_thread(served.engine.stop)

    app = FastAPI(title="gpt2kit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = Metrics(served)
    app.state.served, app.state.metrics = served, metrics
    app.state.api_key, app.state.max_body_bytes = api_key, max_body_bytes
    app.include_router(open_router)
    app.include_router(api_router)
    app.add_middleware(_Outermost, metrics=metrics, max_body_bytes=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        wrong = exc.status_code in (404, 405)
        message = f"no route {request.method} {request.url.path}" if wrong else str(exc.detail)
        return error_response(ApiError(exc.status_code, message, code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err["loc"][1:])
        return error_response(ApiError(400, f"{loc or 'request'}: {err['msg']}", param=loc or None))

    @app.exception_handler(GPT2KitError)
    async def _user_error(request: Request, exc: GPT2KitError) -> JSONResponse:
        return error_response(ApiError(400, str(exc)))  # e.g. text the tokenizer cannot encode

    return app
