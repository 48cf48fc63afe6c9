"""The one data pipeline: readers by format, shared sources and cache, the tokenizer left as given, layers."""

from __future__ import annotations

import importlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gpt2kit import GPT2KitError
from gpt2kit.data import (
    ChatDataModule,
    ShardDataModule,
    TextDataModule,
    TextSource,
    prepare,
)
from gpt2kit.data import cache as cache_mod
from gpt2kit.data import readers as readers_mod
from gpt2kit.data import text as text_mod
from gpt2kit.data.readers import Document, ReadOptions
from gpt2kit.tokenizers import ByteLevelBPETokenizer, CharTokenizer, GPT2Tokenizer

CHAT_LINE = (
    '{"messages": [{"role": "user", "content": "hi %d"}, {"role": "assistant", "content": "hello %d"}]}'
)


def _chats(path: Path, n: int = 20) -> Path:
    path.write_text("\n".join(CHAT_LINE % (i, i) for i in range(n)) + "\n")
    return path


# --- the recipe's tokenizer is never changed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [CharTokenizer, lambda: ByteLevelBPETokenizer(vocab_size=300)], ids=["char", "bpe"]
)
def test_text_preparation_trains_a_copy_and_leaves_the_tokenizer_given_untouched(make, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    tok = make()
    before = json.dumps(tok.to_dict(), sort_keys=True)
    dm = TextDataModule(str(corpus), tok, block_size=8, cache=str(tmp_path / "c"))
    dm.prepare_data()
    assert not tok.is_trained and json.dumps(tok.to_dict(), sort_keys=True) == before
    assert dm.tokenizer is not tok and dm.tokenizer.is_trained
    assert dm.tokenizer.decode(dm.prepared().tokens("train").tolist()).startswith(
        "the quick brown fox jumps over the lazy dog\nthe"
    )
    # the same untrained tokenizer (or an equal one) finds the prepared folder again
    again = TextDataModule(str(corpus), make(), block_size=8, cache=str(tmp_path / "c"))
    assert again.prepared().path == dm.prepared().path and again.prepared().reused


def test_chat_preparation_extends_a_copy_and_leaves_the_tokenizer_given_untouched(tmp_path):
    path = _chats(tmp_path / "chats.jsonl")
    for tok in (CharTokenizer(), GPT2Tokenizer()):  # untrained: trained and extended; pretrained: extended
        before = json.dumps(tok.to_dict(), sort_keys=True)
        dm = ChatDataModule(str(path), tok, block_size=32, cache=str(tmp_path / "c"))
        dm.prepare_data()
        assert json.dumps(tok.to_dict(), sort_keys=True) == before
        assert tok.token_id("<|assistant|>") is None  # the template's tokens went to the copy only
        assert dm.tokenizer.token_id("<|assistant|>") is not None
        assert dm.vocab_size == dm.tokenizer.vocab_size > (tok.vocab_size if tok.is_trained else 0)


# --- one pipeline for both ---------------------------------------------------------------------------------


def test_both_datamodules_get_preparation_tokenizer_and_vocab_size_from_shard_datamodule():
    for name in ("prepare_data", "prepared", "tokenizer", "vocab_size", "sources"):
        assert name not in vars(TextDataModule) and name not in vars(ChatDataModule), name
        assert name in vars(ShardDataModule)


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_both_kinds_publish_through_the_one_keyed_cache(kind, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.cached

    def spy(root, label, request, build, cls):
        calls.append(request["kind"])
        return real(root, label, request, build, cls)

    monkeypatch.setattr(importlib.import_module("gpt2kit.data.prepare"), "cached", spy)
    if kind == "text":
        (tmp_path / "c.txt").write_text("some words here\n" * 50)
        make = lambda: TextDataModule(str(tmp_path / "c.txt"), block_size=8, cache=str(tmp_path / "c"))  # noqa: E731
    else:
        _chats(tmp_path / "chats.jsonl")
        make = lambda: ChatDataModule(  # noqa: E731
            str(tmp_path / "chats.jsonl"), CharTokenizer(), block_size=32, cache=str(tmp_path / "c")
        )
    first = make().prepared()
    mtime = (first.path / "train.bin").stat().st_mtime_ns
    second = make().prepared()
    assert calls == [kind, kind] and not first.reused and second.reused
    assert second.path == first.path and (second.path / "train.bin").stat().st_mtime_ns == mtime
    assert (first.path / cache_mod.TOKENIZER_FILE).is_file() and (first.path / cache_mod.META_FILE).is_file()
    assert not list(first.path.parent.glob(".*tmp*"))
    (first.path / cache_mod.META_FILE).unlink()  # as if the run died before marking it complete
    assert not make().prepared().reused


# --- readers: one per format ---------------------------------------------------------------------------------


def test_a_new_format_is_one_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_mod, "READERS", dict(readers_mod.READERS))  # undone after the test

    @readers_mod.reader("tsv-first-column", kind="text", suffixes=(".tsv",), describe=".tsv (first column)")
    def read_tsv(path: Path, options: ReadOptions):
        for line in path.read_text().splitlines():
            yield Document.of(line.split("\t")[0])

    docs = [f"document number {i}" for i in range(100)]
    (tmp_path / "d.tsv").write_text("".join(f"{d}\tignored {i}\n" for i, d in enumerate(docs)))
    p = prepare(TextSource.resolve(str(tmp_path / "d.tsv")), CharTokenizer(), tmp_path / "out")
    assert p.meta["documents"] == 100 and p.meta["split"] == "documents"
    tok = p.tokenizer
    assert "ignored" not in tok.decode(p.tokens("train").tolist())
    assert tok.decode(p.tokens("val").tolist()) == "".join(docs[9::10])  # whole documents; char: no separator
    with pytest.raises(GPT2KitError, match="reader 'tsv-first-column' is already registered"):
        readers_mod.reader("tsv-first-column", kind="text")(read_tsv)
    with pytest.raises(GPT2KitError, match="claims .tsv text files, which reader 'tsv-first-column'"):
        readers_mod.reader("other", kind="text", suffixes=(".tsv",))(read_tsv)


def test_parquet_rows_are_documents_like_jsonl_lines(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = [f"Row {i}: " + "words and more words " * (i % 7) for i in range(120)]
    pq.write_table(pa.table({"id": list(range(120)), "body": docs}), tmp_path / "d.parquet", row_group_size=7)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    tok = GPT2Tokenizer()
    a = prepare(TextSource.resolve(str(tmp_path / "d.parquet"), field="body"), tok, tmp_path / "a")
    b = prepare(TextSource.resolve(str(tmp_path / "d.jsonl"), field="body"), tok, tmp_path / "b")
    for split in ("train", "val"):
        assert a.tokens(split).tolist() == b.tokens(split).tolist()
    assert a.meta["documents"] == 120 and a.meta["val_documents"] == 12 and a.meta["split"] == "documents"
    with pytest.raises(GPT2KitError, match=r"d\.parquet: there is no column 'text' \(columns: id, body\)"):
        prepare(TextSource.resolve(str(tmp_path / "d.parquet")), tok, tmp_path / "c")
    with pytest.raises(GPT2KitError, match="row 1 of column 'id' is int, not a string"):
        list(TextSource.resolve(str(tmp_path / "d.parquet"), field="id").documents())


def test_text_and_chat_resolve_files_folders_and_globs_alike(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _chats(folder / "a.jsonl")
    (folder / "b.txt").write_text("plain text")
    (folder / ".hidden.jsonl").write_text("{}")
    text = TextSource.resolve(str(folder))
    assert [(p.name, r.name) for p, r in zip(text.files, text.readers, strict=True)] == [
        ("a.jsonl", "jsonl"),
        ("b.txt", "text"),
    ]
    from gpt2kit.data import ChatSource

    chat = ChatSource.resolve(str(folder))  # a folder: the files chat readers can read
    assert [(p.name, r.name) for p, r in zip(chat.files, chat.readers, strict=True)] == [
        ("a.jsonl", "chat-jsonl")
    ]
    assert len(list(chat.rows())) == 20
    assert [p.name for p in ChatSource.resolve(str(folder / "*.jsonl")).files] == ["a.jsonl"]
    with pytest.raises(GPT2KitError, match=r"cannot tell how to read a '\.txt' file as conversations"):
        ChatSource.resolve(str(folder / "*"))  # a glob: every file must be readable
    with pytest.raises(GPT2KitError, match="chat data source '/nowhere' is neither a dialogue corpus"):
        ChatSource.resolve("/nowhere")


def test_a_list_of_text_sources_is_one_prepared_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n" * 30)
    (tmp_path / "b.txt").write_text("second file\n" * 30)
    both = TextDataModule(
        [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], block_size=8, cache=str(tmp_path / "c")
    )
    meta = both.prepared().meta
    assert [s["spec"] for s in meta["sources"]] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert meta["train_bytes"] + meta["val_bytes"] == 11 * 30 + 12 * 30 and meta["documents"] == 2
    assert both.prepared().path.parent.name == "a+b"


# --- streaming -------------------------------------------------------------------------------------------------


def test_memory_of_preparation_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_mod, "PIECE_CHARS", 4096)  # small buffers, so that corpora of a few MB
    monkeypatch.setattr(readers_mod, "READ_CHARS", 8192)  # are many times larger than any of them
    monkeypatch.setattr(text_mod, "BATCH_CHARS", 16384)
    line = "a line of text with some words, to be tokenized in pieces and batches\n"
    peaks = {}
    for lines in (16_000, 40_000):  # 1.1 MB and 2.8 MB of text in one file
        path = tmp_path / f"c{lines}.txt"
        path.write_text(line * lines)
        tracemalloc.start()
        prepared = prepare(TextSource.resolve(str(path)), CharTokenizer(), tmp_path / "out")
        peaks[lines] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert prepared.meta["train_tokens"] + prepared.meta["val_tokens"] == len(line) * lines
    assert peaks[40_000] < 1.2 * peaks[16_000], peaks  # 2.5x the text, the same peak
    assert peaks[40_000] < len(line) * 40_000, peaks  # and less than the text itself


def test_shards_are_uint16_when_the_vocabulary_fits(tmp_path):
    (tmp_path / "c.txt").write_text("abc\n" * 100)
    p = prepare(TextSource.resolve(str(tmp_path / "c.txt")), CharTokenizer(), tmp_path / "out")
    assert p.meta["dtype"] == "uint16" and (p.path / "train.bin").stat().st_size == 2 * p.meta["train_tokens"]
    assert np.array_equal(p.tokens("train")[:4], p.tokenizer.encode("abc\n"))
