"""The tokenizer interface. Every tokenizer is saved as JSON (class path, arguments, vocabulary) and rebuilt from it.

A tokenizer is *trained* on the corpus while the data is prepared (char: the alphabet; BPE: the
merges) or comes pretrained (gpt2), then saved next to the token shards and inside every checkpoint,
so that ``generate`` needs nothing but the checkpoint.

Special tokens (``<|endoftext|>``, chat role markers) have ids of their own. Text that happens to
contain a special token's string is ordinary text unless the caller allows it:
``encode(text, allowed_special="all")`` (or a set of tokens). This is OpenAI's GPT-2 encoder's
behaviour (and tiktoken's ``encode_ordinary``): a corpus or a user message can never inject a document
boundary or a role marker, and ``gpt2`` ids equal OpenAI's on any text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import CLASS_PATH, INIT_ARGS, STATE, build_instance, class_path, instance_spec

EOT = "<|endoftext|>"

AllowedSpecial = Collection[str] | Literal["all"]
"""Which special tokens ``encode`` recognises in text: "all", or a collection of them (default: none)."""


class Tokenizer:
    """Base class: text ↔ token ids. Subclasses register under a name (``@TOKENIZER.register``)."""

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        """
        Args:
            special_tokens: tokens with ids of their own, such as "<|endoftext|>" or chat role markers;
                in text they are recognised only where ``encode(..., allowed_special=...)`` allows.
        """
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens))

    # -- what every tokenizer implements ------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` read as plain text (special token strings included)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state beyond the constructor arguments (vocabulary, merges)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def config(self) -> dict[str, Any]:
        """The constructor arguments, to rebuild an equal (untrained) tokenizer."""
        return {"special_tokens": self.special_tokens}

    # -- optional ------------------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        """Whether encode/decode work yet; a pretrained tokenizer always is."""
        return True

    def train(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from an iterator of texts (streamed, not held in memory).

        Long documents arrive in pieces cut before a line break that precedes a non-space character
        (see :func:`gpt2kit.data.readers.cut_pieces`); a tokenizer must encode text the same way
        whether or not it is cut there.
        """

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_ordinary` of many texts; tokenizers override it to use every core."""
        return [self.encode_ordinary(t) for t in texts]

    def _add_special(self, token: str) -> None:
        """Give ``token`` the next free id and append it to ``special_tokens`` (subclasses)."""
        raise GPT2KitError(f"the {type(self).__name__} tokenizer cannot add special tokens")

    # -- special tokens and the public encoding API ----------------------------------------------------
    def encode(self, text: str, *, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of ``text``; a special token's string counts as that token only if allowed."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for part in _split_keep(text, allowed):
            if part in allowed:
                ids.append(self.token_id(part))
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: AllowedSpecial = ()) -> list[list[int]]:
        """:meth:`encode` of many texts at once (in parallel where the tokenizer can)."""
        if not self._allowed(allowed_special):
            return self.encode_ordinary_batch(list(texts))
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add special tokens (e.g. chat role markers) after the vocabulary; returns their ids.

        Existing ids never change, so a model trained with this tokenizer keeps working once its
        embedding is resized (:meth:`gpt2kit.model.GPT.resize_token_embeddings`). Tokens that already
        are special keep their ids.
        """
        if not self.is_trained:
            raise GPT2KitError(
                f"add special tokens to the {self.name} tokenizer after training it, or list them in its "
                f"special_tokens setting: {list(tokens)}"
            )
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise GPT2KitError(f"a special token must be a non-empty string, got {token!r}")
            if token not in self.special_tokens:
                self._add_special(token)
        return [self.token_id(t) for t in tokens]

    def _allowed(self, allowed_special: AllowedSpecial) -> list[str]:
        if allowed_special == "all":
            return self.special_tokens
        if isinstance(allowed_special, str):
            allowed_special = [allowed_special]
        unknown = [t for t in allowed_special if t not in self.special_tokens]
        if unknown:
            raise GPT2KitError(
                f"allowed_special names {unknown}, which are not special tokens of this {self.name} tokenizer "
                f"(it has {self.special_tokens}); add them with add_special_tokens first"
            )
        return list(allowed_special)

    def token_id(self, token: str) -> int | None:
        """The id of a special token, or None if this tokenizer has no such token."""
        return None

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id that separates documents, if the tokenizer has one."""
        return self.token_id(EOT)

    # -- serialisation -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The registered name (``char``, ``bpe`` ...), or the class name of an unregistered subclass."""
        entry = TOKENIZER.lookup(class_path(type(self)))
        return entry.name if entry is not None else type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """``{"class_path", "init_args", "state"}``: stored like every other component (see :mod:`gpt2kit.spec`)."""
        return instance_spec(self, self.config(), state=self.state())

    def spec(self) -> dict[str, Any]:
        """The same as :meth:`to_dict`: what :func:`gpt2kit.spec.spec_of` records for an instance."""
        return self.to_dict()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Tokenizer:
        """Rebuild a saved tokenizer; only subclasses of :class:`Tokenizer` are ever instantiated.

        Reads the ``{class_path, init_args, state}`` form, and the ``{name, config, state}`` form that
        checkpoints and prepared data written before it hold (the name is looked up in the registry).
        """
        if not isinstance(data, dict):
            raise GPT2KitError(f"cannot rebuild a tokenizer from {str(data)[:80]}: expected a mapping")
        if CLASS_PATH not in data and "name" in data:  # the format before class paths
            data = {CLASS_PATH: data["name"], INIT_ARGS: data.get("config", {}), STATE: data.get("state", {})}
        return build_instance(data, Tokenizer, "tokenizer")

    @staticmethod
    def from_json(text: str) -> Tokenizer:
        return Tokenizer.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """A short hash of the full tokenizer: equal fingerprints encode text identically."""
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size if self.is_trained else '?'})"


TOKENIZER = add_kind("tokenizer", Tokenizer)


def _split_keep(text: str, tokens: Sequence[str]) -> list[str]:
    """``text`` split around every occurrence of ``tokens`` (kept as parts; longest token first)."""
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return [part for part in re.split(f"({pattern})", text) if part]
