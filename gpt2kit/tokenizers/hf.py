"""A pretrained tokenizer from a Hugging Face model folder (``tokenizer.json``, or GPT-2's
``vocab.json`` + ``merges.txt``), kept whole inside gpt2kit checkpoints.

This is how ``python -m gpt2kit import-hf`` carries a downloaded model's tokenizer along with its
weights, so that ``generate`` needs nothing but the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers.base import EOT, TOKENIZER, Tokenizer


@TOKENIZER.register("hf")
class HFTokenizer(Tokenizer):
    """A pretrained `tokenizers` tokenizer read from a Hugging Face folder (e.g. GPT-2's byte-level BPE)."""

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        """
        Args:
            special_tokens: tokens never split (filled in from the folder's tokenizer).
        """
        super().__init__(special_tokens)
        self._tok: Any = None
        self._plain: Any = None  # the same tokenizer without added tokens: special strings read as text

    @classmethod
    def from_dir(cls, path: str | Path) -> HFTokenizer | None:
        """The tokenizer of a Hugging Face model folder, or None if it has no tokenizer files."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers

        path = Path(path)
        if (path / "tokenizer.json").is_file():
            backend = Backend.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            # GPT-2's byte-level BPE: the same regex split, byte alphabet and merges as OpenAI's encoder.
            backend = Backend(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            if backend.token_to_id(EOT) is not None:
                backend.add_special_tokens([EOT])
        else:
            return None
        tok = cls()
        tok._set(backend)
        return tok

    def _set(self, backend: Any) -> None:
        import json

        from tokenizers import Tokenizer as Backend

        self._tok = backend
        plain = json.loads(backend.to_str())
        plain["added_tokens"] = []
        self._plain = Backend.from_str(json.dumps(plain))
        added = backend.get_added_tokens_decoder().values()
        self.special_tokens = list(
            dict.fromkeys([*self.special_tokens, *(t.content for t in added if t.special)])
        )

    @property
    def is_trained(self) -> bool:
        return self._tok is not None

    def train(self, texts: Any) -> None:
        raise GPT2KitError("an HFTokenizer is pretrained and cannot be trained: use it as it is")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token) if token in self.special_tokens else None

    def _add_special(self, token: str) -> None:
        from tokenizers import AddedToken

        self._tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        self.special_tokens.append(token)

    def state(self) -> dict[str, Any]:
        # One JSON string, not nested data: a checkpoint's weights_only unpickler reads it at once.
        return {"tokenizer_json": self._tok.to_str()} if self._tok is not None else {}

    def load_state(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as Backend

        if "tokenizer_json" in state:
            self._set(Backend.from_str(state["tokenizer_json"]))

    def save_hf(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (and, for a BPE, ``vocab.json`` + ``merges.txt``) into a folder."""
        path = Path(path)
        self._tok.save(str(path / "tokenizer.json"))
        if type(self._tok.model).__name__ == "BPE":
            self._tok.model.save(str(path))
