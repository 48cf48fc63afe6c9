"""The HTTP server's process side: a listening socket, and uvicorn stopping gracefully on Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator

from gpt2kit.errors import GPT2KitError

log = logging.getLogger("gpt2kit")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound before uvicorn starts, so port 0 tells the real port at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GPT2KitError(
            f"cannot listen on {host}:{port}: {exc.strerror}: pick another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def signals_end_quietly() -> Iterator[None]:
    """While serving, SIGINT and SIGTERM end the command normally (exit code 0), not with a traceback.

    uvicorn (0.29 to 0.55 tested) installs its own handlers with ``signal.signal`` for the run, then
    restores the ones it found and raises each signal it caught again, so the process ends as it would
    have without uvicorn. The ones it finds are these: after a graceful stop, a re-raised signal is
    logged and ignored. Only the main thread may set handlers; elsewhere (tests) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def after_stop(sig: int, frame) -> None:
        log.debug("%s after a graceful stop: ignored", signal.Signals(sig).name)

    previous = {sig: signal.signal(sig, after_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _server_class():
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        """uvicorn's server, which on Ctrl-C / SIGTERM first ends every running request with a final event.

        uvicorn waits for open connections before it shuts the application down; streams would hold it
        until they finished. Asking the engine to abort (without waiting) ends each stream at its next
        token boundary with finish_reason "abort" and ``[DONE]``, so the wait is short. ``handle_exit``
        is the method uvicorn installs as its signal handler (0.29 to 0.55 tested); it is extended, not
        replaced.
        """

        def __init__(self, config, engine) -> None:
            super().__init__(config)
            self.engine = engine

        def handle_exit(self, sig, frame) -> None:
            self.engine.stop(wait=False)
            super().handle_exit(sig, frame)

    return _GracefulServer


def GracefulServer(config, engine):  # noqa: N802 (a class made on demand: uvicorn is an optional dependency)
    """A uvicorn server that aborts the engine's requests first when asked to exit."""
    return _server_class()(config, engine)
