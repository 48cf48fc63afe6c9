"""A conversation with a chat model: the history, the prompt it makes, and streamed replies.

Each turn, the prompt is the system message (if any), the history and the new user message in the
chat template, then the assistant's header; the model writes until it produces a special token of the
template (its end-of-turn, normally) or reaches ``max_new_tokens``. The reply joins the history as the
tokens the model produced, closed by the end-of-turn, so the next prompt starts with exactly the tokens
of the previous one: the session's request keeps its engine slot's cache row between turns
(``Request(keep_cache=True)`` on a one-slot :class:`~gpt2kit.decoding.Engine`), which already holds
them, so only the new message is computed.

The context is the model's ``block_size``. A prompt may use all of it but ``reply_room`` tokens, kept
free for the reply; when the conversation grows past that, its oldest exchanges are dropped (whole
messages, from a user message on; the system message stays). Dropping shifts every position, so that
turn is computed in full. A reply longer than the room left slides the context as ``generate`` does.
:func:`fit_conversation` is that fitting for a whole conversation given at once (the server's chat route).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gpt2kit.chat.context import turns_to_drop
from gpt2kit.chat.template import ChatEncoder, ChatTemplate, EncodedTurn, Message
from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.engine import Engine
from gpt2kit.decoding.sequence import Request
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)


class ChatSession:
    """Multi-turn chat with a model trained with a chat template."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        sampling: SamplingConfig | None = None,
        system: str | None = None,
        reply_room: int | None = None,
    ) -> None:
        """
        Args:
            model: the chat model (in eval mode, on its device and dtype).
            tokenizer: its tokenizer, which has the template's special tokens.
            template: the chat template it was trained with.
            sampling: how replies are sampled; the template's special tokens are added as stop tokens.
            system: an optional system message, kept at the start of every prompt.
            reply_room: context tokens kept free for the reply (default: max_new_tokens, at most a
                quarter of the context).
        """
        self.encoder = ChatEncoder(template, tokenizer)
        self.model = model
        sampling = sampling or SamplingConfig()
        stops = list(dict.fromkeys([*sampling.stop_token_ids, *self.encoder.special_ids]))
        self.sampling = dataclasses.replace(sampling, stop_token_ids=stops)
        self.block_size = model.config.block_size
        self.reply_room = reply_room or max(1, min(self.sampling.max_new_tokens, self.block_size // 4))
        self.system = system
        self.system_turn = self.encoder.encode([Message("system", system)])[0] if system else None
        self._header = self.encoder.reply_header_ids()
        self._end = self.encoder.reply_end_ids()
        empty_user = self.encoder.encode([Message("user", "")])[0].ids
        least = (
            len(self.system_turn.ids if self.system_turn else []) + len(empty_user) + 1 + len(self._header)
        )
        if least + self.reply_room > self.block_size:
            raise GPT2KitError(
                f"the system prompt is {least - len(empty_user) - 1 - len(self._header)} tokens, too long for the "
                f"model's {self.block_size}-token context with {self.reply_room} kept for the reply: shorten it"
            )
        self.engine = Engine(model, tokenizer, max_batch=1, max_queue=0)
        self._last: Request | None = None
        self.turns: list[EncodedTurn] = []
        """The history as the model sees it (after trimming), system message excluded."""
        self.messages: list[Message] = []
        """The same history as text."""
        self.prompt: list[int] = []
        """The last prompt's ids."""
        self.dropped = 0
        """Messages dropped from the history to fit the context, in the last turn."""

    # -- the conversation -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the history (the system message stays)."""
        self.turns, self.messages, self.prompt, self.dropped = [], [], [], 0
        self.engine.forget()
        self._last = None

    @property
    def reused(self) -> int:
        """Prompt tokens of the last turn served from the KV cache of the previous ones."""
        return self._last.reused if self._last is not None else 0

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply, piece by piece; the reply joins the history.

        Stopping early (an exception, Ctrl-C, or closing the iterator) keeps what was produced so far.
        """
        self.turns.append(self.encoder.encode([Message("user", text)])[0])
        self.messages.append(Message("user", text))
        self.prompt = self._fit()
        req = self._last = Request(self.prompt, self.sampling, keep_cache=True)
        try:
            for ev in self.engine.stream(req):
                if ev.text:
                    yield ev.text
        finally:
            self.turns.append(EncodedTurn("assistant", self._header + req.tokens + self._end))
            self.messages.append(Message("assistant", req.text or ""))

    def reply(self, text: str) -> str:
        """:meth:`send`, whole."""
        return "".join(self.send(text))

    def history_text(self) -> str:
        """Everything the next turn will see before the new message, as the model sees it (special tokens
        included): the system message and the conversation so far, the last reply with its end-of-turn.

        The next prompt is this, the new user message and the reply header (less the oldest messages, if
        the conversation has outgrown the context by then).
        """
        system = self.system_turn.ids if self.system_turn else []
        return self.encoder.tokenizer.decode(system + [i for t in self.turns for i in t.ids])

    def prompt_text(self) -> str:
        """The last prompt as the model saw it, special tokens included."""
        return self.encoder.tokenizer.decode(self.prompt)

    # -- fitting the context --------------------------------------------------------------------------------
    def _fit(self) -> list[int]:
        """The prompt for the reply to the last user message, dropping the oldest messages if needed."""
        system = self.system_turn.ids if self.system_turn else []
        turns, self.dropped = fit_turns(self.encoder, system, self.turns, self.block_size, self.reply_room)
        del self.messages[: self.dropped]
        self.turns = turns
        return system + [i for t in turns for i in t.ids] + self._header


@dataclass
class FittedPrompt:
    """A conversation fitted into a model's context: what :func:`fit_conversation` returns."""

    ids: list[int]
    """The prompt: the system message, the messages kept and the reply header."""
    dropped: int
    """How many of the oldest messages (system message excluded) were dropped to fit."""
    cut: int
    """How many tokens were cut from the start of the last user message (when it alone is too long)."""


def fit_conversation(
    encoder: ChatEncoder, messages: Sequence[Message], block_size: int, reply_room: int
) -> FittedPrompt:
    """The prompt for the assistant's reply to ``messages``, fitted into ``block_size - reply_room`` tokens
    the way the chat session does: the system message (a first message with role system) stays, the oldest
    other messages go (whole, from a user message on), and a last message still too long keeps its end.

    A system message that leaves no room for a one-token message and the reply is a one-line
    GPT2KitError naming the numbers. The server's chat route and :class:`ChatSession` both use it.
    """
    messages = list(messages)
    system_msg = messages.pop(0) if messages and messages[0].role == "system" else None
    system = encoder.encode([system_msg])[0].ids if system_msg is not None else []
    header = encoder.reply_header_ids()
    empty_user = encoder.encode([Message("user", "")])[0].ids
    least = len(system) + len(empty_user) + 1 + len(header)
    if least + reply_room > block_size:
        raise GPT2KitError(
            f"the system prompt is {len(system)} tokens, too long for the model's {block_size}-token context "
            f"with {reply_room} kept for the reply: shorten it"
        )
    turns = encoder.encode(messages) if messages else []
    before = sum(len(t.ids) for t in turns[-1:])
    kept, dropped = fit_turns(encoder, system, turns, block_size, reply_room)
    cut = before - sum(len(t.ids) for t in kept[-1:]) if kept else 0
    return FittedPrompt(system + [i for t in kept for i in t.ids] + header, dropped, cut)


def fit_turns(
    encoder: ChatEncoder, system: list[int], turns: list[EncodedTurn], block_size: int, reply_room: int
) -> tuple[list[EncodedTurn], int]:
    """``turns`` fitted after ``system`` and before the reply header in ``block_size - reply_room``
    tokens: (the turns kept, how many of the oldest were dropped)."""
    header = encoder.reply_header_ids()
    budget = block_size - reply_room
    dropped = turns_to_drop(turns, budget - len(system) - len(header))  # the one rule, shared with serve
    turns = list(turns[dropped:])

    def length() -> int:
        return len(system) + sum(len(t.ids) for t in turns) + len(header)

    if dropped:
        log.warning(
            "the conversation outgrew the model's %d-token context: dropped the oldest %d message(s)",
            block_size,
            dropped,
        )
    if turns and length() > budget:  # the new message alone is too long: keep its end
        turns[-1] = _cut_turn(encoder, turns[-1], length() - budget, block_size)
    return turns, dropped


def _cut_turn(encoder: ChatEncoder, turn: EncodedTurn, excess: int, block_size: int) -> EncodedTurn:
    empty = encoder.encode([Message(turn.role, "")])[0].ids
    head = next((i for i, (a, b) in enumerate(zip(turn.ids, empty, strict=False)) if a != b), len(empty))
    tail = len(empty) - head
    content = turn.ids[head : len(turn.ids) - tail]
    log.warning(
        "your message is %d tokens, more than the model's %d-token context holds: it keeps its last %d",
        len(content),
        block_size,
        len(content) - excess,
    )
    ids = turn.ids[:head] + content[excess:] + turn.ids[len(turn.ids) - tail :]
    return EncodedTurn(turn.role, ids, [False] * len(ids))
