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
        self.itos = [*self.chars, *self.special_tokens]  # id -> string; special tokens after the characters
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_ids = {s: len(self.chars) + i for i, s in enumerate(self.special_tokens)}

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

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            hint = ""
            if any(s in text for s in self.special_tokens):
                hint = " (the text holds a special token: allow it with encode(text, allowed_special='all'))"
            raise GPT2KitError(
                f"characters not in this char tokenizer's vocabulary: {''.join(unknown)!r} "
                f"({', '.join(f'U+{ord(c):04X}' for c in unknown[:8])}); use only characters of the "
                f"training corpus{hint}"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_id(self, token: str) -> int | None:
        return self.special_ids.get(token)

    def _add_special(self, token: str) -> None:
        self.special_tokens.append(token)
        self._build()  # special tokens follow the characters, so the new one takes the next id

    def state(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.chars = list(state.get("chars", ""))
        self._build()
