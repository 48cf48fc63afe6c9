"""Character-level tokenizer: one id per distinct character of the training corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers.base import TOKENIZER, Tokenizer


@TOKENIZER.register("char")
class CharTokenizer(Tokenizer):
    """One token per character (nanoGPT's Shakespeare tokenizer); works for any script, e.g. Chinese."""

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        """
        Args:
            special_tokens: extra tokens (such as "<|endoftext|>") appended after the characters.
        """
        super().__init__(special_tokens)
        self.chars: list[str] = []
        self._build()

    def _build(self) -> None:
        self.itos = [*self.chars, *self.special_tokens]
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @property
    def is_trained(self) -> bool:
        return bool(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def train(self, texts: Iterable[str]) -> None:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise GPT2KitError("cannot build a character vocabulary from an empty corpus")
        self.chars = sorted(seen)
        self._build()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split_special(text):
            if part in self.special_tokens:
                ids.append(self.stoi[part])
                continue
            try:
                ids.extend(self.stoi[c] for c in part)
            except KeyError:
                unknown = sorted({c for c in part if c not in self.stoi})
                raise GPT2KitError(
                    f"characters not in this char tokenizer's vocabulary: {''.join(unknown)!r} "
                    f"({', '.join(f'U+{ord(c):04X}' for c in unknown[:8])}); use only characters of the training corpus"
                ) from None
        return ids

    def _split_special(self, text: str) -> list[str]:
        parts = [text]
        for tok in self.special_tokens:
            parts = [p for part in parts for p in _split_keep(part, tok)]
        return parts

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_id(self, token: str) -> int | None:
        return self.stoi.get(token) if token in self.special_tokens else None

    def state(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.chars = list(state.get("chars", ""))
        self._build()


def _split_keep(text: str, sep: str) -> list[str]:
    out: list[str] = []
    for i, piece in enumerate(text.split(sep)):
        if i:
            out.append(sep)
        if piece:
            out.append(piece)
    return out
