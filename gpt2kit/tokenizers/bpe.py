"""Byte-level BPE, GPT-2's scheme: a trainable tokenizer, and the machinery :mod:`gpt2kit.tokenizers.gpt2` shares.

How text becomes ids, in three steps:

1. split into "words" with GPT-2's regex (:data:`GPT2_SPLIT`; e.g. ``"Hello world"`` → ``"Hello"``,
   ``" world"``);
2. each word is taken as its UTF-8 bytes, so every string, in any script, is covered (the vocabulary
   writes bytes in a 256-character alphabet of printable stand-ins, :func:`bytes_to_unicode`, where
   space is ``Ġ``);
3. inside each word, adjacent tokens are merged by priority until no merge applies.

Steps 1 and 3 run in OpenAI's ``tiktoken`` (Rust, one thread per core for a batch), given the
vocabulary's byte strings ranked by id. For a vocabulary whose ids follow its merge order (GPT-2's,
and any the ``tokenizers`` trainer makes) that gives the ids the merge list gives; the tests check
both against independent encoders. The vocabulary is plain data (``tokens``, id → token, and
``merges``, in GPT-2's ``vocab.bpe`` format), saved with the prepared data and inside checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import regex

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers.base import EOT, TOKENIZER, Tokenizer

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
"""GPT-2's pre-tokenization: contractions, letters, digits and punctuation runs (each with at most one
leading space), and whitespace, of which a run's last space stays with the next word."""

BYTES = 256
"""The alphabet: every byte is a token, so nothing is ever out of vocabulary."""

PARALLEL_CHARS = 1 << 16
"""Batches larger than this are encoded by one thread per core."""


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → character table: printable bytes stand for themselves, the rest map above U+00FF."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(BYTES):
        if b not in table:
            table[b] = chr(BYTES + extra)
            extra += 1
    return table


class ByteLevelBPE(Tokenizer):
    """Base of the byte-level BPE tokenizers: encoding and decoding with a vocabulary and merges."""

    def __init__(self, special_tokens: Sequence[str] = (EOT,)) -> None:
        super().__init__(special_tokens)
        self.tokens: list[str] | None = None  # id -> token (in the byte alphabet; special tokens as they are)
        self.merges: list[str] = []  # "a b": merge a and b, in order of priority
        self._reset()

    def _reset(self) -> None:
        self.vocab: dict[str, int] = {}  # token -> id
        self._bytes: list[bytes] = []  # id -> the bytes it stands for
        self._encoder: Any = None  # the tiktoken Encoding, built on first use

    def _set(self, tokens: list[str], merges: list[str]) -> None:
        """Install a vocabulary; special tokens it lacks get the next free ids, in order."""
        self._reset()
        self.tokens, self.merges = list(tokens), list(merges)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        for token in self.special_tokens:
            if token not in self.vocab:
                self.vocab[token] = len(self.tokens)
                self.tokens.append(token)
        if len(self.vocab) != len(self.tokens):
            raise GPT2KitError(f"the {self.name} vocabulary lists a token twice")
        specials = set(self.special_tokens)
        self._bytes = [
            t.encode("utf-8") if t in specials else t.translate(_TO_LATIN1).encode("latin-1")
            for t in self.tokens
        ]

    def _loaded(self) -> list[str]:
        """The id -> token list, which must be there by now (trained or loaded)."""
        if self.tokens is None:
            raise GPT2KitError(f"the {self.name} tokenizer is not trained yet: prepare data with it first")
        return self.tokens

    # -- Tokenizer ------------------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.tokens is not None

    @property
    def vocab_size(self) -> int:
        return len(self._loaded())

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_ordinary_batch([text])[0]

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoder = self._tiktoken()
        if len(texts) > 1 and sum(map(len, texts)) > PARALLEL_CHARS:
            return encoder.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)
        return [encoder.encode_ordinary(t) for t in texts]

    def _tiktoken(self) -> Any:
        """The vocabulary as a tiktoken Encoding: each token's bytes, ranked by id (special tokens apart)."""
        if self._encoder is None:
            import tiktoken

            self._loaded()
            specials = set(self.special_tokens)
            ranks = {
                b: i
                for i, (t, b) in enumerate(zip(self.tokens, self._bytes, strict=True))
                if t not in specials
            }
            self._encoder = tiktoken.Encoding(
                f"gpt2kit-{self.name}", pat_str=GPT2_SPLIT.pattern, mergeable_ranks=ranks, special_tokens={}
            )
        return self._encoder

    def decode(self, ids: Sequence[int]) -> str:
        self._loaded()
        table, ids = self._bytes, list(ids)
        if ids and not (min(ids) >= 0 and max(ids) < len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise GPT2KitError(f"token id {bad} is not in the {self.name} vocabulary (0..{len(table) - 1})")
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")  # cut characters: U+FFFD

    def token_id(self, token: str) -> int | None:
        self._loaded()
        return self.vocab[token] if token in self.special_tokens else None

    def _add_special(self, token: str) -> None:
        tokens = self._loaded()
        self.special_tokens.append(token)
        self._set(tokens, self.merges)  # a new string takes the next id; an existing token keeps its id

    def state(self) -> dict[str, Any]:
        return {"tokens": self._loaded(), "merges": self.merges} if self.is_trained else {}

    def load_state(self, state: dict[str, Any]) -> None:
        if "tokens" in state:
            self._set(state["tokens"], state["merges"])


_TO_LATIN1 = {ord(c): b for b, c in bytes_to_unicode().items()}
"""The reverse: a token's characters -> the bytes they stand for (as latin-1 characters)."""


@TOKENIZER.register("bpe")
class ByteLevelBPETokenizer(ByteLevelBPE):
    """Byte-level BPE trained on the corpus (GPT-2's scheme, your vocabulary size); any script works."""

    def __init__(
        self, vocab_size: int, min_frequency: int = 2, special_tokens: Sequence[str] = (EOT,)
    ) -> None:
        """
        Args:
            vocab_size: tokens in the vocabulary: the 256 bytes, the special tokens, then learned merges.
            min_frequency: a pair of tokens is merged only if it occurs at least this often.
            special_tokens: tokens with ids of their own (ids 0, 1, ...); "<|endoftext|>" separates documents.
        """
        super().__init__(special_tokens)
        floor = BYTES + len(self.special_tokens)
        if vocab_size < floor:
            raise GPT2KitError(
                f"vocab_size={vocab_size} is smaller than the byte alphabet: byte-level BPE needs the {BYTES} "
                f"bytes plus {len(self.special_tokens)} special token(s); use vocab_size >= {floor}"
            )
        if min_frequency < 1:
            raise GPT2KitError(f"min_frequency={min_frequency} must be >= 1")
        self.target_vocab_size = vocab_size
        self.min_frequency = min_frequency

    def config(self) -> dict[str, Any]:
        return {
            "vocab_size": self.target_vocab_size,
            "min_frequency": self.min_frequency,
            "special_tokens": self.special_tokens,
        }

    def train(self, texts: Iterable[str]) -> None:
        """Learn the merges with the ``tokenizers`` library, streaming: only word counts are kept."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import models, pre_tokenizers, trainers

        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=self.special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
            show_progress=False,
        )
        backend.train_from_iterator((GPT2_SPLIT.findall(t) for t in texts), trainer)  # batches of words
        model = json.loads(backend.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        self._set(sorted(model["vocab"], key=model["vocab"].get), merges)
