"""Sources and readers: how a corpus, file, folder or glob becomes documents or conversations.

One table of readers, one entry per format, shared by text and chat data.

Every reader is a function ``(path, options) -> Iterator`` registered in :data:`READERS` under a
name, with the kind of data it yields and the file suffixes it reads:

* kind ``text`` yields :class:`Document` s, which :class:`~gpt2kit.data.TextDataModule` tokenizes;
* kind ``chat`` yields conversations (:class:`~gpt2kit.chat.conversations.Conversation`, or a
  :class:`~gpt2kit.chat.conversations.BadRow` for a row that cannot be used), which
  :class:`~gpt2kit.data.ChatDataModule` turns into masked samples.

A :class:`Source` (what a DataModule's ``source`` names) picks each file's reader from this table: a
named corpus (:mod:`gpt2kit.corpora`) names its reader, a local file is read by the reader of
its kind that claims its suffix. Text and chat data resolve the same way; they differ only in the
kind of reader they accept (:class:`TextSource`: documents, :class:`ChatSource`: conversations). A new format is
one more function here (or in a plugin), e.g. the Parquet reader below::

    @reader("parquet", kind="text", suffixes=(".parquet",))
    def read_parquet(path: Path, options: ReadOptions) -> Iterator[Document]:
        ...

A text document's text comes in pieces, so that a single huge file is read in chunks rather than
whole: pieces are cut only before a line break that is followed by a non-space character, where
GPT-2's pre-tokenization (and a character tokenizer) always splits anyway, so tokenizing the pieces
gives exactly the ids of tokenizing the whole text.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from gpt2kit.chat.conversations import (
    DialogueRoles,
    Row,
    read_chat_jsonl,
    read_chatterbot,
    read_topical_chat,
)
from gpt2kit.corpora import CORPORA, fetch_corpus, sha256_file
from gpt2kit.data import hub
from gpt2kit.errors import GPT2KitError

Kind = Literal["text", "chat"]
"""What a reader yields: ``text`` documents or ``chat`` conversations."""

# --- documents -----------------------------------------------------------------------------------------

PIECE_CHARS = 1 << 16
"""A long text is cut into pieces of about this many characters (at the first safe place after it)."""

_SAFE_CUT = re.compile(r"\n(?=\S)")
"""Where a text may be cut: before a line break followed by a non-space character. No GPT-2 word spans
it, and the whitespace before it splits the same whether the text ends there or goes on."""


def cut_pieces(blocks: Iterable[str], size: int | None = None) -> Iterator[str]:
    """Re-cut a stream of text blocks into pieces of about ``size`` (default :data:`PIECE_CHARS`)
    characters, only at safe places. Text without a safe place (no line breaks) stays in one piece.
    """
    size = size or PIECE_CHARS
    buffer = ""
    for block in blocks:
        buffer += block
        start = 0
        while (m := _SAFE_CUT.search(buffer, start + size)) is not None:
            yield buffer[start : m.start()]
            start = m.start()
        buffer = buffer[start:]
    if buffer:
        yield buffer


@dataclass
class Document:
    """One document: its text as pieces, in order, and its size in UTF-8 bytes (known before reading)."""

    pieces: Iterable[str]
    nbytes: int

    @classmethod
    def of(cls, text: str) -> Document:
        return cls(cut_pieces([text]), len(text.encode("utf-8")))


READ_CHARS = 1 << 22
"""Bytes read from a file at a time: the most of one file's text in memory at once."""


def read_utf8(path: Path, chunk: int | None = None) -> Iterator[str]:
    """Stream a file's text in chunks; a byte that is not UTF-8 is an error naming file and offset."""
    chunk = chunk or READ_CHARS
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


# --- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """Settings that readers may use; part of a source's fingerprint, so changing one prepares again."""

    field: str = "text"
    """Text readers of records (JSON lines, Parquet): the key or column that holds each document."""
    roles: DialogueRoles = "both"
    """Chat readers of two-agent corpora (Topical-Chat): which agent is the assistant."""


@dataclass(frozen=True)
class Reader:
    """A registered file format."""

    name: str
    kind: Kind
    suffixes: tuple[str, ...]
    """File suffixes it reads when a local file is given (none: only named corpora use it)."""
    describe: str
    """What a file of this format holds, for messages (``.jsonl (one {"text": ...} per line)``)."""
    read: Callable[[Path, ReadOptions], Iterator[Any]]
    check: Callable[[Path, ReadOptions], None] | None = None
    """A cheap look at a file before anything is read (a Parquet file's columns): a bad file fails at once,
    not hours into preparing the files before it."""
    measure: Callable[[Path, ReadOptions], tuple[int, int] | None] | None = None
    """(non-empty documents, their UTF-8 bytes) of a text file without making its documents (Parquet: from
    Arrow's string lengths); None, or a None result: counted by reading the documents."""


READERS: dict[str, Reader] = {}
"""Every reader by name."""
DEFAULT_READER: dict[str, str] = {"text": "text"}
"""The reader of a kind for files no reader claims by suffix (chat has none: such a file is refused)."""


def reader(
    name: str,
    *,
    kind: Kind,
    suffixes: tuple[str, ...] = (),
    describe: str = "",
    check: Callable[[Path, ReadOptions], None] | None = None,
    measure: Callable[[Path, ReadOptions], tuple[int, int] | None] | None = None,
) -> Callable[[Callable[[Path, ReadOptions], Iterator[Any]]], Callable[[Path, ReadOptions], Iterator[Any]]]:
    """Decorator: register a reader function under ``name``. Names and (kind, suffix) pairs are unique."""

    def deco(
        fn: Callable[[Path, ReadOptions], Iterator[Any]],
    ) -> Callable[[Path, ReadOptions], Iterator[Any]]:
        if name in READERS:
            raise GPT2KitError(
                f"reader '{name}' is already registered by {READERS[name].read.__module__}: "
                f"{fn.__module__} must pick another name"
            )
        for suffix in suffixes:
            if (taken := reader_for_suffix(suffix, kind)) is not None:
                raise GPT2KitError(
                    f"reader '{name}' claims {suffix} {kind} files, which reader '{taken.name}' already reads"
                )
        READERS[name] = Reader(name, kind, suffixes, describe or ", ".join(suffixes), fn, check, measure)
        return fn

    return deco


def reader_for_suffix(suffix: str, kind: str) -> Reader | None:
    """The reader of ``kind`` that claims files ending in ``suffix``, if any."""
    return next((r for r in READERS.values() if r.kind == kind and suffix in r.suffixes), None)


def reader_for(path: Path, kind: str) -> Reader | None:
    """How a local file is read as ``kind``: by its suffix, else by the kind's default reader (or None)."""
    found = reader_for_suffix(path.suffix, kind)
    if found is None and kind in DEFAULT_READER:
        found = READERS[DEFAULT_READER[kind]]
    return found


def formats(kind: str) -> str:
    """The local formats of a kind, for messages: ``.txt (...), .jsonl (...)``."""
    return ", ".join(r.describe for r in READERS.values() if r.kind == kind and r.describe)


# --- text readers ------------------------------------------------------------------------------------------


@reader("text", kind="text", suffixes=(".txt",), describe="text (.txt: each file one document)")
def read_text_file(path: Path, options: ReadOptions | None = None) -> Iterator[Document]:
    """A plain text file is one document, read in pieces (never whole)."""
    yield Document(cut_pieces(read_utf8(path)), path.stat().st_size)


@reader(
    "jsonl", kind="text", suffixes=(".jsonl",), describe='JSON lines (.jsonl: one {"text": ...} per line)'
)
def read_jsonl(path: Path, options: ReadOptions | None = None) -> Iterator[Document]:
    """JSON lines: each line is an object whose ``field`` holds one document. Blank lines are skipped."""
    field = (options or ReadOptions()).field
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line_start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise GPT2KitError(
                    f"{path} is not valid UTF-8: byte offset {line_start + exc.start} (line {number}, "
                    f"0x{raw[exc.start]:02x}) cannot be decoded; convert the file to UTF-8 (e.g. iconv -t UTF-8)"
                ) from None
            except ValueError as exc:
                raise GPT2KitError(
                    f"{path}:{number}: not valid JSON ({exc}); each line of a .jsonl file must be one JSON object"
                ) from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                found = (
                    f"keys: {', '.join(record)[:120]}" if isinstance(record, dict) else type(record).__name__
                )
                problem = "is not a string" if isinstance(record, dict) and field in record else "is missing"
                raise GPT2KitError(
                    f"{path}:{number}: the text field '{field}' {problem} ({found}); set data.init_args.field "
                    "to the key that holds each line's text"
                )
            yield Document.of(text)


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GPT2KitError(
            f"{path} is a Parquet file and reading it needs pyarrow: pip install 'gpt2kit[parquet]'"
        ) from None
    try:
        # pre_buffer off and a 1 MB read buffer: a row group's column is read through the buffer rather
        # than loaded whole (on FineWeb-like files, 1,000-row groups, Arrow's pool peaks ~30% lower)
        return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise GPT2KitError(f"{path} is not a readable Parquet file ({exc})") from None


def check_parquet(path: Path, options: ReadOptions | None = None) -> None:
    """Refuse a Parquet file without the text column (only its footer is read), naming the columns it has."""
    field = (options or ReadOptions()).field
    columns = _parquet_file(path).schema_arrow.names
    if field not in columns:
        raise GPT2KitError(
            f"{path}: there is no column '{field}' (columns: {', '.join(columns)[:120]}); set "
            "data.init_args.field to the column that holds each row's text"
        )


def measure_parquet(path: Path, options: ReadOptions | None = None) -> tuple[int, int] | None:
    """(non-empty rows, UTF-8 bytes) of the text column, from Arrow's string lengths: no Python strings are
    made, so the sizes pass before tokenizing costs a fraction of reading the documents. None when the
    column is not a string column (reading then says which row is not a string)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    field = (options or ReadOptions()).field
    check_parquet(path, options)
    docs = nbytes = 0
    for batch in _parquet_file(path).iter_batches(columns=[field], batch_size=1024):  # as read: bounded
        column = batch.column(0)
        if (
            not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
            or column.null_count
        ):
            return None
        lengths = pc.binary_length(column)
        docs += pc.sum(pc.greater(lengths, 0)).as_py() or 0
        nbytes += pc.sum(lengths).as_py() or 0
    return docs, nbytes


@reader(
    "parquet",
    kind="text",
    suffixes=(".parquet",),
    describe="Parquet (.parquet: one document per row)",
    check=check_parquet,
    measure=measure_parquet,
)
def read_parquet(path: Path, options: ReadOptions | None = None) -> Iterator[Document]:
    """A Parquet file: each row's ``field`` column (a string) is one document, read in record batches."""
    field = (options or ReadOptions()).field
    check_parquet(path, options)
    row = 0
    for batch in _parquet_file(path).iter_batches(columns=[field], batch_size=1024):  # bounded memory
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise GPT2KitError(
                    f"{path}: row {row} of column '{field}' is {type(text).__name__}, not a string; "
                    "set data.init_args.field to a text column"
                )
            yield Document.of(text)


@reader("chinese-poetry", kind="text")
def read_chinese_poetry(path: Path, options: ReadOptions | None = None) -> Iterator[Document]:
    """A chinese-poetry JSON file: each poem (or chapter of prose) is one document, its title line first
    and then its lines (``paragraphs`` or ``content``), joined by line breaks."""
    for title, lines in _poems(json.loads("".join(read_utf8(path)))):
        yield Document.of("\n".join([title, *lines] if title else lines))


def _poems(node: Any) -> Iterator[tuple[str, list[str]]]:
    """Every object with a list of text lines, however deep (tangshisanbaishou.json nests them)."""
    if isinstance(node, list):
        for item in node:
            yield from _poems(item)
    elif isinstance(node, dict):
        lines = node.get("paragraphs") or node.get("content")
        if isinstance(lines, list) and lines and all(isinstance(line, str) for line in lines):
            title = node.get("title") or node.get("rhythmic") or node.get("chapter") or ""
            yield title, lines
        elif isinstance(lines, list):
            yield from _poems(lines)


# --- chat readers (the formats themselves are in gpt2kit.chat.conversations) --------------------------------


@reader(
    "chat-jsonl",
    kind="chat",
    suffixes=(".jsonl",),
    describe='.jsonl (gpt2kit\'s chat format: one {"messages": [...]} per line)',
)
def _chat_jsonl(path: Path, options: ReadOptions) -> Iterator[Row]:
    return read_chat_jsonl(path)


@reader("topical-chat", kind="chat", suffixes=(".json",), describe=".json (a Topical-Chat split)")
def _topical_chat(path: Path, options: ReadOptions) -> Iterator[Row]:
    return read_topical_chat(path, options.roles)  # the only format with two agents to map to roles


@reader("chatterbot", kind="chat", suffixes=(".yml", ".yaml"), describe=".yml (ChatterBot)")
def _chatterbot(path: Path, options: ReadOptions) -> Iterator[Row]:
    return read_chatterbot(path)


# --- sources: a corpus, file, folder or glob, resolved into files and their readers -------------------

_KIND_WORDS = {
    "text": ("plain text", "data source", "a named corpus", "TextDataModule"),
    "chat": ("conversations", "chat data source", "a dialogue corpus", "ChatDataModule"),
}
"""Per kind: what it holds, what a source is called, what a corpus of it is called, which DataModule reads it."""


def corpora(kind: str) -> list[str]:
    """The named corpora whose files hold data of ``kind``."""
    return [name for name, c in CORPORA.items() if c.reader in READERS and READERS[c.reader].kind == kind]


@dataclass
class Source:
    """Files to read, each with its reader: a named corpus, or a local file, folder or glob."""

    kind: ClassVar[Kind]
    """The kind of reader this source accepts (documents or conversations)."""

    spec: str
    """What was asked for: a corpus name, a hub dataset (``hf:datasets/...``), or a path / folder / glob."""
    files: list[Path]
    readers: list[Reader]
    """Parallel to ``files``."""
    name: str
    """A short name for the prepared folder: the corpus name or the path's stem."""
    options: ReadOptions = field(default_factory=ReadOptions)

    @classmethod
    def from_spec(cls, spec: str, options: ReadOptions) -> Any:
        """Resolve ``spec`` (a corpus name, a hub dataset, or a path, folder or glob) into files and their
        readers. Each file's reader looks at it first (a Parquet file's columns), so a bad file fails now."""
        found = cls._resolve(spec, options)
        for path, file_reader in zip(found.files, found.readers, strict=True):
            if file_reader.check is not None:
                file_reader.check(path, options)
        return found

    @classmethod
    def _resolve(cls, spec: str, options: ReadOptions) -> Any:
        holds, called, corpus_word, module = _KIND_WORDS[cls.kind]
        if hub.is_hub_dataset(spec):
            paths = hub.fetch(spec)  # by suffix only: a hub file is never guessed to be plain text
            readers = cls._readers(paths, by_suffix=True)
            return cls(spec, paths, readers, hub.parse(spec).repo.split("/")[-1], options)
        if spec in CORPORA:
            corpus = CORPORA[spec]
            found = READERS.get(corpus.reader)
            if found is None:
                raise GPT2KitError(f"corpus '{spec}' holds no text to train on ({corpus.description})")
            if found.kind != cls.kind:
                other_holds, _, _, other_module = _KIND_WORDS[found.kind]
                raise GPT2KitError(
                    f"corpus '{spec}' holds {other_holds}, not {holds}: read it with {other_module}, or give "
                    f"{module} {corpus_word} ({', '.join(corpora(cls.kind))}) or files of {formats(cls.kind)}"
                )
            root = fetch_corpus(spec)
            files = [root / f.path for f in corpus.files]
            return cls(spec, files, [found] * len(files), spec, options)
        path = Path(spec).expanduser()
        if path.is_dir():  # a folder: every file a reader of this kind can read (hidden ones aside)
            paths = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and reader_for(p, cls.kind) is not None
            )
        elif any(ch in spec for ch in "*?["):
            paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            paths = [path] if path.is_file() else []
        if not paths:
            raise GPT2KitError(
                f"{called} '{spec}' is neither {corpus_word} ({', '.join(corpora(cls.kind))}), a hub dataset "
                f"(hf:datasets/ORG/NAME/PATTERN) nor an existing file, folder or glob of {formats(cls.kind)}"
            )
        return cls(spec, paths, cls._readers(paths), path.stem or "data", options)

    @classmethod
    def _readers(cls, paths: list[Path], by_suffix: bool = False) -> list[Reader]:
        """The reader of each file, by its suffix (else the kind's default, unless ``by_suffix``); a file
        no reader of this kind reads is refused."""
        readers = [
            reader_for_suffix(p.suffix, cls.kind) if by_suffix else reader_for(p, cls.kind) for p in paths
        ]
        for bad, found in zip(paths, readers, strict=True):
            if found is None:
                raise GPT2KitError(
                    f"{bad}: cannot tell how to read a '{bad.suffix}' file as {_KIND_WORDS[cls.kind][0]}: give "
                    f"{formats(cls.kind)} files"
                )
        return readers  # type: ignore[return-value]

    def read(self) -> Iterator[Any]:
        """Everything the files hold, file after file (in sorted order), as their readers yield it."""
        for path, file_reader in zip(self.files, self.readers, strict=True):
            yield from file_reader.read(path, self.options)

    def fingerprint(self) -> str:
        """sha256 over the files' contents and how they are read: changes whenever the data could.

        A file of the hub's cache is known by the blob it links to (named by its content's hash), so the
        files of a hub dataset are not read to hash them."""
        h = hashlib.sha256(repr(self.options).encode())
        for path, file_reader in zip(self.files, self.readers, strict=True):
            digest = hub.blob_digest(path) or sha256_file(path)
            h.update(f"{path.name}:{file_reader.name}:{digest}".encode())
        return h.hexdigest()


class TextSource(Source):
    """Documents: from a text corpus, or from text (.txt and others), JSON-lines or Parquet files."""

    kind = "text"

    @classmethod
    def resolve(cls, spec: str, field: str = "text") -> TextSource:
        """``field``: the key (JSON lines) or column (Parquet) that holds each document's text."""
        return cls.from_spec(spec, ReadOptions(field=field))

    def documents(self) -> Iterator[Document]:
        """Every non-empty document, in order."""
        return (doc for doc in self.read() if doc.nbytes)

    def sizes(self) -> tuple[int, int]:
        """(non-empty documents, UTF-8 bytes), measured by the readers that can without reading the text."""
        n_docs = n_bytes = 0
        for path, file_reader in zip(self.files, self.readers, strict=True):
            measured = file_reader.measure(path, self.options) if file_reader.measure else None
            if measured is None:
                sizes = [doc.nbytes for doc in file_reader.read(path, self.options) if doc.nbytes]
                measured = len(sizes), sum(sizes)
            n_docs, n_bytes = n_docs + measured[0], n_bytes + measured[1]
        return n_docs, n_bytes

    def texts(self) -> Iterator[str]:
        """All the text, document after document, in pieces (to train a tokenizer on)."""
        for doc in self.documents():
            yield from doc.pieces


class ChatSource(Source):
    """Conversations: from a dialogue corpus, or from chat JSONL, Topical-Chat or ChatterBot files."""

    kind = "chat"

    @classmethod
    def resolve(cls, spec: str, roles: DialogueRoles = "both") -> ChatSource:
        """``roles``: who is the assistant in a two-agent corpus (Topical-Chat)."""
        return cls.from_spec(spec, ReadOptions(roles=roles))

    def rows(self) -> Iterator[Row]:
        """Every conversation, and a :class:`~gpt2kit.chat.conversations.BadRow` for each unusable row."""
        return self.read()
