"""Model sizes (:class:`GPTConfig`) and the named presets.

Every component receives the model's ``GPTConfig`` as its first argument and reads the sizes it needs
from it; the recipe supplies only each component's own options.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpt2kit.errors import GPT2KitError


@dataclass
class GPTConfig:
    """The sizes of a GPT model."""

    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Number of attention heads (query heads for grouped-query attention)."""
    n_embd: int = 768
    """Width of the residual stream; must be divisible by n_head."""
    block_size: int = 1024
    """Context length: the longest sequence the model is trained on."""
    vocab_size: int = 50257
    """Vocabulary size; recipes link it from the data's tokenizer."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 for pretraining small data)."""
    bias: bool = True
    """Biases in linear layers (GPT-2: True)."""

    def __post_init__(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, field) <= 0:
                raise GPT2KitError(f"{field}={getattr(self, field)} must be a positive integer")
        if self.n_embd % self.n_head:
            raise GPT2KitError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"choose n_head among {[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0][:12]}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise GPT2KitError(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named presets: literal sizes, as in minGPT's table. GPT-2 sizes are OpenAI's released models.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # nanoGPT's "baby GPT" for Tiny Shakespeare on a CPU (vocab comes from the char tokenizer).
    "baby": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
    # The smallest useful shape, for tests.
    "nano": GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65),
}


def preset(name: str, **overrides: int | float | bool) -> GPTConfig:
    """A copy of a named preset, with fields overridden: ``preset("gpt2", block_size=512)``."""
    if name not in PRESETS:
        raise GPT2KitError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
