"""Named corpora: downloaded once, checked by sha256, found through $GPT2KIT_DATA or the cache.

A named corpus is looked for, in order, under ``$GPT2KIT_DATA/<name>/`` (a folder that already holds
copies, e.g. ``../shared/data`` in CI), then in the cache (``$GPT2KIT_CACHE``, default
``~/.cache/gpt2kit``), and is downloaded into the cache only if it is in neither. Every file is checked
against its sha256 before use; a download that does not match is deleted and refused.

Each corpus names the reader of its files (:data:`gpt2kit.data.readers.READERS`); how a DataModule's
``source`` — a corpus, file, folder or glob — becomes files and readers is
:class:`gpt2kit.data.readers.Source`. This module imports nothing else of gpt2kit's, so that the
tokenizers (layer 4) may fetch their vocabulary files (``gpt2-bpe``) from it: it is a foundation (layer 1).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
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
    """How its files are read: a key of :data:`gpt2kit.data.readers.READERS` ("none": not data)."""


_GH = "https://raw.githubusercontent.com"


def _gutenberg(book: int, commit: str, sha: str) -> RemoteFile:
    return RemoteFile(f"{book}-0.txt", f"{_GH}/gutenbergbooks/{book}/{commit}/{book}-0.txt", sha)


_CHATTERBOT = "a01efece26661309b870af0251d96f94ee09fb19"
_CHATTERBOT_FILES = {  # chatterbot_corpus/data/english/<name>.yml: sha256
    "ai": "620a65787a56641db4a03e1419a7578e813967218cf6721e3ea4ef90844916aa",
    "botprofile": "1a694c5288f3f8f87d027d2f98dae71d02efa88e28853a6e5d27e6dbce907294",
    "coding": "0de8d7d7e6095164c59d7b0ef97c402c770c2d7982f485ab372dc6736c1a4e79",
    "computers": "a222c5a432efe4289e6c5edf1c3d99fd26c48df99db0ff893d1d5ab569f5b750",
    "conversations": "1cf105b5802f377b2dc145f741f7df85629c9ca27e450538165286a75b5e3416",
    "emotion": "510a018938c1880dd0f67e1ae458e26878c91a570daef5a84fb83713c89f0989",
    "food": "68eab2497721d03044d520b70c27d8a0d8ba8e505b3265fb3a1ff3e1a64c7124",
    "gossip": "d6f1b1613ed70821fc1c427bdd00395f58b77ff57d76fbe4ab8cb2038cf15c9b",
    "greetings": "0dd7eb8dcee8e2a38cd1a137bcfbd7f3eb732cddfa1bd396fac5a24b063a4d55",
    "health": "eb88edc5302d688ca096374c7e3f5b9d7cd821f053a17d80204c4acdc20ea4f5",
    "history": "0ff4beeb6ef9b641dc12e1039a149c6a03eb8f2e183702fad2b0997fcc1d63e3",
    "humor": "d2aa03a63f0e8e054589f642788afbc41b8c76f5d734c50901a9a63b359ea06b",
    "literature": "9361ff1478273d811259ca307a1e6be23a5e08e776a5bc5d9524fb13deb886f1",
    "money": "2911d9766625ff5c2feb3d784f2951b2ebd5e9658547efce7568d0282c49274b",
    "movies": "075ca9d91a527206c635c88bf0353323826a25a6f2057be1bc71888af389f842",
    "politics": "c436d5efedea6f715a8a811423a8edf396097771eb11e43b1f0a43a6aee7c2f0",
    "psychology": "5047c211d35f715af4fbc3398f111135e99d34afcd0905a661c40bdeb1413a58",
    "science": "3c259799bba36c67a1601fc264ec01ab051e9e63950734ce1ef644e022081fe7",
    "sports": "8d1bcc632cad4058e3b8490daa15dcd7c2a51790a7b9140b252600b794590403",
    "tech_support": "8a87cdf32579c8efdd9c5f3ef166ae9fb76dcf271b958f5e2265b9246b430655",
    "trivia": "3a9de77e6d82803d1ea3eba48cf6543c884908f4c4f50501fed69f88112994dc",
}


def _poetry(name: str, upstream: str, sha: str) -> RemoteFile:
    """A file of chinese-poetry/chinese-poetry at a fixed commit; upstream paths are Chinese (URL-quoted)."""
    commit = "99ebbef7e1345c0985c44b9fd96a3f9e776f117b"
    return RemoteFile(
        name, f"{_GH}/chinese-poetry/chinese-poetry/{commit}/{urllib.parse.quote(upstream)}", sha
    )


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
        Corpus(
            "chinese-poetry",
            "Chinese classics (chinese-poetry): 4,000 Tang poems, 300 Tang poems, Shijing, Analects and "
            "300 Song ci, each poem or chapter one document (traditional and simplified script as published)",
            (
                _poetry(
                    "poet.tang.0.json",
                    "全唐诗/poet.tang.0.json",
                    "4f88f429938082523cdc72a1612bd7a7c3e3f7a33f8192c61ae51340efc3c92d",
                ),
                _poetry(
                    "poet.tang.1000.json",
                    "全唐诗/poet.tang.1000.json",
                    "6e703b8d8dcedbd6110f6d48d043665ca2131db2035a5bfcef5e59a19aeb6d75",
                ),
                _poetry(
                    "poet.tang.2000.json",
                    "全唐诗/poet.tang.2000.json",
                    "ec28efa7e2ae9cdbbba09f0ed186e32ccae47a325ad1e5816b7ad56071c1665a",
                ),
                _poetry(
                    "poet.tang.3000.json",
                    "全唐诗/poet.tang.3000.json",
                    "9e4ba2323752b6b9fbdba875cdbc6a26636fe0cabc85fd066370d4915952001f",
                ),
                _poetry(
                    "tangshisanbaishou.json",
                    "蒙学/tangshisanbaishou.json",
                    "8423b65d938d0327e369972e790549b42609fa7ac4a2a72df59f4cb5a49c08f8",
                ),
                _poetry(
                    "shijing.json",
                    "诗经/shijing.json",
                    "3c7ca54d59424542ada99adfcc85420287fbbd5c8a511e9baf705cb2b04051e7",
                ),
                _poetry(
                    "lunyu.json",
                    "论语/lunyu.json",
                    "bc336a3839706377892719db44c48a09794a493190535a42bf1c7d4c4233e96c",
                ),
                _poetry(
                    "songci300.json",
                    "宋词/宋词三百首.json",
                    "ca5d74f7fdb9d5a6acc22a7c8b4395228cad4bb8be53df44c19ba83ab6983b20",
                ),
            ),
            reader="chinese-poetry",
        ),
        Corpus(
            "topical-chat",
            "Topical-Chat (Amazon Alexa), valid_freq split: 539 human-human conversations, ~22 turns each",
            (
                RemoteFile(
                    "valid_freq.json",
                    f"{_GH}/alexa/Topical-Chat/7c939229cbcf6f55f6977b341a5a2f2fe982d53f/conversations/valid_freq.json",
                    "d14e8bde94fa5556d4aad8fd3fb666df674e4fef8b4193c8c3c06c72822a366b",
                ),
            ),
            reader="topical-chat",
        ),
        Corpus(
            "chatterbot-corpus-english",
            "ChatterBot's English corpus: 2,026 short hand-written conversations in 21 topic files",
            tuple(
                RemoteFile(
                    f"{name}.yml",
                    f"{_GH}/gunthercox/chatterbot-corpus/{_CHATTERBOT}/chatterbot_corpus/data/english/{name}.yml",
                    sha,
                )
                for name, sha in _CHATTERBOT_FILES.items()
            ),
            reader="chatterbot",
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
