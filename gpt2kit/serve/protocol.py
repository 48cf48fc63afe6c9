"""OpenAI's wire format, as the server reads and refuses it: request bodies, limits and the error object.

A body is read in three steps, each of which refuses with 4xx and OpenAI's error object (never a 5xx):

1. :func:`parse_json` — UTF-8 JSON whose numbers are finite (``NaN``, ``Infinity`` and ``1e999`` are
   refused), nested at most :data:`MAX_DEPTH` deep, with no lone UTF-16 surrogate in a string (the
   tokenizers cannot encode one);
2. :func:`validate` — a strict pydantic model: ``"5"`` is not an int, ``"yes"`` is not a bool, every
   number is within its range (``seed`` is a signed 64-bit integer), a message has content;
3. :func:`refuse_inapplicable` — the **field policy**. A field no model here declares is *ignored*, as
   vLLM does (clients send ``user``, ``metadata``, ``store`` ... freely); its name is logged. A field
   that OpenAI defines but that does not apply to this endpoint (``echo`` on a chat request,
   ``messages`` on a completion) or names a feature this server lacks (``tools``, ``logit_bias``,
   ``response_format`` other than text ...) is *refused* with 400 and ``param`` set to it, unless its
   value asks for nothing (``null``, ``false``, an empty list or object, or the feature's default).

Every error has the shape ``{"error": {"message", "type", "param", "code"}}``; ``param`` names the
offending field as a dotted path (``messages.0.content``, ``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

MAX_STOP = 16
"""Most stop strings a request may give (OpenAI allows 4)."""
MAX_STOP_CHARS = 256
MAX_N = 8
"""Most choices per prompt (``n``)."""
MAX_PROMPTS = 64
"""Most prompts in one ``/v1/completions`` request."""
MAX_TOP_LOGPROBS = 5
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays a body may have (OpenAI's bodies need about 5)."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ROLE_ALIASES = {"developer": "system"}
"""Roles read as another (OpenAI's newer name for the system message)."""


class ApiError(Exception):
    """An error answered as OpenAI's error object, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over {limit:,} bytes: send less", code="request_too_large")


# -- step 1: the JSON itself ----------------------------------------------------------------------------------
def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range: numbers must be finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows: numbers must be finite")


def parse_json(raw: bytes) -> Any:
    """The body as Python values, or 400: not UTF-8 JSON, a non-finite number, too deep, a lone surrogate."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the request body is nested too deeply: at most {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, huge integers, non-finite numbers
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Walk the body without recursion: nesting depth and strings the tokenizers can encode."""
    stack: list[tuple[Any, int, tuple]] = [(value, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise ApiError(
                    400,
                    f"the request body is nested too deeply: at most {MAX_DEPTH} levels",
                    param=_dotted(path) or None,
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((v, depth + 1, (*path, k)) for k, v in items)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                where = _dotted(path)
                raise ApiError(
                    400, f"{where or 'body'}: a string holds a lone UTF-16 surrogate: send valid Unicode",
                    param=where or None,
                ) from None  # fmt: skip


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# -- step 2: the models ---------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False
    """Send one more chunk at the end with ``usage`` (and ``usage: null`` on the others)."""


class _Sampling(_Strict):
    """The options both endpoints share."""

    # A sampling field left out (or null) takes the server's value: ``serve``'s sampling options, which
    # start from the checkpoint's recommended ones (docs/serving.md, "Sampling defaults").
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """1.0: no nucleus cut."""
    top_k: int | None = Field(None, ge=0, le=INT64_MAX)
    """0: no top-k cut."""
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX - MAX_N)  # choice j uses seed + j
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "tools": "tools and function calling are not supported",
        "tool_choice": "tools and function calling are not supported",
        "parallel_tool_calls": "tools and function calling are not supported",
        "functions": "tools and function calling are not supported",
        "function_call": "tools and function calling are not supported",
        "logit_bias": "logit_bias is not supported",
        "response_format": "only the default response_format, {'type': 'text'}, is supported",
        "best_of": "best_of is not supported: ask for n choices instead",
        "audio": "audio output is not supported",
        "modalities": "only text output is supported",
        "prediction": "predicted outputs are not supported",
    }
    """Known OpenAI fields this server does not implement (refused when they ask for something)."""
    HARMLESS: ClassVar[dict[str, tuple]] = {
        "tool_choice": ("none",),
        "response_format": ({"type": "text"},),
        "best_of": (1,),
        "modalities": (["text"],),
    }
    """Values of refused fields that ask for nothing beyond the default (besides null, false, [] and {})."""
    OTHER_ENDPOINT: ClassVar[dict[str, str]] = {}
    """Fields of the other endpoint, refused here."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string must have 1 to {MAX_STOP_CHARS} characters")
        return v

    @property
    def stops(self) -> list[str]:
        """The stop strings the body gives (``[]`` for none; see ``stop is None`` for "left out")."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    """Required; a list needs one part at least (a string may be empty: a reply can be)."""

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        role = ROLE_ALIASES.get(v, v)
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role '{v}': use one of system, user, assistant (developer = system)")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if v is None or v == []:
            raise ValueError("a message needs content: a string, or a list of text parts")
        return v

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    OTHER_ENDPOINT: ClassVar[dict[str, str]] = {
        "prompt": "prompt belongs to /v1/completions: a chat request sends messages",
        "echo": "echo belongs to /v1/completions: a chat reply never repeats the conversation",
        "suffix": "suffix belongs to /v1/completions (and is not supported there either)",
    }


class CompletionBody(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    OTHER_ENDPOINT: ClassVar[dict[str, str]] = {
        "messages": "messages belongs to /v1/chat/completions: a completion request sends a prompt",
        "max_completion_tokens": "max_completion_tokens belongs to /v1/chat/completions: use max_tokens",
        "top_logprobs": "top_logprobs belongs to /v1/chat/completions: give logprobs a number (0 to 5)",
        "suffix": "suffix is not supported (a GPT is not trained to fill in the middle)",
    }

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_PROMPTS and not all(isinstance(t, int) for t in v):
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(v)}")
        if v == [] or (isinstance(v, list) and any(item == [] for item in v)):
            raise ValueError("a prompt must not be empty: give a string, strings or token ids")
        return v


_UNION_TAGS = {"str", "int", "float", "bool", "none"}  # pydantic names the member of a union it tried


def validate(model: type[_Sampling], body: Any) -> Any:
    """``body`` (parsed JSON) as ``model``, or 400 naming the first field at fault."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(
            str(p)
            for p in err["loc"]
            if str(p) not in _UNION_TAGS and not str(p).startswith(("list[", "dict[", "function-"))
        )
        message = err["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{loc or 'body'}: {message}", param=loc or None) from None
    refuse_inapplicable(model, body)
    return parsed


def refuse_inapplicable(model: type[_Sampling], body: dict[str, Any]) -> None:
    """The field policy: fields of the other endpoint and unsupported features → 400; unknown ones ignored."""
    known = set(model.model_fields)
    for name, value in body.items():
        why = model.OTHER_ENDPOINT.get(name) or model.UNSUPPORTED.get(name)
        if why is not None and name not in known:
            if value in (None, False, [], {}) or value in model.HARMLESS.get(name, ()):
                continue
            raise ApiError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
    ignored = sorted(set(body) - known - set(model.OTHER_ENDPOINT) - set(model.UNSUPPORTED))
    if ignored:
        log.info("ignored unknown request fields: %s", ", ".join(ignored[:10]))
