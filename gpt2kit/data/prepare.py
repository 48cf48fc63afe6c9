"""Preparation, shared by text and chat data: sources + tokenizer → shards, once, in the keyed cache.

:func:`prepare_shards` is the whole pipeline; a :class:`ShardFormat` (one per DataModule) gives only
what differs, how documents become shards:

1. the request — the format's version and settings, the sources' fingerprints, the tokenizer as
   given and ``val_fraction`` — keys the prepared folder (:mod:`gpt2kit.data.cache`); a folder made
   for the same request is reused;
2. otherwise the tokenizer is **copied**, and the copy is trained on the format's training texts if
   it is untrained (the recipe's tokenizer object is never changed), then extended by the format
   (chat: the template's special tokens);
3. the format writes its shards into a temporary folder, in one streaming pass (memory does not grow
   with the corpus); the shared code adds the common ``meta.json`` fields and publishes the folder.

The split is by document (a conversation is a document): :func:`held_out` gives every
``1 / val_fraction``-th one to validation.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gpt2kit.data.cache import PreparedFolder, cached
from gpt2kit.data.readers import Kind, Source
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 for vocabularies up to 65,536."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def held_out(index: int, val_fraction: float) -> bool:
    """Whether document ``index`` is a validation document: every 1/val_fraction-th, evenly spread."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def progress_bar(progress: bool | None, total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr; ``progress`` None shows it when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        disable=None if progress is None else not progress,
    )


class ShardFormat:
    """How a kind of data becomes shards: what each DataModule gives :func:`prepare_shards`."""

    kind: ClassVar[Kind]
    """Which readers its sources use (``text`` documents or ``chat`` conversations)."""
    version: ClassVar[int]
    """Bumped when the files it writes change meaning: older folders are then prepared again."""
    prepared: ClassVar[type[PreparedFolder]] = PreparedFolder
    """The class of its prepared folder (accessors for its files)."""

    def request(self) -> dict[str, Any]:
        """The format's settings that change the shards (part of the cache key)."""
        return {}

    def label(self, tokenizer: Tokenizer) -> str:
        """The prepared folder's name, before its key."""
        return tokenizer.name

    def training_texts(self, sources: Sequence[Source], progress: bool | None) -> Iterable[str]:
        """The text an untrained tokenizer learns its vocabulary from."""
        raise NotImplementedError

    def extend_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Change the (copied, trained) tokenizer before the shards are written; default: nothing."""

    def write(
        self,
        sources: Sequence[Source],
        tokenizer: Tokenizer,
        dtype: np.dtype,
        out: Path,
        val_fraction: float,
        progress: bool | None,
    ) -> dict[str, Any]:
        """Write the shards into the empty folder ``out``; return the format's own ``meta.json`` fields."""
        raise NotImplementedError

    def summary(self, meta: dict[str, Any]) -> str:
        """One line on what a prepared folder holds."""
        return f"{meta['vocab_size']:,} token vocabulary ({meta['tokenizer']})"

    def on_reuse(self, meta: dict[str, Any]) -> None:
        """Called when a cached folder is reused (chat: remind of the bad rows left out)."""


def prepare_shards(
    fmt: ShardFormat,
    sources: Sequence[Source],
    tokenizer: Tokenizer,
    root: Path,
    val_fraction: float = 0.1,
    progress: bool | None = None,
) -> Any:
    """Prepare (or reuse) ``sources`` in ``fmt`` under ``root/<sources>/<label>-<key>``.

    ``tokenizer`` is left as it is: an untrained one is copied and the copy trained; the prepared
    folder's ``tokenizer`` is the one the shards were made with. ``progress``: progress bars on
    stderr; None shows them when stderr is a terminal.
    """
    if not 0.0 < val_fraction < 1.0:
        raise GPT2KitError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    if not sources:
        raise GPT2KitError("no data source given: name at least one corpus or file")
    fingerprints = [s.fingerprint() for s in sources]
    request = {
        "format": fmt.version,
        "kind": fmt.kind,
        "sources": fingerprints,
        "tokenizer": tokenizer.to_dict(),  # untrained: its settings; pretrained: its full vocabulary
        "val_fraction": val_fraction,
        **fmt.request(),
    }

    def build(tmp: Path) -> tuple[dict[str, Any], Tokenizer]:
        tok = copy.deepcopy(tokenizer)  # the caller's tokenizer keeps its state, trained or not
        if not tok.is_trained:
            log.info("training %s tokenizer on %s", tok.name, ", ".join(s.spec for s in sources))
            tok.train(fmt.training_texts(sources, progress))
        fmt.extend_tokenizer(tok)
        dtype = token_dtype(tok.vocab_size)
        own = fmt.write(sources, tok, dtype, tmp, val_fraction, progress)
        meta = {
            "format": fmt.version,
            "kind": fmt.kind,
            "tokenizer": tok.name,
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "val_fraction": val_fraction,
            "sources": [
                {"spec": s.spec, "sha256": sha, "files": [p.name for p in s.files]}
                for s, sha in zip(sources, fingerprints, strict=True)
            ],
            **own,
        }
        return meta, tok

    name = "+".join(s.name for s in sources)[:80] or "data"
    prepared = cached(root, f"{name}/{fmt.label(tokenizer)}", request, build, fmt.prepared)
    if prepared.reused:
        fmt.on_reuse(prepared.meta)
    else:
        log.info("prepared %s: %s", prepared.path, fmt.summary(prepared.meta))
    return prepared


def counted(texts: Iterable[str], bar: Any) -> Iterator[str]:
    """``texts``, advancing ``bar`` by each one's UTF-8 bytes."""
    for text in texts:
        bar.update(len(text.encode("utf-8")))
        yield text
