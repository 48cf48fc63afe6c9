"""The prepared-data cache: request key → build in a temporary folder → publish atomically.

Text and chat data share it. A request is a JSON-able dict of everything the prepared files depend
on (the format's version, the sources' fingerprints, the tokenizer before training, the format's
settings); its sha256 is the key. The folder ``<root>/<label>-<key[:12]>`` is reused when its
``meta.json`` records the same key. Otherwise the data is built under a temporary name beside it,
completed with the tokenizer and then ``meta.json`` (which marks it complete), and renamed into
place. A run that died half-way leaves only its temporary folder, which the next run deletes; a
folder whose ``meta.json`` is missing or records another key is built again, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gpt2kit.tokenizers import Tokenizer
from gpt2kit.tokenizers.hf_export import HF_TOKENIZER_FILE, save_tokenizer_json

log = logging.getLogger(__name__)

TOKENIZER_FILE = "gpt2kit_tokenizer.json"
"""The prepared data's tokenizer in gpt2kit's own JSON: its one name, used for writing and reading.
(``tokenizer.json`` beside it is the same tokenizer as a Hugging Face ``tokenizers`` file.)"""
META_FILE = "meta.json"
"""What the folder holds and was made from; written last, so that its presence marks it complete."""


@dataclass
class PreparedFolder:
    """A prepared dataset on disk: its folder, its ``meta.json`` and its (trained) tokenizer."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    reused: bool = False
    """True when the folder was found in the cache rather than built now."""

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the token files (uint16 when the vocabulary fits)."""
        return np.dtype(self.meta["dtype"])


P = TypeVar("P", bound=PreparedFolder)


def request_key(request: dict[str, Any]) -> str:
    """sha256 of a request, independent of its keys' order."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def write_tokenizer(folder: Path, tokenizer: Tokenizer) -> None:
    (folder / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    save_tokenizer_json(tokenizer, folder / HF_TOKENIZER_FILE)  # for `tokenizers` and transformers


def read_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_json((folder / TOKENIZER_FILE).read_text(encoding="utf-8"))


def load(path: Path, key: str, cls: type[P]) -> P | None:
    """The folder ``path`` as ``cls`` if it is complete and made for ``key``, else None (missing,
    interrupted, or prepared from another request)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    return cls(path, meta, read_tokenizer(path), reused=True)


def cached(
    root: Path,
    label: str,
    request: dict[str, Any],
    build: Callable[[Path], tuple[dict[str, Any], Tokenizer]],
    cls: type[P],
) -> P:
    """The prepared folder for ``request`` under ``root/<label>-<key>``: reused, or built and published.

    ``build(tmp)`` writes the data files into the empty folder ``tmp`` and returns the folder's meta
    and the tokenizer the files were made with; both are written beside them before publishing.
    """
    key = request_key(request)
    out = root / f"{label}-{key[:12]}"
    if (found := load(out, key, cls)) is not None:
        log.info("reusing prepared data in %s", out)
        return found
    tmp = new_tmp(out)
    try:
        meta, tokenizer = build(tmp)
        meta["key"] = key
        return publish(tmp, out, key, meta, tokenizer, cls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, key: str, meta: dict[str, Any], tokenizer: Tokenizer, cls: type[P]) -> P:
    """Complete ``tmp`` (tokenizer, then meta.json, which marks it complete) and rename it to ``out``.

    If another process (a DDP rank) published the same request first, its folder is the result.
    """
    write_tokenizer(tmp, tokenizer)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    shutil.rmtree(out, ignore_errors=True)  # a stale or partial folder of the same name
    try:
        os.rename(tmp, out)
    except OSError:
        if (found := load(out, key, cls)) is None:
            raise
        return found
    return cls(out, meta, tokenizer)


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
