"""Text → token-id shards: ``train.bin`` and ``val.bin`` (flat memmaps) beside ``meta.json``.

The text sample format of :func:`gpt2kit.data.prepare.prepare_shards`. Documents are read in pieces,
tokenized in batches (``encode_batch``) and appended to the shards as they go, so memory does not
grow with the corpus. Documents are separated by the end-of-text token when the tokenizer has one.

The validation split is deterministic and made of documents:

* a corpus of many documents (enough that ``val_fraction`` of them is at least
  :data:`MIN_VAL_DOCUMENTS`) gives every ``1 / val_fraction``-th document, whole, to validation;
* a corpus of a few long documents (Tiny Shakespeare's one file, five novels) gives the last
  ``val_fraction`` of each document's bytes to validation — nanoGPT's split, the same as its split by
  characters for ASCII text (Tiny Shakespeare: 1,003,854 train / 111,540 val characters).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gpt2kit.data.cache import PreparedFolder
from gpt2kit.data.prepare import ShardFormat, counted, held_out, prepare_shards, progress_bar
from gpt2kit.data.readers import Document, TextSource
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer

FORMAT_VERSION = 3
BATCH_CHARS = 1 << 20
"""Characters of text per ``encode_batch`` call: enough to keep every core busy, small enough for flat memory."""
MIN_VAL_DOCUMENTS = 10
"""Validation takes whole documents only if it gets at least this many; fewer make a noisy estimate."""


class Prepared(PreparedFolder):
    """Prepared text: ``train.bin`` and ``val.bin``, every document's tokens one after another."""

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")


Segment = tuple[str, bool, str, int]
"""(split, starts a document, text, its UTF-8 bytes): the unit handed from splitting to tokenizing."""


def _documents(sources: Sequence[TextSource]) -> Iterator[Document]:
    return itertools.chain.from_iterable(s.documents() for s in sources)


def _segments(docs: Iterable[Document], val_fraction: float, whole_documents: bool) -> Iterator[Segment]:
    for index, doc in enumerate(docs):
        if whole_documents:
            split = "val" if held_out(index, val_fraction) else "train"
            for n, piece in enumerate(doc.pieces):
                yield split, n == 0, piece, len(piece.encode("utf-8"))
        else:
            yield from _tail_split(doc, int(doc.nbytes * (1 - val_fraction)))


def _tail_split(doc: Document, cut: int) -> Iterator[Segment]:
    """The document's bytes before ``cut`` (moved to a character boundary) to train, the rest to val."""
    seen, started = 0, {"train": False, "val": False}
    for piece in doc.pieces:
        data = piece.encode("utf-8")
        k = min(max(cut - seen, 0), len(data))
        while 0 < k < len(data) and data[k] & 0xC0 == 0x80:  # inside a multi-byte character
            k += 1
        seen += len(data)
        if k == len(data):
            parts = [("train", piece, len(data))]
        elif k == 0:
            parts = [("val", piece, len(data))]
        else:
            parts = [("train", data[:k].decode("utf-8"), k), ("val", data[k:].decode("utf-8"), len(data) - k)]
        for split, text, nbytes in parts:
            yield split, not started[split], text, nbytes
            started[split] = True


class _Shard:
    """A token file being appended to, with its counts."""

    def __init__(self, file: BinaryIO, dtype: np.dtype) -> None:
        self.file, self.dtype = file, dtype
        self.tokens = self.bytes = self.documents = 0

    def append(self, ids: list[int]) -> None:
        np.asarray(ids, dtype=self.dtype).tofile(self.file)
        self.tokens += len(ids)


class TextShards(ShardFormat):
    """Documents → one flat token file per split, documents separated by the end-of-text token."""

    kind = "text"
    version = FORMAT_VERSION
    prepared = Prepared

    def __init__(self) -> None:
        self._sizes: tuple[int, int] | None = None

    def sizes(self, sources: Sequence[TextSource]) -> tuple[int, int]:
        """(documents, UTF-8 bytes): a cheap pass, sizes only (no text is read from plain files, Parquet's
        text is measured in Arrow, not made into strings)."""
        if self._sizes is None:
            n_docs = n_bytes = 0
            for source in sources:
                docs, nbytes = source.sizes()
                n_docs, n_bytes = n_docs + docs, n_bytes + nbytes
            if n_bytes == 0:
                specs = ", ".join(s.spec for s in sources)
                raise GPT2KitError(f"data source '{specs}' is empty: it holds no text to train on")
            self._sizes = n_docs, n_bytes
        return self._sizes

    def training_texts(self, sources: Sequence[TextSource], progress: bool | None) -> Iterator[str]:
        _, n_bytes = self.sizes(sources)  # here, not in the generator: an empty source fails before training

        def texts() -> Iterator[str]:
            with progress_bar(progress, n_bytes, "training tokenizer") as bar:
                yield from counted((t for s in sources for t in s.texts()), bar)

        return texts()

    def write(
        self,
        sources: Sequence[TextSource],
        tokenizer: Tokenizer,
        dtype: np.dtype,
        out: Path,
        val_fraction: float,
        progress: bool | None,
    ) -> dict[str, Any]:
        n_docs, n_bytes = self.sizes(sources)
        whole_documents = n_docs * val_fraction >= MIN_VAL_DOCUMENTS
        eot = tokenizer.eot_id
        specs = ", ".join(s.spec for s in sources)
        with (
            open(out / "train.bin", "wb") as train_f,
            open(out / "val.bin", "wb") as val_f,
            progress_bar(progress, n_bytes, f"tokenizing {specs}") as bar,
        ):
            shards = {"train": _Shard(train_f, dtype), "val": _Shard(val_f, dtype)}

            def flush(batch: list[Segment]) -> None:
                for (split, starts, _, nbytes), ids in zip(
                    batch, tokenizer.encode_batch([text for _, _, text, _ in batch]), strict=True
                ):
                    shard = shards[split]
                    if starts:
                        if eot is not None and shard.documents:
                            ids = [eot, *ids]  # documents are separated by the end-of-text token
                        shard.documents += 1
                    shard.append(ids)
                    shard.bytes += nbytes
                bar.update(sum(s[3] for s in batch))

            batch, chars = [], 0
            for segment in _segments(_documents(sources), val_fraction, whole_documents):
                batch.append(segment)
                chars += len(segment[2])
                if chars >= BATCH_CHARS:
                    flush(batch)
                    batch, chars = [], 0
            if batch:
                flush(batch)

        if shards["val"].tokens == 0:
            raise GPT2KitError(
                f"data source '{specs}' is too small for a validation split of {val_fraction}: add text "
                "or raise val_fraction"
            )
        return {
            "split": "documents" if whole_documents else "tail of each document",
            "documents": n_docs,
            **{f"{split}_tokens": shard.tokens for split, shard in shards.items()},
            **{f"{split}_bytes": shard.bytes for split, shard in shards.items()},
            "val_documents": shards["val"].documents,
        }

    def summary(self, meta: dict[str, Any]) -> str:
        return (
            f"{meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens ({meta['tokenizer']}, vocab "
            f"{meta['vocab_size']:,}, {meta['val_bytes'] / meta['val_tokens']:.2f} bytes per token, split: "
            f"{meta['split']})"
        )


def prepare(
    source: TextSource | Sequence[TextSource],
    tokenizer: Tokenizer,
    root: Path,
    val_fraction: float = 0.1,
    progress: bool | None = None,
) -> Prepared:
    """Prepare (or reuse) text ``source`` (one or several) tokenized by ``tokenizer`` under ``root``.

    ``tokenizer`` is not changed; an untrained one is copied and the copy trained, found in the
    result's ``tokenizer``. ``progress``: progress bars on stderr; None shows them when stderr is a terminal.
    """
    sources = [source] if isinstance(source, TextSource) else list(source)
    return prepare_shards(TextShards(), sources, tokenizer, root, val_fraction, progress)
