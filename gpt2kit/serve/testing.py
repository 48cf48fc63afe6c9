"""Run a server on a background thread, for tests and benchmarks (127.0.0.1, a free port)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from gpt2kit.errors import GPT2KitError


@contextlib.contextmanager
def running_server(
    served: Any, api_key: str | None = None, timeout: float = 30.0, **app_options: Any
) -> Iterator[str]:
    """Serve ``served`` (a ServedModel) on 127.0.0.1 in this process; yields the base URL, stops on exit."""
    import uvicorn

    from gpt2kit.serve.app import create_app
    from gpt2kit.serve.server import GracefulServer, bind

    app = create_app(served, api_key=api_key, **app_options)
    sock = bind("127.0.0.1", 0)
    server = GracefulServer(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5), served.engine
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise GPT2KitError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.handle_exit(None, None)
        thread.join(timeout)
        sock.close()
