"""Data: sources and readers, the keyed prepared-data cache, and the DataModules (text, chat, prompts).

Read in this order: ``readers.py`` (one table of file formats) → ``sources.py`` (named corpora, files,
folders, globs) → ``cache.py`` (request key → temporary folder → published atomically) →
``prepare.py`` (the shared pipeline) → ``text.py`` / ``chat.py`` (the two sample formats) →
``datamodule.py`` (ShardDataModule, TextDataModule) → ``sampler.py`` (the global order of windows, dealt to ranks, resumable on any world size).
"""

from gpt2kit.corpora import CORPORA, cache_dir, fetch_corpus
from gpt2kit.data.cache import TOKENIZER_FILE, PreparedFolder
from gpt2kit.data.chat import ChatDataModule, PreparedChat, build_sample
from gpt2kit.data.datamodule import ShardDataModule, TextDataModule, WindowDataset
from gpt2kit.data.prepare import ShardFormat, prepare_shards
from gpt2kit.data.prompts import PromptBatch, PromptDataModule, read_prompts
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
