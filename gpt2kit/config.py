"""Model sizes (:class:`GPTConfig`) and the named presets; how tokens are sampled (:class:`SamplingConfig`).

Every component receives the model's ``GPTConfig`` as its first argument and reads the sizes it needs
from it; the recipe supplies only each component's own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise GPT2KitError(f"{name}={getattr(self, name)} must be a positive integer")
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


@dataclass
class SamplingConfig:
    """How the next token is drawn from the model's distribution, and when a completion ends.

    The one set of sampling options and defaults: ``generate``, ``chat``, ``predict``, ``evaluate``
    (generate_until) and ``serve`` all take it (docs/generation.md lists the fields). A checkpoint may
    recommend other defaults (see :class:`gpt2kit.decoding.LoadedModel`).
    """

    max_new_tokens: int = 200
    """Largest number of tokens to generate per completion."""
    temperature: float = 0.8
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = 200
    """Sample only among the k most likely tokens; None: no limit."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches p, in (0, 1]; None: off."""
    repetition_penalty: float = 1.0
    """Divide positive (multiply negative) logits of tokens already in the context (prompt included) by
    this; 1: off (CTRL's penalty, as in transformers)."""
    presence_penalty: float = 0.0
    """Subtract this from the logits of tokens already generated (not the prompt), in [-2, 2]; 0: off
    (OpenAI's meaning)."""
    frequency_penalty: float = 0.0
    """Subtract this times the number of times a token was already generated, in [-2, 2]; 0: off."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: a completion ends before the first one it produces."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end a completion (they are not part of it)."""
    stop_at_eot: bool = True
    """End a completion at the tokenizer's end-of-text token, if it has one."""
    seed: int | None = None
    """Seed for reproducible sampling (for the same batch of prompts); None: nondeterministic."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GPT2KitError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GPT2KitError(f"top_p={self.top_p} must be in (0, 1] (or None for no nucleus sampling)")
        if self.top_k is not None and self.top_k <= 0:
            raise GPT2KitError(f"top_k={self.top_k} must be a positive integer (or None for no limit)")
        if self.max_new_tokens < 0:
            raise GPT2KitError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.repetition_penalty <= 0:
            raise GPT2KitError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 is no penalty)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise GPT2KitError(f"{name}={getattr(self, name)} must be in [-2, 2] (0 is no penalty)")
        if any(not s for s in self.stop):
            raise GPT2KitError("stop strings must not be empty: remove the empty string from stop")
