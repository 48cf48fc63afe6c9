"""Conversations from files: gpt2kit's chat JSONL format and adapters for two dialogue corpora.

The format, one conversation per line::

    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello."}]}

Roles are ``system``, ``user`` and ``assistant``; other keys of a line or of a message are ignored.
A conversation needs at least one assistant message: only assistant turns are learned.

Adapters turn the corpora in ``$GPT2KIT_DATA`` (see :mod:`gpt2kit.corpora`) into the same
conversations:

* **Topical-Chat** (``topical-chat``, or any of its ``*.json`` splits): two crowd workers,
  ``agent_1`` (who always opens) and ``agent_2``, chatting about a topic. Neither is a user or an
  assistant, so by default (``roles="both"``) each conversation is used twice, once with each agent
  as the assistant: both sides of every exchange are learned, and the model learns to open a topic
  as well as to answer one. ``"agent_2"`` (the one who replies to the opener) or ``"agent_1"`` keep
  one reading. The two readings of a conversation always fall in the same split (train or val).
* **ChatterBot** (``chatterbot-corpus-english``, or ``*.yml`` files): lists of utterances; the first
  is the user's, then they alternate.

Every reader yields :class:`Conversation` s, and a :class:`BadRow` (its location and what is wrong)
for a row it cannot use; the caller decides whether that stops preparation or is reported and left
out (``ChatDataModule(on_bad_row=...)``). Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gpt2kit.chat.template import ROLES, Message
from gpt2kit.errors import GPT2KitError

JSONL_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'

DialogueRoles = Literal["both", "agent_1", "agent_2"]


@dataclass
class Conversation:
    """A valid conversation and where it came from."""

    messages: list[Message]
    where: str
    """``file:line`` or ``file: conversation ID``, for messages about it."""
    group: str
    """The source conversation: the readings of one Topical-Chat conversation share it (and a split)."""


@dataclass
class BadRow:
    """A row that is not a usable conversation."""

    where: str
    problem: str
    """What is wrong and how to fix it."""

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


Row = Conversation | BadRow


def check_messages(messages: list[Message], where: str, group: str | None = None) -> Row:
    """The conversation, or a :class:`BadRow` if it is empty or has no assistant message."""
    if not messages:
        return BadRow(
            where, "the conversation is empty: give it a user and an assistant message, or remove it"
        )
    if not any(m.role == "assistant" for m in messages):
        return BadRow(
            where,
            "the conversation has no assistant message, so nothing in it can be learned: add the "
            "assistant's reply, or remove it",
        )
    return Conversation(messages, where, group if group is not None else where)


def parse_conversation(record: Any, where: str) -> Row:
    """A ``{"messages": [...]}`` object (one JSONL line) as a conversation, or what is wrong with it."""
    if not isinstance(record, dict) or "messages" not in record:
        found = (
            f"keys: {', '.join(map(str, record))[:80]}" if isinstance(record, dict) else type(record).__name__
        )
        return BadRow(
            where, f'expected an object with a "messages" list ({found}); write each line as {JSONL_EXAMPLE}'
        )
    raw = record["messages"]
    if not isinstance(raw, list):
        return BadRow(where, f'"messages" must be a list of messages, got {type(raw).__name__}')
    messages = []
    for n, m in enumerate(raw, start=1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            return BadRow(where, f'message {n} is not an object with "role" and "content": {str(m)[:80]}')
        if m["role"] not in ROLES:
            return BadRow(
                where,
                f"message {n} has the unknown role '{m['role']}': use one of {', '.join(ROLES)}",
            )
        if not isinstance(m["content"], str):
            return BadRow(
                where, f'message {n}: "content" must be a string, got {type(m["content"]).__name__}'
            )
        messages.append(Message(m["role"], m["content"]))
    return check_messages(messages, where)


def read_chat_jsonl(path: Path) -> Iterator[Row]:
    """gpt2kit's chat format: one ``{"messages": [...]}`` object per line; blank lines are skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield BadRow(
                    where, f"not valid UTF-8 (byte {exc.start} of the line): convert the file to UTF-8"
                )
                continue
            except ValueError as exc:
                yield BadRow(
                    where, f"not valid JSON ({exc}); each line must be one object like {JSONL_EXAMPLE}"
                )
                continue
            yield parse_conversation(record, where)


def read_topical_chat(path: Path, roles: DialogueRoles = "both") -> Iterator[Row]:
    """A Topical-Chat split: ``{conversation_id: {"content": [{"agent", "message", ...}, ...]}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GPT2KitError(
            f"{path} is not a Topical-Chat JSON file ({exc}); give the original file"
        ) from None
    if not isinstance(data, dict):
        raise GPT2KitError(f"{path} is not a Topical-Chat file: expected an object of conversations by id")
    assistants = ["agent_2", "agent_1"] if roles == "both" else [roles]
    for cid, conv in data.items():
        where = f"{path}: conversation {cid}"
        turns = conv.get("content") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            yield BadRow(where, 'has no "content" list of turns')
            continue
        bad = next(
            (
                f"turn {n} {problem}"
                for n, t in enumerate(turns, start=1)
                for problem in [_topical_turn_problem(t)]
                if problem
            ),
            None,
        )
        if bad:
            yield BadRow(where, bad)
            continue
        for assistant in assistants:
            messages = [
                Message("assistant" if t["agent"] == assistant else "user", t["message"].strip())
                for t in turns
            ]
            reading = where if len(assistants) == 1 else f"{where} ({assistant} as the assistant)"
            yield check_messages(messages, reading, group=where)


def _topical_turn_problem(turn: Any) -> str | None:
    if not isinstance(turn, dict) or not isinstance(turn.get("message"), str):
        return 'has no "message" string'
    if turn.get("agent") not in ("agent_1", "agent_2"):
        return f"has the agent {turn.get('agent')!r}, not agent_1 or agent_2"
    return None


def read_chatterbot(path: Path) -> Iterator[Row]:
    """A ChatterBot corpus file: ``conversations: [[utterance, reply, ...], ...]``; user speaks first.

    Utterances are read as the text written in the file (``yes`` stays "yes", ``'22'`` is "22").
    """
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GPT2KitError(f"{path} is not a readable YAML file ({first})") from None
    convs = None
    if isinstance(root, yaml.MappingNode):
        convs = next((v for k, v in root.value if getattr(k, "value", None) == "conversations"), None)
    if not isinstance(convs, yaml.SequenceNode):
        raise GPT2KitError(f"{path} is not a ChatterBot corpus file: it has no 'conversations' list")
    for n, node in enumerate(convs.value, start=1):
        where = f"{path}:{node.start_mark.line + 1}"
        if not isinstance(node, yaml.SequenceNode):
            text = str(getattr(node, "value", ""))[:60]
            yield BadRow(
                where,
                f"conversation {n} is not a list of utterances ({text!r}...): write it as '- - question' "
                "then '  - answer'",
            )
            continue
        if not all(isinstance(u, yaml.ScalarNode) for u in node.value):
            yield BadRow(where, f"conversation {n} holds something other than text utterances")
            continue
        messages = [Message(ROLES[1 + i % 2], u.value.strip()) for i, u in enumerate(node.value)]
        yield check_messages(messages, where)
