"""Chat: conversations, chat templates, assistant-only fine-tuning data, and the multi-turn REPL.

Read in this order: ``template.py`` (how a conversation becomes tokens, and which are learned) →
``conversations.py`` (the chat JSONL format, Topical-Chat and ChatterBot) → ``data.py`` (samples,
truncation, masks, ChatDataModule) → ``session.py`` (history, context, KV cache across turns) →
``repl.py`` (``python -m gpt2kit chat``).
"""

from gpt2kit.chat.conversations import (
    BadRow,
    Conversation,
    read_chat_jsonl,
    read_chatterbot,
    read_topical_chat,
)
from gpt2kit.chat.data import ChatDataModule, build_sample
from gpt2kit.chat.session import ChatSession
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
