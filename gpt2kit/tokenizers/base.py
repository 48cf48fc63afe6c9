"""The tokenizer interface. Every tokenizer can be saved as JSON and rebuilt from it by name.

A tokenizer is *trained* on the corpus while the data is prepared (char: the alphabet; BPE: the
merges) or comes pretrained (gpt2), then saved next to the token shards and inside every checkpoint,
so that ``generate`` needs nothing but the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind

EOT = "<|endoftext|>"


class Tokenizer:
    """Base class: text ↔ token ids. Subclasses register under a name (``@TOKENIZER.register``)."""

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        """
        Args:
            special_tokens: extra tokens never split by the tokenizer (e.g. chat role markers).
        """
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens))

    # -- what every tokenizer implements ------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
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
        """Learn the vocabulary from an iterator of documents (streamed, not held in memory)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def token_id(self, token: str) -> int | None:
        """The id of a special token, or None if this tokenizer has no such token."""
        return None

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id that separates documents, if the tokenizer has one."""
        return self.token_id(EOT)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Decode ids one at a time, yielding text as soon as it is complete (for streaming)."""
        buffer: list[int] = []
        for i in ids:
            buffer.append(i)
            text = self.decode(buffer)
            if not text.endswith("\ufffd"):  # an incomplete multi-byte character waits for the rest
                buffer = []
                yield text
        if buffer:
            yield self.decode(buffer)

    # -- serialisation -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return TOKENIZER.entry(type(self).__name__).name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config(), "state": self.state()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Tokenizer:
        """Rebuild a saved tokenizer; only registered classes are ever instantiated."""
        try:
            cls = TOKENIZER.get(data["name"])
            tok = cls(**data.get("config", {}))
        except (KeyError, TypeError) as exc:
            raise GPT2KitError(f"cannot rebuild tokenizer from {str(data)[:80]}...: {exc}") from exc
        tok.load_state(data.get("state", {}))
        return tok

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
