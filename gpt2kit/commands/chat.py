"""``python -m gpt2kit chat --ckpt PATH``: talk to a chat model, keeping the conversation.

Interactive on a terminal; for scripts, give the messages with ``--message`` (one, or a JSON list) or
one per line on stdin — each reply is then printed on its own line. Lines that are commands:

    /reset     forget the conversation (the system prompt stays)
    /history   show the conversation as the next turn will see it (the last reply included), special
               tokens included
    /exit      leave (also /quit, Ctrl-D)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.loaded import Dtype

if TYPE_CHECKING:
    from gpt2kit.chat.session import ChatSession

COMMANDS = {
    "/reset": "forget the conversation (the system prompt stays)",
    "/history": "show the conversation as the next turn will see it",
    "/exit": "leave (also /quit, Ctrl-D)",
    "/help": "this list",
}


def chat_command(
    ckpt: str,
    system: str | None = None,
    message: str | list[str] | None = None,
    sampling: SamplingConfig | None = None,
    device: str = "cpu",
    dtype: Dtype = "float32",
    template: str | None = None,
    show_prompt: bool = False,
) -> None:
    """Chat with a checkpoint fine-tuned with a chat template (multi-turn; /reset, /history, /exit).

    Args:
        ckpt: a gpt2kit checkpoint trained with a chat template (e.g. by recipes/chat/topical-chat.yaml).
        system: a system message, kept at the start of the conversation.
        message: a user message to send, printing the reply (non-interactive), or a JSON list of
            messages to send in turn (``--message '["Hi!", "And you?"]'``); without it, messages are
            read from the terminal, or one per line from stdin.
        sampling: the sampling options (--temperature, --top_k, ..., the same as generate's; see
            docs/generation.md); the checkpoint's recommended values replace the defaults left unchanged.
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        dtype: weight dtype; bfloat16 halves the bytes read per token, int8 (CPU) quarters them.
        template: a registered chat template to use instead of the checkpoint's (it must be the one the
            model was trained with).
        show_prompt: after each reply, print the prompt the model saw (and how much of it came from the KV
            cache) on stderr.
    """
    from gpt2kit.chat.session import ChatSession
    from gpt2kit.decoding.loaded import load_for_inference
    from gpt2kit.interop.hub import resolve_checkpoint

    loaded = load_for_inference(resolve_checkpoint(ckpt), device, dtype)
    tokenizer = loaded.require_tokenizer("to chat with")
    if template is not None:
        from gpt2kit.chat.template import CHAT_TEMPLATE

        chat_template = CHAT_TEMPLATE.build(template)
    else:
        chat_template = loaded.require_chat_template()
    model, sampling = loaded.model, loaded.sampling(sampling)
    session = ChatSession(model, tokenizer, chat_template, sampling, system=system)
    if message:
        run(session, [message] if isinstance(message, str) else message, sys.stdout, show_prompt=show_prompt)
    elif sys.stdin.isatty():
        interactive(session, ckpt, show_prompt=show_prompt)
    else:
        run(session, (line.rstrip("\n") for line in sys.stdin), sys.stdout, show_prompt=show_prompt)


def _command(session: ChatSession, line: str, out: TextIO) -> bool | None:
    """Run a /command: False to leave, True if it was one, None if the line is a message."""
    word = line.strip()
    if not word.startswith("/") or " " in word:
        return None
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        sys.stderr.write("(conversation cleared)\n")
    elif word == "/history":
        out.write(session.history_text() + "\n")
    elif word == "/help":
        out.write("".join(f"{c:<10} {what}\n" for c, what in COMMANDS.items()))
    else:
        sys.stderr.write(f"unknown command {word}: the commands are {', '.join(COMMANDS)}\n")
    return True


def _reply(session: ChatSession, text: str, out: TextIO, show_prompt: bool) -> None:
    try:
        for piece in session.send(text):
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:  # stop this reply, keep the conversation
        out.write(" [interrupted]")
    out.write("\n")
    out.flush()
    if show_prompt:
        sys.stderr.write(
            f"[prompt: {len(session.prompt)} tokens, {session.reused} from the KV cache, "
            f"{session.dropped} message(s) dropped]\n{session.prompt_text()}\n"
        )


def run(session: ChatSession, lines: Iterable[str], out: TextIO, show_prompt: bool = False) -> None:
    """Send each line as a user message and print each reply on one line; /commands work too."""
    for line in lines:
        if not line.strip():
            continue
        done = _command(session, line, out)
        if done is False:
            return
        if done is None:
            _reply(session, line, out, show_prompt)


def interactive(session: ChatSession, ckpt: str, show_prompt: bool = False) -> None:
    """The terminal loop: ``you>`` prompts, streamed ``bot>`` replies; Ctrl-C stops a reply, Ctrl-D leaves."""
    with contextlib.suppress(ImportError):  # not on Windows
        import readline  # noqa: F401  line editing and history for input()
    sys.stderr.write(
        f"chatting with {ckpt} ({session.block_size}-token context); /reset starts over, /history shows "
        "what the model sees, /exit leaves\n"
    )
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if not line.strip():
            continue
        done = _command(session, line, sys.stdout)
        if done is False:
            return
        if done is None:
            sys.stdout.write("bot> ")
            _reply(session, line, sys.stdout, show_prompt)
