"""The tokenizer a checkpoint was trained with, to prepare fine-tuning data exactly as pretraining did."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from gpt2kit.ckptfile import read_checkpoint, stored_tokenizer
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers.base import TOKENIZER, Tokenizer

log = logging.getLogger(__name__)


@TOKENIZER.register("from_checkpoint")
class CheckpointTokenizer(Tokenizer):
    """The tokenizer stored in a gpt2kit checkpoint (e.g. the model's init_from), used unchanged.

    It stands in for that tokenizer everywhere: it saves as it, compares equal to it and encodes as it
    does, so the data it prepares passes the model's tokenizer check. In a recipe::

        data:
          init_args:
            tokenizer:
              class_path: CheckpointTokenizer
              init_args: {path: runs/shakespeare-char/checkpoints/last.ckpt}
    """

    def __init__(self, path: str, skip_unknown: bool = False) -> None:
        """
        Args:
            path: the gpt2kit checkpoint (.ckpt) whose tokenizer to use.
            skip_unknown: drop characters the tokenizer cannot encode instead of refusing the text. A
                character vocabulary meets new text this way: Shakespeare's 65 characters have no
                curly quotes, dashes or digits, which a novel has. A byte-level BPE encodes everything.
        """
        saved = stored_tokenizer(read_checkpoint(path))
        if saved is None:
            raise GPT2KitError(f"checkpoint {path} carries no tokenizer: it was not saved by a gpt2kit run")
        self.inner = Tokenizer.from_dict(saved)
        super().__init__(self.inner.special_tokens)
        self.path = path
        self.skip_unknown = skip_unknown
        self._encodable: dict[str, bool] = {}

    # -- it is the checkpoint's tokenizer -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.inner.name

    def to_dict(self) -> dict[str, Any]:
        return self.inner.to_dict()

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def train(self, texts: Iterable[str]) -> None:
        """Nothing to learn: the vocabulary is the checkpoint's."""

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    def token_id(self, token: str) -> int | None:
        return self.inner.token_id(token)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.inner.encode_ordinary(self._drop_unknown(text) if self.skip_unknown else text)

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.skip_unknown:
            texts = [self._drop_unknown(t) for t in texts]
        return self.inner.encode_ordinary_batch(texts)

    def _add_special(self, token: str) -> None:
        self.inner.add_special_tokens([token])
        self.special_tokens.append(token)

    # -- skip_unknown ---------------------------------------------------------------------------------------
    def _drop_unknown(self, text: str) -> str:
        new = set(text).difference(self._encodable)
        for c in new:
            try:
                self.inner.encode_ordinary(c)
                self._encodable[c] = True
            except GPT2KitError:
                self._encodable[c] = False
        dropped = sorted(c for c in new if not self._encodable[c])
        if dropped:
            log.info("dropping characters the checkpoint's tokenizer cannot encode: %r", "".join(dropped))
        unknown = [c for c in set(text) if not self._encodable[c]]
        return text.translate(dict.fromkeys(map(ord, unknown))) if unknown else text

    def __repr__(self) -> str:
        return f"CheckpointTokenizer({self.path!r}: {self.inner!r})"
