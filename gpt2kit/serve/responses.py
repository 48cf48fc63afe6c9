"""OpenAI's response objects, built from what the engine produced: whole responses and streamed chunks."""

from __future__ import annotations

from typing import Any

from gpt2kit.serve.engine_client import Event, Pending, ServedModel, TokenLogprob
from gpt2kit.tokenizers import Tokenizer


def model_card(served: ServedModel) -> dict[str, Any]:
    return {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "gpt2kit",
        "context_length": served.block_size,
        "chat": served.template is not None,
    }


def usage(pending: list[Pending], n: int) -> dict[str, int]:
    prompt = sum(len(p.prompt) for p in pending[::n])  # each prompt counted once, whatever n
    completion = sum(len(p.tokens) for p in pending)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprob(tok: Tokenizer, x: TokenLogprob) -> dict[str, Any]:
    def entry(t: int, lp: float) -> dict[str, Any]:
        s = tok.decode([t])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {**entry(x.token, x.logprob), "top_logprobs": [entry(t, lp) for t, lp in x.top]}


def completion_logprobs(tok: Tokenizer, p: Pending, lps: list[TokenLogprob], echo: bool) -> dict[str, list]:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    entries: list[TokenLogprob | None] = []
    ids: list[int] = []
    if echo:
        entries += p.prompt_logprobs or [None] * len(p.prompt)
        ids += p.prompt
    entries += lps
    ids += [x.token for x in lps]
    tokens = [tok.decode([t]) for t in ids]
    offsets, at = [], 0 if echo else len(tok.decode(p.prompt))
    for s in tokens:
        offsets.append(at)
        at += len(s)
    return {
        "tokens": tokens,
        "token_logprobs": [None if e is None else e.logprob for e in entries],
        "top_logprobs": [None if e is None else {tok.decode([t]): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_response(
    served: ServedModel, rid: str, created: int, pending: list[Pending], results: list[list[Event]], n: int
) -> dict[str, Any]:
    choices = []
    for i, (p, evs) in enumerate(zip(pending, results, strict=True)):
        lps = [x for e in evs for x in e.logprobs]
        logprobs = None
        if p.logprobs is not None:
            logprobs = {"content": [chat_logprob(served.tokenizer, x) for x in lps]}
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(e.text for e in evs)},
                "logprobs": logprobs,
                "finish_reason": p.finish_reason,
            }
        )
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": usage(pending, n),
    }


def completion_response(
    served: ServedModel, rid: str, created: int, pending: list[Pending], results: list[list[Event]], n: int
) -> dict[str, Any]:
    tok = served.tokenizer
    choices = []
    for i, (p, evs) in enumerate(zip(pending, results, strict=True)):
        text = "".join(e.text for e in evs)
        logprobs = None
        if p.logprobs is not None:
            logprobs = completion_logprobs(tok, p, [x for e in evs for x in e.logprobs], p.echo)
        if p.echo:
            text = tok.decode(p.prompt) + text
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": p.finish_reason})
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": usage(pending, n),
    }


def stream_error(ev: Event) -> dict[str, Any]:
    """What a stream sends when generation fails under it: OpenAI's error object, as an event."""
    message = f"generation failed: {ev.error}"
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
