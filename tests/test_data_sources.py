"""Sources and streaming preparation: readers, the split, shards equal to whole-text tokenization, atomicity."""

import importlib
import json
import os
import signal

import numpy as np
import pytest

from gpt2kit import GPT2KitError
from gpt2kit import corpora as sources_mod
from gpt2kit.data import TextSource, fetch_corpus, prepare
from gpt2kit.data import readers as readers_mod
from gpt2kit.data import text as text_mod
from gpt2kit.tokenizers import EOT, ByteLevelBPETokenizer, CharTokenizer, GPT2Tokenizer

prepare_mod = importlib.import_module("gpt2kit.data.prepare")  # (gpt2kit.data.prepare is also the function)


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture
def small_pieces(monkeypatch):
    """Force many pieces and many batches, so that every seam is exercised on small texts."""
    monkeypatch.setattr(readers_mod, "PIECE_CHARS", 40)
    monkeypatch.setattr(text_mod, "BATCH_CHARS", 100)


def _jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def _joined(tok, docs):
    """What a shard must hold: each document tokenized whole, separated by the end-of-text token."""
    ids = []
    for i, doc in enumerate(docs):
        ids += ([tok.eot_id] if i else []) + tok.encode(doc)
    return ids


# --- shards equal tokenizing whole texts -------------------------------------------------------------------


def test_tinyshakespeare_gpt2_shards_equal_whole_text_tokenization(gpt2, tmp_path):
    text = (fetch_corpus("tinyshakespeare") / "input.txt").read_text()
    p = prepare(TextSource.resolve("tinyshakespeare"), gpt2, tmp_path)
    m = p.meta
    assert (m["train_bytes"], m["val_bytes"]) == (1_003_854, 111_540)  # nanoGPT's split of the one document
    assert p.tokens("train").tolist() == gpt2.encode(text[:1_003_854])
    assert p.tokens("val").tolist() == gpt2.encode(text[1_003_854:])
    assert m["dtype"] == "uint16" and m["split"] == "tail of each document"


def test_long_document_read_in_pieces_gives_the_same_ids(gpt2, tmp_path, small_pieces):
    text = "\n".join(f"Line {i}:  some words,\tand   spaces \n\n  indented {i * 7}" for i in range(300))
    path = tmp_path / "one.txt"
    path.write_text(text)
    [doc] = list(TextSource.resolve(str(path)).documents())
    pieces = list(doc.pieces)
    assert len(pieces) > 50 and "".join(pieces) == text and doc.nbytes == len(text.encode())
    p = prepare(TextSource.resolve(str(path)), gpt2, tmp_path / "out")
    cut = int(len(text) * 0.9)
    assert p.tokens("train").tolist() == gpt2.encode(text[:cut])
    assert p.tokens("val").tolist() == gpt2.encode(text[cut:])


def test_many_documents_are_split_whole_every_tenth(gpt2, tmp_path, small_pieces):
    docs = [f"Document {i}.\n" + "word " * (i % 17) + "\nend" * (i % 3) for i in range(120)]
    src = TextSource.resolve(str(_jsonl(tmp_path / "docs.jsonl", docs)))
    p = prepare(src, gpt2, tmp_path / "out")
    val_docs = [d for i, d in enumerate(docs) if i % 10 == 9]
    train_docs = [d for i, d in enumerate(docs) if i % 10 != 9]
    assert p.tokens("val").tolist() == _joined(gpt2, val_docs)
    assert p.tokens("train").tolist() == _joined(gpt2, train_docs)
    assert p.meta["split"] == "documents" and p.meta["val_documents"] == 12 and p.meta["documents"] == 120
    assert p.meta["val_bytes"] == sum(len(d.encode()) for d in val_docs)


def test_few_documents_each_give_their_tail(tmp_path):
    for i, body in enumerate(["abcdefghij" * 10, "klmnopqrst" * 20, "uvwxyz" * 50]):
        (tmp_path / "books" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "books" / f"{i}.txt").write_text(body)
    tok = CharTokenizer(special_tokens=[EOT])
    p = prepare(TextSource.resolve(str(tmp_path / "books")), tok, tmp_path / "out")
    texts = [(tmp_path / "books" / f"{i}.txt").read_text() for i in range(3)]
    tok = p.tokenizer  # the trained copy (the tokenizer passed in stays untrained)
    assert p.tokens("train").tolist() == _joined(tok, [t[: int(len(t) * 0.9)] for t in texts])
    assert p.tokens("val").tolist() == _joined(tok, [t[int(len(t) * 0.9) :] for t in texts])


def test_split_is_deterministic_and_uint32_for_big_vocabularies(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("deterministic text\n" * 50)
    a = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), tmp_path / "a")
    b = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), tmp_path / "b")
    assert (a.path / "train.bin").read_bytes() == (b.path / "train.bin").read_bytes()
    monkeypatch.setattr(prepare_mod, "token_dtype", lambda n: np.dtype(np.uint32))
    c = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), tmp_path / "c")
    assert c.meta["dtype"] == "uint32" and c.tokens("train").tolist() == a.tokens("train").tolist()


# --- named corpora ------------------------------------------------------------------------------------------


def test_chinese_poetry_poems_are_documents():
    docs = ["".join(d.pieces) for d in TextSource.resolve("chinese-poetry").documents()]
    assert len(docs) == 4928
    assert docs[0].startswith("帝京篇十首 一\n秦川雄帝宅，函谷壯皇居。\n綺殿千尋起，離宮百雉餘。")
    assert "登鸛雀樓\n白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。" in docs  # nested (唐詩三百首)
    assert any(d.startswith("关雎\n关关雎鸠") for d in docs)  # Shijing: "content"
    assert any(d.startswith("学而篇\n子曰：“学而时习之") for d in docs)  # Analects: chapters
    assert any(d.startswith("湘春夜月\n近清明。") for d in docs)  # Song ci: titled by their tune
    url = sources_mod.CORPORA["chinese-poetry"].files[-1].url
    assert url.endswith("/%E5%AE%8B%E8%AF%8D/%E5%AE%8B%E8%AF%8D%E4%B8%89%E7%99%BE%E9%A6%96.json")


def test_tokenizer_files_are_not_a_text_corpus():
    with pytest.raises(GPT2KitError, match="'gpt2-bpe' holds no text"):
        TextSource.resolve("gpt2-bpe")


# --- bad input: one clear line, nothing half-written ---------------------------------------------------------


def test_jsonl_line_without_the_field_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n\n{"body": "no text here"}\n')
    with pytest.raises(GPT2KitError, match=r"data\.jsonl:3: the text field 'text' is missing \(keys: body\)"):
        prepare(TextSource.resolve(str(path)), CharTokenizer(), tmp_path / "out")
    src = TextSource.resolve(str(path), field="body")
    with pytest.raises(GPT2KitError, match=r"data\.jsonl:1: the text field 'body' is missing"):
        list(src.documents())
    path.write_text('{"text": "fine"}\n{"text": 3}\nnot json\n')
    with pytest.raises(GPT2KitError, match=r"data\.jsonl:2: the text field 'text' is not a string"):
        list(TextSource.resolve(str(path)).documents())
    assert not list((tmp_path / "out").rglob("meta.json"))


def test_jsonl_not_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(GPT2KitError, match=r"bad\.jsonl is not valid UTF-8: byte offset 28 \(line 2, 0xe9\)"):
        list(TextSource.resolve(str(path)).documents())


def test_empty_corpora_are_refused_before_training(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "empty.txt").write_text("")
    for spec in (tmp_path / "blank.jsonl", tmp_path / "empty.txt", tmp_path):
        with pytest.raises(GPT2KitError, match="is empty: it holds no text"):
            prepare(TextSource.resolve(str(spec)), ByteLevelBPETokenizer(vocab_size=300), tmp_path / "out")


def test_preparation_that_fails_midway_leaves_nothing(tmp_path, monkeypatch, small_pieces):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to tokenize\n" * 40)
    append, calls = text_mod._Shard.append, []

    def failing(shard, ids):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        append(shard, ids)

    monkeypatch.setattr(text_mod._Shard, "append", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(TextSource.resolve(str(corpus)), CharTokenizer(), tmp_path / "out")
    assert len(calls) == 2  # it did fail half-way through the shards
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no shard, no temporary folder
    monkeypatch.undo()
    good = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), tmp_path / "out")
    assert len(good.tokens("train")) + len(good.tokens("val")) == len(corpus.read_text())


def test_killed_preparation_is_redone_not_reused(tmp_path, monkeypatch, small_pieces):
    corpus = tmp_path / "c.txt"
    corpus.write_text("text that a killed run was preparing\n" * 100)
    cache = tmp_path / "out"
    append, calls = text_mod._Shard.append, []

    def dying(shard, ids):
        calls.append(1)
        if len(calls) == 3:  # half-way through the shards: killed, so no cleanup code runs
            shard.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        append(shard, ids)

    pid = os.fork()  # a real process to kill, without the start-up cost of a new interpreter
    if pid == 0:
        try:
            monkeypatch.setattr(text_mod._Shard, "append", dying)
            prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
        finally:
            os._exit(1)  # only reached if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = list(cache.rglob("*.tmp-*"))
    assert leftovers and (leftovers[0] / "train.bin").is_file()  # a partial folder ...
    assert not list(cache.rglob("meta.json"))  # ... never marked complete
    again = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    assert len(again.tokens("train")) + len(again.tokens("val")) == len(corpus.read_text())
    assert not list(cache.rglob("*.tmp-*"))  # the dead run's folder is cleaned up
