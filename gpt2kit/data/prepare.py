"""Text → token-id shards: ``train.bin`` and ``val.bin`` (flat memmaps), the tokenizer, ``meta.json``.

Preparation streams: documents are read in pieces, tokenized in batches (``encode_batch``) and appended
to the shards as they go, so memory does not grow with the corpus. Documents are separated by the
end-of-text token when the tokenizer has one.

The validation split is deterministic and made of documents:

* a corpus of many documents (enough that ``val_fraction`` of them is at least
  :data:`MIN_VAL_DOCUMENTS`) gives every ``1 / val_fraction``-th document, whole, to validation;
* a corpus of a few long documents (Tiny Shakespeare's one file, five novels) gives the last
  ``val_fraction`` of each document's bytes to validation — nanoGPT's split, the same as its split by
  characters for ASCII text (Tiny Shakespeare: 1,003,854 train / 111,540 val characters).

The output folder is written under a temporary name and renamed into place only when complete;
``meta.json`` records what it was made from (source sha256, tokenizer, split), and a folder whose record
does not match the request is prepared again rather than reused. A run that died half-way leaves only
its temporary folder, which the next run deletes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from gpt2kit.data.sources import Document, TextSource
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer
from gpt2kit.tokenizers.hf_export import HF_TOKENIZER_FILE, save_tokenizer_json

log = logging.getLogger(__name__)

TOKENIZER_FILE = "gpt2kit_tokenizer.json"
"""gpt2kit's own serialisation of the tokenizer in a prepared folder (``tokenizer.json`` is the Hugging Face
one, written beside it when the tokenizer has a `tokenizers` equivalent)."""

FORMAT_VERSION = 2
BATCH_CHARS = 1 << 20
"""Characters of text per ``encode_batch`` call: enough to keep every core busy, small enough for flat memory."""
MIN_VAL_DOCUMENTS = 10
"""Validation takes whole documents only if it gets at least this many; fewer make a noisy estimate."""


@dataclass
class Prepared:
    """A prepared dataset on disk."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _request_key(source_sha: str, tokenizer: Tokenizer, val_fraction: float) -> str:
    request = {
        "format": FORMAT_VERSION,
        "source": source_sha,
        "tokenizer": tokenizer.to_dict(),  # untrained: its settings; pretrained: its full vocabulary
        "val_fraction": val_fraction,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


P = TypeVar("P")  # a prepared-folder class: Prepared, or the chat data's PreparedChat


def load_prepared(path: Path, key: str, cls: type[P]) -> P | None:
    """The prepared folder ``path`` as ``cls(path, meta, tokenizer)`` if it is complete and made for
    ``key``, else None (missing, interrupted, or prepared from another request)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        saved = (path / TOKENIZER_FILE).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    return cls(path, meta, Tokenizer.from_json(saved))


def publish(tmp: Path, out: Path, key: str, meta: dict[str, Any], tokenizer: Tokenizer, cls: type[P]) -> P:
    """Complete ``tmp`` (tokenizer.json, then meta.json, which marks it complete) and rename it to ``out``.

    If another process (a DDP rank) published the same request first, its folder is the result.
    """
    (tmp / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    save_tokenizer_json(tokenizer, tmp / HF_TOKENIZER_FILE)  # the same, for `tokenizers` and transformers
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    shutil.rmtree(out, ignore_errors=True)  # a stale or partial folder of the same name
    try:
        os.rename(tmp, out)
    except OSError:
        if (found := load_prepared(out, key, cls)) is None:
            raise
        return found
    return cls(out, meta, tokenizer)


def prepare(
    source: TextSource,
    tokenizer: Tokenizer,
    root: Path,
    val_fraction: float = 0.1,
    progress: bool | None = None,
) -> Prepared:
    """Prepare (or reuse) ``source`` tokenized by ``tokenizer`` under ``root/<source>/<tokenizer>-<key>``.

    ``progress``: show progress bars on stderr; None shows them when stderr is a terminal.
    """
    if not 0.0 < val_fraction < 1.0:
        raise GPT2KitError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    source_sha = source.fingerprint()
    key = _request_key(source_sha, tokenizer, val_fraction)
    out = root / source.name / f"{tokenizer.name}-{key[:12]}"
    if (found := load_prepared(out, key, Prepared)) is not None:
        log.info("reusing prepared data in %s", out)
        return found

    tmp = new_tmp(out)
    try:
        meta = _write_shards(source, tokenizer, tmp, val_fraction, progress)
        meta.update(
            key=key, source_sha256=source_sha, source=source.spec, files=[p.name for p in source.files]
        )
        prepared = publish(tmp, out, key, meta, tokenizer, Prepared)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s: %s train / %s val tokens", out, meta["train_tokens"], meta["val_tokens"])
    return prepared


def new_tmp(out: Path) -> Path:
    """An empty temporary folder beside ``out``, to be renamed to it once complete (after clearing the
    temporary folders that killed runs left behind)."""
    _remove_abandoned(out)
    tmp = out.with_name(f".{out.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _remove_abandoned(out: Path) -> None:
    """Delete temporary folders of ``out`` left by killed runs on this machine (their process is gone)."""
    prefix = f".{out.name}.tmp-{socket.gethostname()}-"
    for tmp in out.parent.glob(f"{prefix}*") if out.parent.is_dir() else ():
        pid = tmp.name[len(prefix) :]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted preparation", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --- splitting ---------------------------------------------------------------------------------------------

Segment = tuple[str, bool, str, int]
"""(split, starts a document, text, its UTF-8 bytes): the unit handed from splitting to tokenizing."""


def _held_out(index: int, val_fraction: float) -> bool:
    """Whether document ``index`` is a validation document: every 1/val_fraction-th, evenly spread."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def _segments(source: TextSource, val_fraction: float, whole_documents: bool) -> Iterator[Segment]:
    for index, doc in enumerate(source.documents()):
        if whole_documents:
            split = "val" if _held_out(index, val_fraction) else "train"
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


# --- tokenizing -------------------------------------------------------------------------------------------


class _Shard:
    """A token file being appended to, with its counts."""

    def __init__(self, file: BinaryIO, dtype: np.dtype) -> None:
        self.file, self.dtype = file, dtype
        self.tokens = self.bytes = self.documents = 0

    def append(self, ids: list[int]) -> None:
        np.asarray(ids, dtype=self.dtype).tofile(self.file)
        self.tokens += len(ids)


def _progress_bar(progress: bool | None, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=None if progress is None else not progress
    )


def _write_shards(
    source: TextSource, tokenizer: Tokenizer, out: Path, val_fraction: float, progress: bool | None
) -> dict[str, Any]:
    n_docs, n_bytes = 0, 0
    for doc in source.documents():  # a cheap pass: sizes only, no text is read from plain files
        n_docs, n_bytes = n_docs + 1, n_bytes + doc.nbytes
    if n_bytes == 0:
        raise GPT2KitError(f"data source '{source.spec}' is empty: it holds no text to train on")
    whole_documents = n_docs * val_fraction >= MIN_VAL_DOCUMENTS

    if not tokenizer.is_trained:
        log.info("training %s tokenizer on %s", tokenizer.name, source.spec)
        with _progress_bar(progress, n_bytes, f"training {tokenizer.name} tokenizer") as bar:
            tokenizer.train(_counted(source.texts(), bar))
    dtype = token_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_id

    with (
        open(out / "train.bin", "wb") as train_f,
        open(out / "val.bin", "wb") as val_f,
        _progress_bar(progress, n_bytes, f"tokenizing {source.spec}") as bar,
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
        for segment in _segments(source, val_fraction, whole_documents):
            batch.append(segment)
            chars += len(segment[2])
            if chars >= BATCH_CHARS:
                flush(batch)
                batch, chars = [], 0
        if batch:
            flush(batch)

    if shards["val"].tokens == 0:
        raise GPT2KitError(
            f"data source '{source.spec}' is too small for a validation split of {val_fraction}: add text "
            "or raise val_fraction"
        )
    return {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "split": "documents" if whole_documents else "tail of each document",
        "documents": n_docs,
        **{f"{split}_tokens": shard.tokens for split, shard in shards.items()},
        **{f"{split}_bytes": shard.bytes for split, shard in shards.items()},
        "val_documents": shards["val"].documents,
    }


def _counted(texts: Iterator[str], bar: Any) -> Iterator[str]:
    for text in texts:
        bar.update(len(text.encode("utf-8")))
        yield text
