"""Text → token-id shards: ``train.bin`` and ``val.bin`` (flat memmaps), ``tokenizer.json``, ``meta.json``.

Preparation streams: documents are tokenized in batches and appended to the shards as they go, so
memory does not grow with the corpus. The output folder is written under a temporary name and renamed
into place only when complete; ``meta.json`` records what it was made from (source sha256, tokenizer,
split), and a folder whose record does not match the request is prepared again rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2kit.data.sources import TextSource
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH_DOCS = 64  # documents tokenized per encode_batch call


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


def _load(path: Path, key: str) -> Prepared | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    tokenizer = Tokenizer.from_json((path / "tokenizer.json").read_text(encoding="utf-8"))
    return Prepared(path, meta, tokenizer)


def _split(doc: str, val_fraction: float) -> tuple[str, str]:
    """The last ``val_fraction`` of each document is validation text (nanoGPT's 90/10 split)."""
    cut = int(len(doc) * (1 - val_fraction))
    return doc[:cut], doc[cut:]


def prepare(source: TextSource, tokenizer: Tokenizer, root: Path, val_fraction: float = 0.1) -> Prepared:
    """Prepare (or reuse) ``source`` tokenized by ``tokenizer`` under ``root/<source>/<tokenizer>-<key>``."""
    if not 0.0 < val_fraction < 1.0:
        raise GPT2KitError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    source_sha = source.fingerprint()
    key = _request_key(source_sha, tokenizer, val_fraction)
    out = root / source.name / f"{tokenizer.name}-{key[:12]}"
    if (found := _load(out, key)) is not None:
        log.info("reusing prepared data in %s", out)
        return found

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _write_shards(source, tokenizer, tmp, val_fraction)
        meta.update(
            key=key, source_sha256=source_sha, source=source.spec, files=[p.name for p in source.files]
        )
        (tmp / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))  # last: marks complete
        shutil.rmtree(out, ignore_errors=True)  # a stale or partial folder of the same name
        try:
            os.rename(tmp, out)
        except OSError:  # another process (e.g. a DDP rank) finished the same preparation first
            if (found := _load(out, key)) is None:
                raise
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s: %s train / %s val tokens", out, meta["train_tokens"], meta["val_tokens"])
    return Prepared(out, meta, tokenizer)


def _write_shards(source: TextSource, tokenizer: Tokenizer, out: Path, val_fraction: float) -> dict[str, Any]:
    if not tokenizer.is_trained:
        log.info("training %s tokenizer on %s", tokenizer.name, source.spec)
        tokenizer.train(doc for doc in source.documents())
    dtype = token_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_id
    counts = {"train_tokens": 0, "val_tokens": 0, "train_bytes": 0, "val_bytes": 0, "documents": 0}
    with open(out / "train.bin", "wb") as train_f, open(out / "val.bin", "wb") as val_f:
        files = {"train": train_f, "val": val_f}
        for batch in _batches(source.documents(), BATCH_DOCS):
            counts["documents"] += len(batch)
            halves = [_split(doc, val_fraction) for doc in batch]  # (train text, val text) per document
            for i, split in enumerate(("train", "val")):
                texts = [h[i] for h in halves]
                for text, ids in zip(texts, tokenizer.encode_batch(list(texts)), strict=True):
                    if eot is not None and counts[f"{split}_tokens"]:
                        ids = [eot, *ids]  # documents are separated by the end-of-text token
                    np.asarray(ids, dtype=dtype).tofile(files[split])
                    counts[f"{split}_tokens"] += len(ids)
                    counts[f"{split}_bytes"] += len(text.encode("utf-8"))
    if counts["train_tokens"] == 0:
        raise GPT2KitError(f"data source '{source.spec}' is empty: it holds no text to train on")
    if counts["val_tokens"] == 0:
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
        **counts,
    }


def _batches(docs: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
