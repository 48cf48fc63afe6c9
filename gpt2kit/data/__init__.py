"""Data: named corpora, preparation into token shards, and the DataModules."""

from gpt2kit.data.datamodule import TextDataModule, WindowDataset
from gpt2kit.data.prepare import Prepared, prepare
from gpt2kit.data.prompts import PromptBatch, PromptDataModule, read_prompts
from gpt2kit.data.sources import CORPORA, TextSource, cache_dir, fetch_corpus

__all__ = [
    "CORPORA",
    "Prepared",
    "PromptBatch",
    "PromptDataModule",
    "TextDataModule",
    "TextSource",
    "WindowDataset",
    "cache_dir",
    "fetch_corpus",
    "prepare",
    "read_prompts",
]
