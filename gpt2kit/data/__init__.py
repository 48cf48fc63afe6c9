"""Data: sources and readers, the keyed prepared-data cache, and the DataModules (text, chat, prompts).

Read in this order: ``readers.py`` (one table of file formats) → ``sources.py`` (named corpora, files,
folders, globs) → ``cache.py`` (request key → temporary folder → published atomically) →
``prepare.py`` (the shared pipeline) → ``text.py`` / ``chat.py`` (the two sample formats) →
``datamodule.py`` (ShardDataModule, TextDataModule) → ``sampler.py`` (the global order of windows, dealt to ranks, resumable on any world size).
"""

from gpt2kit.corpora import CORPORA, cache_dir, fetch_corpus
from gpt2kit.data.cache import TOKENIZER_FILE, PreparedFolder
from gpt2kit.data.prepare import ShardFormat, prepare_shards
from gpt2kit.data.readers import (
    READERS,
    ChatSource,
    Document,
    Reader,
    ReadOptions,
    Source,
    TextSource,
    reader,
)
from gpt2kit.data.sampler import BOSAlignedWindows, RandomWindows, WindowSampler
from gpt2kit.data.text import Prepared, prepare

# The DataModules import Lightning; the readers, samplers and preparation do not. Decoding (which registers
# the built-in samplers) must start without Lightning, so those names are imported when first asked for
# (PEP 562).
_LAZY = {
    "ChatDataModule": "gpt2kit.data.chat",
    "PreparedChat": "gpt2kit.data.chat",
    "PromptBatch": "gpt2kit.data.prompts",
    "PromptDataModule": "gpt2kit.data.prompts",
    "ShardDataModule": "gpt2kit.data.datamodule",
    "TextDataModule": "gpt2kit.data.datamodule",
    "WindowDataset": "gpt2kit.data.datamodule",
    "build_sample": "gpt2kit.data.chat",
    "read_prompts": "gpt2kit.data.prompts",
}


__all__ = [
    "BOSAlignedWindows",
    "RandomWindows",
    "WindowSampler",
    "CORPORA",
    "READERS",
    "TOKENIZER_FILE",
    "ChatDataModule",
    "ChatSource",
    "Document",
    "Prepared",
    "PreparedChat",
    "PreparedFolder",
    "PromptBatch",
    "PromptDataModule",
    "ReadOptions",
    "Reader",
    "ShardDataModule",
    "ShardFormat",
    "Source",
    "TextDataModule",
    "TextSource",
    "WindowDataset",
    "build_sample",
    "cache_dir",
    "fetch_corpus",
    "prepare",
    "prepare_shards",
    "read_prompts",
    "reader",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt2kit.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
