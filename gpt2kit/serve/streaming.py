"""Server-sent events: OpenAI's streamed chunks over the engine's events, ended by ``data: [DONE]``.

Starlette cancels a streaming response's generator when its client hangs up; the ``finally`` of
:func:`sse` then cancels the request's choices, which frees their slots at the next token boundary.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from gpt2kit.serve.engine_client import Pending, ServedModel, merged
from gpt2kit.serve.metrics import Metrics
from gpt2kit.serve.responses import chat_logprob, completion_logprobs, stream_error, usage


def sse(chunks: AsyncIterator[dict], pending: list[Pending], metrics: Metrics) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        metrics.open_streams.inc()
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:  # the client hung up (Starlette cancels us) or the stream ended: free the slots now
            for p in pending:
                p.cancel()
            await chunks.aclose()
            metrics.open_streams.dec()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chunk(
    kind: str, rid: str, created: int, model: str, include_usage: bool, choices: list[dict], usage=None
) -> dict[str, Any]:
    """One streamed chunk of OpenAI's wire format (``usage`` only when the client asked for it)."""
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if include_usage:
        out["usage"] = usage
    return out


async def chat_chunks(
    served: ServedModel, pending: list[Pending], rid: str, created: int, include_usage: bool, n: int
) -> AsyncIterator[dict]:
    chunk = functools.partial(_chunk, "chat.completion.chunk", rid, created, served.name, include_usage)
    for i in range(len(pending)):
        start = {"role": "assistant", "content": ""}
        yield chunk([{"index": i, "delta": start, "logprobs": None, "finish_reason": None}])
    async for i, ev in merged(pending):
        if ev.finish_reason == "error":
            yield stream_error(ev)
            continue
        if not ev.text and ev.finish_reason is None:
            continue
        lp = None
        if pending[i].logprobs is not None and ev.logprobs:
            lp = {"content": [chat_logprob(served.tokenizer, x) for x in ev.logprobs]}
        delta = {"content": ev.text} if ev.text else {}
        yield chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": ev.finish_reason}])
    if include_usage:
        yield chunk([], usage(pending, n))


async def completion_chunks(
    served: ServedModel, pending: list[Pending], rid: str, created: int, include_usage: bool, n: int
) -> AsyncIterator[dict]:
    chunk = functools.partial(_chunk, "text_completion", rid, created, served.name, include_usage)
    echoed: set[int] = set()
    async for i, ev in merged(pending):
        if ev.finish_reason == "error":
            yield stream_error(ev)
            continue
        p, text = pending[i], ev.text
        echo_now = p.echo and i not in echoed
        if echo_now:
            echoed.add(i)
            text = served.tokenizer.decode(p.prompt) + text
        if not text and ev.finish_reason is None:
            continue
        logprobs = None
        if p.logprobs is not None:
            logprobs = completion_logprobs(served.tokenizer, p, ev.logprobs, echo_now)
        yield chunk([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": ev.finish_reason}])
    if include_usage:
        yield chunk([], usage(pending, n))
