"""``python -m gpt2kit serve --ckpt PATH``: load a checkpoint and serve it over HTTP until Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import os
from typing import Literal

from gpt2kit.config import SamplingConfig
from gpt2kit.errors import GPT2KitError

log = logging.getLogger("gpt2kit")

API_KEY_ENV = "GPT2KIT_API_KEY"
"""Environment variable read for the API key when ``--api_key`` is not given."""


def serve_command(
    ckpt: str,
    dtype: Literal["float32", "bfloat16", "int8"] = "float32",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    api_key: str | None = None,
    device: str = "cpu",
    model_name: str | None = None,
    max_body_bytes: int = 1 << 20,
    sampling: SamplingConfig | None = None,
) -> None:
    """Serve a checkpoint: an OpenAI-compatible API (/v1/completions, /v1/chat/completions) and a chat page.

    Args:
        ckpt: a gpt2kit checkpoint; a chat checkpoint gets both endpoints, a plain language model completions.
        dtype: weight dtype; int8 (CPU) reads a quarter of float32's bytes per token.
        host: address to listen on; the default serves this machine only.
        port: TCP port (0: any free port).
        max_batch: requests decoding at once (slots of the continuous batch).
        max_queue: requests waiting for a slot beyond which the server answers 429.
        api_key: a key every route but /health and the page needs (Authorization: Bearer KEY); default:
            the GPT2KIT_API_KEY environment variable, else no key.
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        model_name: the model id clients pass as "model" (default: the checkpoint's file name, no suffix).
        max_body_bytes: larger request bodies are refused with 413.
        sampling: the sampling options (--temperature, --top_k, ..., the same as generate's; see
            docs/generation.md), used for every field a request leaves out; the checkpoint's recommended
            values replace the defaults left unchanged. A request's own values win.
    """
    try:
        import uvicorn

        from gpt2kit.serve.app import create_app
        from gpt2kit.serve.engine_client import load_served_model
        from gpt2kit.serve.server import GracefulServer, bind, signals_end_quietly
    except ImportError as exc:
        raise GPT2KitError(
            f"serving needs the 'serve' extra ({exc.name} is missing): pip install 'gpt2kit[serve]'"
        ) from None
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    served = load_served_model(ckpt, device, dtype, max_batch, max_queue, model_name, sampling)
    app = create_app(served, api_key=api_key, max_body_bytes=max_body_bytes)
    sock = bind(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    log.info("serving %s (%s, %s, %d slots)", served.name, "chat + completions" if served.template else
             "completions only", dtype, max_batch)  # fmt: skip
    d = served.sampling
    log.info("request defaults: temperature %g, top_k %s, top_p %s, max_tokens %d (--temperature ... change "
             "them; a request's own values win)", d.temperature, d.top_k, d.top_p, d.max_new_tokens)  # fmt: skip
    log.info("chat page: %s/", url)
    log.info("API:       %s/v1  (model id: %s%s)", url, served.name, ", key required" if api_key else "")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without --api_key: anyone who can reach it can use the model", host)
    server = GracefulServer(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5), served.engine
    )
    with signals_end_quietly():
        server.run(sockets=[sock])
    log.info("stopped")
