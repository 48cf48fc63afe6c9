import json
import os

import numpy as np
import pytest

from gpt2kit import GPT2KitError
from gpt2kit import corpora as sources_mod
from gpt2kit.data import TextDataModule, TextSource, fetch_corpus, prepare
from gpt2kit.tokenizers import CharTokenizer


def test_tinyshakespeare_is_resolved_and_split_like_nanogpt():
    dm = TextDataModule("tinyshakespeare", block_size=64)
    meta = dm.prepared().meta
    assert meta["vocab_size"] == 65 and dm.vocab_size == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)  # nanoGPT's 90/10 split
    text = (fetch_corpus("tinyshakespeare") / "input.txt").read_text()
    train = dm.prepared().tokens("train")
    assert dm.tokenizer.decode(train[:100].tolist()) == text[:100]
    assert meta["dtype"] == "uint16"


def test_windows_are_shifted_targets_and_validation_is_fixed():
    dm = TextDataModule("tinyshakespeare", block_size=16, batch_size=4, val_max_windows=10)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    first = [b[0] for b in dm.val_dataloader()]
    again = [
        b[0]
        for b in TextDataModule(
            "tinyshakespeare", block_size=16, batch_size=4, val_max_windows=10
        ).val_dataloader()
    ]
    assert len(first) == 3 and all((a == b).all() for a, b in zip(first, again, strict=True))


def test_prepared_data_is_reused_and_redone_when_source_changes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, " * 200)
    cache = tmp_path / "prepared"
    a = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    mtime = (a.path / "train.bin").stat().st_mtime_ns
    b = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    assert b.path == a.path and (b.path / "train.bin").stat().st_mtime_ns == mtime  # reused
    corpus.write_text("goodbye moon! " * 200)
    c = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    assert c.path != a.path and "!" in c.tokenizer.chars  # re-prepared for the new text
    d = prepare(TextSource.resolve(str(corpus)), CharTokenizer(special_tokens=["<|endoftext|>"]), cache)
    assert d.path != c.path  # and for a different tokenizer


def test_incomplete_preparation_is_not_reused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh\n" * 300)
    cache = tmp_path / "prepared"
    good = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    (good.path / "meta.json").unlink()  # as if the run died before marking the folder complete
    (good.path / "train.bin").write_bytes(b"\x00\x00")
    again = prepare(TextSource.resolve(str(corpus)), CharTokenizer(), cache)
    assert json.loads((again.path / "meta.json").read_text())["train_tokens"] == good.meta["train_tokens"]
    assert len(again.tokens("train")) == good.meta["train_tokens"]
    assert not [p for p in cache.rglob("*tmp*")]  # no temporary folder left behind


def test_not_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café ok\n".encode() * 3 + "naïve".encode("latin-1"))
    with pytest.raises(GPT2KitError, match=r"latin1\.txt is not valid UTF-8: byte offset 29 \(0xef\)"):
        prepare(TextSource.resolve(str(bad)), CharTokenizer(), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("meta.json"))


def test_empty_corpus_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(GPT2KitError, match="empty"):
        prepare(TextSource.resolve(str(empty)), CharTokenizer(), tmp_path / "out")


def test_missing_source_path():
    with pytest.raises(GPT2KitError, match="neither a named corpus"):
        TextSource.resolve("/no/such/file.txt")


def test_block_size_larger_than_validation_split(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("x" * 500)
    dm = TextDataModule(str(corpus), block_size=64, cache=str(tmp_path / "c"))
    with pytest.raises(GPT2KitError, match="val split has 50 tokens, not more than block_size=64"):
        dm.setup("fit")


def test_missing_corpus_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources_mod.urllib.request, "urlopen", offline)
    with pytest.raises(GPT2KitError) as err:
        fetch_corpus("tinyshakespeare")
    message = str(err.value)
    assert (
        "could not be downloaded" in message
        and "tinyshakespeare/input.txt" in message
        and "GPT2KIT_DATA" in message
    )


def test_download_with_wrong_checksum_is_refused_and_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))

    class FakeResponse:
        def __init__(self):
            self.chunks = [b"not shakespeare at all", b""]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            return self.chunks.pop(0)

    monkeypatch.setattr(sources_mod.urllib.request, "urlopen", lambda *a, **k: FakeResponse())
    with pytest.raises(GPT2KitError, match="sha256 .* expected 86c4e6aa"):
        fetch_corpus("tinyshakespeare")
    target = tmp_path / "cache" / "corpora" / "tinyshakespeare"
    assert not target.exists() or not any(target.iterdir())  # neither the file nor a .part remains


def test_local_copy_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("tampered")
    monkeypatch.setenv("GPT2KIT_DATA", str(tmp_path))
    with pytest.raises(GPT2KitError, match="expected 86c4e6aa"):
        fetch_corpus("tinyshakespeare")


def test_uint32_tokens_when_vocab_exceeds_uint16():
    from gpt2kit.data.prepare import token_dtype

    assert (
        token_dtype(65) == np.uint16
        and token_dtype(2**16) == np.uint16
        and token_dtype(2**16 + 1) == np.uint32
    )
    assert os.environ["GPT2KIT_CACHE"]
