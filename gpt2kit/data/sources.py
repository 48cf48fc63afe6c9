"""Where text comes from: named corpora (downloaded once, checked by sha256) and local files.

A named corpus is looked for, in order, under ``$GPT2KIT_DATA/<name>/`` (a folder that already holds
copies, e.g. ``../shared/data`` in CI), then in the cache (``$GPT2KIT_CACHE``, default
``~/.cache/gpt2kit``), and is downloaded into the cache only if it is in neither. Every file is checked
against its sha256 before use; a download that does not match is deleted and refused.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

DATA_ENV = "GPT2KIT_DATA"
CACHE_ENV = "GPT2KIT_CACHE"


def cache_dir() -> Path:
    """Root of gpt2kit's cache: downloaded corpora and prepared token shards."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gpt2kit"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    """Path inside the corpus folder."""
    url: str
    sha256: str


@dataclass(frozen=True)
class Corpus:
    """A named, checksummed collection of files, read into documents by ``reader``."""

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    reader: str = "text"
    """How a file becomes documents: a key of :data:`READERS`."""


_GH = "https://raw.githubusercontent.com"


def _gutenberg(book: int, commit: str, sha: str) -> RemoteFile:
    return RemoteFile(f"{book}-0.txt", f"{_GH}/gutenbergbooks/{book}/{commit}/{book}-0.txt", sha)


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus(
            "tinyshakespeare",
            "Tiny Shakespeare (char-rnn, nanoGPT): 1.1 MB of plays",
            (
                RemoteFile(
                    "input.txt",
                    f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                ),
            ),
        ),
        Corpus(
            "gutenberg-english",
            "Five Project Gutenberg novels (Alice, Frankenstein, Pride and Prejudice, Sherlock Holmes, Moby-Dick)",
            (
                _gutenberg(
                    11,
                    "5e5120e12a58a10254e0e6a42661d887e61c2aac",
                    "f17aa0bf7466424a8b357b688678666bad7a0148963ef349016a3098faa6bd1e",
                ),
                _gutenberg(
                    84,
                    "8bd92d5ea00b020a3b1224f3558019e5b4024f94",
                    "f572837d92b31a857df4f6d0612e54f4bd8003d134367ae6a35ef444b9a8336b",
                ),
                _gutenberg(
                    1342,
                    "041e520899f9a02af517d6cb253bc1fdfbf923e2",
                    "86dab871eec9c0cef97f4cb6313f86c6cc48f6f7809534e65cd3f1c1d486d247",
                ),
                _gutenberg(
                    1661,
                    "4583fe51c670727bf1edf51b41e7b67b7736224a",
                    "e21895308fe6da6919abc53e2cf77d81f914887897546153cc5d49b2eadefe50",
                ),
                _gutenberg(
                    2701,
                    "a002fe509562e55a6fc4bab6765360f97e47a227",
                    "1fc8b162929e0e095ad636c6364a59cb634e5097933eb7735bf2c251f685d274",
                ),
            ),
        ),
        Corpus(
            "gpt2-bpe",
            "OpenAI's GPT-2 byte-level BPE vocabulary (encoder.json, vocab.bpe)",
            (
                RemoteFile(
                    "encoder.json",
                    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                ),
                RemoteFile(
                    "vocab.bpe",
                    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                ),
            ),
            reader="none",
        ),
    ]
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as f:  # noqa: S310
            while block := response.read(1 << 20):
                f.write(block)
        got = sha256_file(part)
        if got != sha256:
            raise GPT2KitError(
                f"download of {url} has sha256 {got}, expected {sha256}: refused and deleted; "
                f"the upstream file changed or the transfer was corrupted"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def fetch_corpus(name: str) -> Path:
    """The folder holding every file of a named corpus, downloading into the cache if needed."""
    if name not in CORPORA:
        raise GPT2KitError(
            f"unknown corpus '{name}': named corpora are {', '.join(CORPORA)}, or give a file path"
        )
    corpus = CORPORA[name]
    data_root = os.environ.get(DATA_ENV)
    roots = ([Path(data_root).expanduser() / name] if data_root else []) + [cache_dir() / "corpora" / name]
    found: dict[str, Path] = {}
    for f in corpus.files:
        for root in roots:
            if (root / f.path).is_file():
                got = sha256_file(root / f.path)
                if got != f.sha256:
                    raise GPT2KitError(
                        f"{root / f.path} has sha256 {got}, expected {f.sha256} for corpus '{name}': "
                        "replace it with the original file or delete it to download again"
                    )
                found[f.path] = root
                break
        else:
            target = roots[-1] / f.path
            log.info("downloading %s to %s", f.url, target)
            try:
                _download(f.url, target, f.sha256)
            except OSError as exc:
                where = f"{DATA_ENV}={data_root}" if data_root else f"{DATA_ENV} is not set"
                raise GPT2KitError(
                    f"corpus '{name}' is missing {f.path} and could not be downloaded ({exc}); put the file at "
                    f"{roots[0] / f.path}, or set {DATA_ENV} to a folder holding {name}/{f.path} ({where})"
                ) from exc
            found[f.path] = roots[-1]
    roots_used = set(found.values())
    if len(roots_used) == 1:
        return roots_used.pop()
    # Files split across the data folder and the cache: link them into one folder in the cache.
    merged = cache_dir() / "corpora" / name
    for path, root in found.items():
        if root != merged:
            (merged / path).parent.mkdir(parents=True, exist_ok=True)
            (merged / path).unlink(missing_ok=True)
            (merged / path).symlink_to((root / path).resolve())
    return merged


# --- reading documents -------------------------------------------------------------------------------


def read_utf8(path: Path, chunk: int = 1 << 22) -> Iterator[str]:
    """Stream a file's text in chunks; a byte that is not UTF-8 is an error naming file and offset."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            pending = decoder.getstate()[0]  # bytes of a character split across blocks
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                data = pending + block
                raise GPT2KitError(
                    f"{path} is not valid UTF-8: byte offset {offset - len(pending) + exc.start} "
                    f"(0x{data[exc.start]:02x}) cannot be decoded; convert the file to UTF-8 (e.g. iconv -t UTF-8)"
                ) from None
            offset += len(block)
            if text:
                yield text
            if not block:
                return


def read_text_file(path: Path) -> Iterator[str]:
    """A plain text file is one document."""
    yield "".join(read_utf8(path))


READERS: dict[str, Callable[[Path], Iterator[str]]] = {"text": read_text_file}


@dataclass
class TextSource:
    """Documents from a named corpus or from local files (a path, a folder or a glob)."""

    spec: str
    """A corpus name (see CORPORA) or a path / folder / glob of UTF-8 text files."""
    files: list[Path] = field(default_factory=list)
    reader: str = "text"
    name: str = ""

    @classmethod
    def resolve(cls, spec: str) -> TextSource:
        if spec in CORPORA:
            corpus = CORPORA[spec]
            root = fetch_corpus(spec)
            files = [root / f.path for f in corpus.files]
            return cls(spec, files, corpus.reader, spec)
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif any(ch in spec for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            files = [path] if path.is_file() else []
        if not files:
            raise GPT2KitError(
                f"data source '{spec}' is neither a named corpus ({', '.join(CORPORA)}) nor an existing "
                "file, folder or glob of text files"
            )
        return cls(spec, files, "text", path.stem or "data")

    def documents(self) -> Iterator[str]:
        read = READERS[self.reader]
        for path in self.files:
            yield from read(path)

    def fingerprint(self) -> str:
        """sha256 over the files' contents (and the reader): changes whenever the text could."""
        h = hashlib.sha256(self.reader.encode())
        for path in self.files:
            h.update(path.name.encode())
            h.update(sha256_file(path).encode())
        return h.hexdigest()
