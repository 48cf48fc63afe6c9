"""Tokenizers, each registered under a short name and saved with data and checkpoints."""

from gpt2kit.tokenizers.base import EOT, TOKENIZER, Tokenizer
from gpt2kit.tokenizers.char import CharTokenizer
from gpt2kit.tokenizers.from_checkpoint import CheckpointTokenizer

__all__ = ["EOT", "TOKENIZER", "CharTokenizer", "CheckpointTokenizer", "Tokenizer"]
