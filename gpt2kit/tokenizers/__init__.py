"""Tokenizers, each registered under a short name and saved with data and checkpoints."""

from gpt2kit.tokenizers.base import EOT, TOKENIZER, Tokenizer
from gpt2kit.tokenizers.bpe import ByteLevelBPETokenizer
from gpt2kit.tokenizers.char import CharTokenizer
from gpt2kit.tokenizers.from_checkpoint import CheckpointTokenizer
from gpt2kit.tokenizers.gpt2 import GPT2Tokenizer
from gpt2kit.tokenizers.hf import HFTokenizer

__all__ = [
    "EOT",
    "TOKENIZER",
    "ByteLevelBPETokenizer",
    "CharTokenizer",
    "CheckpointTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "Tokenizer",
]
