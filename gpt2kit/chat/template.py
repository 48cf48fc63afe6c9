"""Chat templates: how a conversation becomes tokens, and which of those tokens the model learns.

A conversation is a list of :class:`Message` s (role ``system``, ``user`` or ``assistant``). A
template writes each message as one *turn*: a header (the role marker), the content, and an
end-of-turn marker. The markers are special tokens that the template adds to the tokenizer (the
model's embedding grows to fit), so no text a user types can forge one: message content is always
encoded as plain text (``encode_ordinary``), the markers only ever as their ids.

Training learns the assistant's turns only — the content **and** the end-of-turn token, which is what
makes the model stop — and every assistant turn of a conversation, not just the last. The same
template encodes the prompt in the chat REPL, so the model sees at inference exactly the layout it
was trained on.

Templates are registered components (``python -m gpt2kit list chat_template``)::

    role_tokens   <|user|>Hi there<|end|><|assistant|>Hello!<|end|>
    chatml        <|im_start|>user\\nHi there<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n

A new template is a subclass of :class:`ChatTemplate` that implements :meth:`ChatTemplate.turn`,
:meth:`ChatTemplate.reply_header` and :attr:`ChatTemplate.end_of_turn`, registered with
``@CHAT_TEMPLATE.register("name")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import CLASS_PATH, INIT_ARGS, build_instance, class_path, instance_spec
from gpt2kit.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
"""The roles a message may have."""


@dataclass(frozen=True)
class Message:
    """One message of a conversation."""

    role: str
    """``system``, ``user`` or ``assistant``."""
    content: str
    """What was said (plain text: special-token strings in it are text, not markers)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise GPT2KitError(f"unknown role '{self.role}': a message's role is one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise GPT2KitError(f"a message's content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class Piece:
    """A stretch of a rendered turn."""

    text: str
    """Text, or the string of one of the template's special tokens."""
    special: bool = False
    """True: ``text`` is a special token, encoded as its id."""
    learned: bool = False
    """True: the model is trained to produce these tokens (assistant content and end-of-turn)."""


@dataclass
class EncodedTurn:
    """One message as token ids, with the mask of the ids the model learns to produce."""

    role: str
    ids: list[int]
    mask: list[bool] = field(default_factory=list)
    """Parallel to ``ids``: True where the token is learned (assistant content, its end-of-turn)."""

    @property
    def learned(self) -> int:
        return sum(self.mask)


class ChatTemplate:
    """Base class: the layout of a conversation in tokens."""

    end_of_turn: str = ""
    """The special token that ends every turn; generation stops when the model produces it."""

    def special_tokens(self) -> list[str]:
        """The special tokens the template needs in the tokenizer (added after its vocabulary)."""
        raise NotImplementedError

    def turn(self, role: str, content: str) -> list[Piece]:
        """A message as pieces: header, content, end-of-turn; assistant content and end learned."""
        raise NotImplementedError

    def reply_header(self) -> list[Piece]:
        """What a prompt ends with so that the model writes the assistant's reply next."""
        raise NotImplementedError

    def reply_end(self) -> list[Piece]:
        """What follows a generated reply in the history: the end-of-turn (and any separator).

        The assistant turn's pieces after those of :meth:`reply_header`; override it for a template
        whose turns do not start with the reply header.
        """
        pieces = self.turn("assistant", "")
        header = len(self.reply_header())
        return pieces[header:]

    def literal_texts(self) -> list[str]:
        """The template's own plain text (e.g. ChatML's role names), for training a tokenizer."""
        return [p.text for role in ROLES for p in self.turn(role, "") if not p.special]

    # -- serialisation: stored in checkpoints, so that `chat` renders prompts as training did ---------
    @property
    def name(self) -> str:
        """The registered name (``role_tokens``, ``chatml`` ...), or the class name if unregistered."""
        entry = CHAT_TEMPLATE.lookup(class_path(type(self)))
        return entry.name if entry is not None else type(self).__name__

    def config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: stored like every other component (see :mod:`gpt2kit.spec`)."""
        return instance_spec(self, self.config())

    def spec(self) -> dict[str, Any]:
        """The same as :meth:`to_dict`: what :func:`gpt2kit.spec.spec_of` records for an instance."""
        return self.to_dict()

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ChatTemplate:
        """Rebuild a saved template (only subclasses of :class:`ChatTemplate`); reads the older
        ``{name, config}`` form of checkpoints written before class paths too."""
        if isinstance(data, dict) and CLASS_PATH not in data and "name" in data:
            data = {CLASS_PATH: data["name"], INIT_ARGS: data.get("config", {})}
        return build_instance(data, ChatTemplate, "chat template")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatTemplate) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


CHAT_TEMPLATE = add_kind("chat_template", ChatTemplate)


@CHAT_TEMPLATE.register("role_tokens")
class RoleTokensTemplate(ChatTemplate):
    """One special token per role and one to end a turn: <|user|>Hi<|end|><|assistant|>Hello<|end|>."""

    end_of_turn = "<|end|>"
    MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

    def special_tokens(self) -> list[str]:
        return [*self.MARKERS.values(), self.end_of_turn]

    def turn(self, role: str, content: str) -> list[Piece]:
        learned = role == "assistant"
        return [
            Piece(self.MARKERS[role], special=True),
            Piece(content, learned=learned),
            Piece(self.end_of_turn, special=True, learned=learned),
        ]

    def reply_header(self) -> list[Piece]:
        return [Piece(self.MARKERS["assistant"], special=True)]


@CHAT_TEMPLATE.register("chatml")
class ChatMLTemplate(ChatTemplate):
    """ChatML (OpenAI, Qwen): <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n."""

    end_of_turn = "<|im_end|>"
    START = "<|im_start|>"

    def special_tokens(self) -> list[str]:
        return [self.START, self.end_of_turn]

    def turn(self, role: str, content: str) -> list[Piece]:
        learned = role == "assistant"
        return [
            Piece(self.START, special=True),
            Piece(f"{role}\n"),
            Piece(content, learned=learned),
            Piece(self.end_of_turn, special=True, learned=learned),
            Piece("\n"),  # a separator between turns; the reply ends at <|im_end|>, so it is not learned
        ]

    def reply_header(self) -> list[Piece]:
        return [Piece(self.START, special=True), Piece("assistant\n")]


class ChatEncoder:
    """A template bound to a tokenizer that has its special tokens: conversations → ids and masks."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer) -> None:
        missing = [t for t in template.special_tokens() if tokenizer.token_id(t) is None]
        if missing:
            raise GPT2KitError(
                f"the tokenizer ({tokenizer!r}) lacks the {template.name} chat template's special tokens "
                f"{', '.join(missing)}: the model was never trained with this template; fine-tune it into a "
                "chatbot first (see recipes/chat/topical-chat.yaml)"
            )
        self.template = template
        self.tokenizer = tokenizer

    @property
    def end_of_turn_id(self) -> int:
        return self._special(self.template.end_of_turn)

    @property
    def special_ids(self) -> list[int]:
        """The ids of all the template's special tokens."""
        return [self._special(t) for t in self.template.special_tokens()]

    def _special(self, token: str) -> int:
        i = self.tokenizer.token_id(token)
        assert i is not None, token  # checked in __init__
        return i

    def encode_pieces(self, pieces: Sequence[Piece], role: str = "") -> EncodedTurn:
        """Pieces as ids and mask; text is always plain text, special pieces are their ids."""
        return self._encode([pieces], [role])[0]

    def encode(self, messages: Sequence[Message]) -> list[EncodedTurn]:
        """Every message of a conversation as a turn of ids and mask."""
        return self.encode_many([messages])[0]

    def encode_many(self, conversations: Sequence[Sequence[Message]]) -> list[list[EncodedTurn]]:
        """:meth:`encode` of many conversations, their text tokenized in one batch (on every core)."""
        pieces = [self.template.turn(m.role, m.content) for conv in conversations for m in conv]
        turns = iter(self._encode(pieces, [m.role for conv in conversations for m in conv]))
        return [[next(turns) for _ in conv] for conv in conversations]

    def _encode(self, turns: Sequence[Sequence[Piece]], roles: Sequence[str]) -> list[EncodedTurn]:
        texts = [p.text for pieces in turns for p in pieces if not p.special and p.text]
        encoded = iter(self.tokenizer.encode_ordinary_batch(texts) if texts else [])
        out = []
        for pieces, role in zip(turns, roles, strict=True):
            turn = EncodedTurn(role, [], [])
            for p in pieces:
                ids = [self._special(p.text)] if p.special else next(encoded) if p.text else []
                turn.ids += ids
                turn.mask += [p.learned] * len(ids)
            out.append(turn)
        return out

    def reply_header_ids(self) -> list[int]:
        """The ids a prompt ends with, for the model to write the assistant's reply."""
        return self.encode_pieces(self.template.reply_header(), "assistant").ids

    def reply_end_ids(self) -> list[int]:
        """The ids that close a generated reply in the history (the end-of-turn, and any separator)."""
        return self.encode_pieces(self.template.reply_end(), "assistant").ids

    def render(self, messages: Sequence[Message]) -> str:
        """The conversation as the model sees it, markers included (for display and tests)."""
        return self.tokenizer.decode([i for turn in self.encode(messages) for i in turn.ids])
