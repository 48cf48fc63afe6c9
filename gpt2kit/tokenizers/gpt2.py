"""OpenAI's GPT-2 tokenizer: the released ``encoder.json`` + ``vocab.bpe``, giving OpenAI's exact ids.

The files come from the named corpus ``gpt2-bpe`` (``$GPT2KIT_DATA``, the cache, or a download, each
checked against its sha256). Once loaded, the vocabulary is plain data inside the tokenizer's saved
state, so prepared data and checkpoints are self-contained: they never need the files again.

``<|endoftext|>`` (id 50256) separates documents in prepared data. In text it is ordinary text, as in
OpenAI's encoder (``"<|endoftext|>"`` → ``[27, 91, 437, 1659, 5239, 91, 29]``), unless the caller
allows it: ``encode(text, allowed_special="all")`` → ``[50256]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from gpt2kit.tokenizers.base import EOT, TOKENIZER
from gpt2kit.tokenizers.bpe import ByteLevelBPE

CORPUS = "gpt2-bpe"


@TOKENIZER.register("gpt2")
class GPT2Tokenizer(ByteLevelBPE):
    """OpenAI's GPT-2 byte-level BPE (50,257 tokens), pretrained: the ids match OpenAI's on any text."""

    def __init__(self, special_tokens: Sequence[str] = (EOT,)) -> None:
        """
        Args:
            special_tokens: "<|endoftext|>" (id 50256) and any added ones (e.g. chat markers, ids 50257, ...).
        """
        super().__init__(special_tokens)

    @property
    def is_trained(self) -> bool:
        return True  # pretrained; the files are read on first use

    def train(self, texts: Iterable[str]) -> None:
        """Nothing to learn: the vocabulary is OpenAI's."""

    def _loaded(self) -> list[str]:
        if self.tokens is None:
            self._set(*load_gpt2_files())
        return self.tokens


def load_gpt2_files() -> tuple[list[str], list[str]]:
    """OpenAI's tokens (by id) and merges, from the sha256-checked ``gpt2-bpe`` corpus."""
    from gpt2kit.corpora import fetch_corpus

    root = fetch_corpus(CORPUS)
    vocab = json.loads((root / "encoder.json").read_text(encoding="utf-8"))
    lines = (root / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line]  # the first line is "#version: 0.2"
    return sorted(vocab, key=vocab.get), merges
