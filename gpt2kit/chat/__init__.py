"""Chat: conversations, chat templates, chat sessions and the multi-turn REPL.

Read in this order: ``template.py`` (how a conversation becomes tokens, and which are learned) →
``conversations.py`` (the chat JSONL format, Topical-Chat and ChatterBot) → ``gpt2kit/data/chat.py``
(samples, truncation, masks, ChatDataModule) → ``session.py`` (history, context, KV cache across
turns) → ``repl.py`` (``python -m gpt2kit chat``).

``template.py`` and ``conversations.py`` are pure format code that the data layer reads; the names of
the higher layers (ChatSession, and ChatDataModule from gpt2kit.data) are imported on first use, so
that importing the formats never imports decoding or the data pipeline.
"""

from typing import Any

from gpt2kit.chat.conversations import (
    BadRow,
    Conversation,
    read_chat_jsonl,
    read_chatterbot,
    read_topical_chat,
)
from gpt2kit.chat.template import (
    CHAT_TEMPLATE,
    ROLES,
    ChatEncoder,
    ChatMLTemplate,
    ChatTemplate,
    EncodedTurn,
    Message,
    Piece,
    RoleTokensTemplate,
)

__all__ = [
    "CHAT_TEMPLATE",
    "ROLES",
    "BadRow",
    "ChatDataModule",
    "ChatEncoder",
    "ChatMLTemplate",
    "ChatSession",
    "ChatTemplate",
    "Conversation",
    "EncodedTurn",
    "Message",
    "Piece",
    "RoleTokensTemplate",
    "build_sample",
    "read_chat_jsonl",
    "read_chatterbot",
    "read_topical_chat",
]


def __getattr__(name: str) -> Any:  # PEP 562: the higher layers, on first use
    if name == "ChatSession":
        from gpt2kit.chat.session import ChatSession

        return ChatSession
    if name in ("ChatDataModule", "build_sample"):
        import gpt2kit.data.chat

        return getattr(gpt2kit.data.chat, name)
    raise AttributeError(f"module 'gpt2kit.chat' has no attribute {name!r}")
