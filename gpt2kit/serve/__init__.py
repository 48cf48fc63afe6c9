"""``gpt2kit serve``: an OpenAI-compatible HTTP API and a chat page over the continuous-batching engine.

Importing this package is cheap; the HTTP pieces (FastAPI, uvicorn) are imported by
:func:`~gpt2kit.commands.serve.serve_command` and :mod:`gpt2kit.serve.app`, from the ``serve`` extra
(``pip install 'gpt2kit[serve]'``).
"""
