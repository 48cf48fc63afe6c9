"""Fitting a conversation into a model's context: which of the oldest messages to drop.

The one rule, shared by the chat session and the server's chat route: the system message stays; while
the prompt is longer than its budget, the oldest exchange goes — the oldest message and every message
after it up to the next user message, so the history still starts with a user message — and the last
message (the one being answered) is never dropped. What to do when the last message alone is too long
is the caller's choice (the REPL keeps its end; the server refuses it).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpt2kit.chat.template import EncodedTurn


def turns_to_drop(turns: Sequence[EncodedTurn], budget: int) -> int:
    """How many of the oldest ``turns`` (system message excluded) to drop so the rest fit ``budget`` tokens.

    ``budget`` is what the turns may use: the context, less the system message, the reply header and
    the room kept for the reply. The result leaves at least the last turn, which may still not fit.
    """
    lengths = [len(t.ids) for t in turns]
    total, dropped = sum(lengths), 0
    while total > budget and len(turns) - dropped > 1:
        end = dropped + 1  # the oldest message, and what follows it up to the next user message
        while end < len(turns) - 1 and turns[end].role != "user":
            end += 1
        total -= sum(lengths[dropped:end])
        dropped = end
    return dropped
