"""The GPT model: token embedding → position encoding → blocks → final norm → head.

The model is assembled from component *factories*: callables that take the model's
:class:`~gpt2kit.config.GPTConfig` and return a module. A class is such a factory, and so is what a
recipe's ``class_path`` + ``init_args`` becomes. With the defaults this is exactly GPT-2.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.nn import (
    MLP,
    Attention,
    Block,
    CausalSelfAttention,
    GeluMLP,
    Head,
    KVCache,
    LayerNorm,
    LearnedPosition,
    Norm,
    PositionEncoding,
    TiedLMHead,
    gpt2_init,
)
from gpt2kit.nn.init import grow_rows

AttentionFactory = Callable[[GPTConfig], Attention]
PositionFactory = Callable[[GPTConfig], PositionEncoding]
NormFactory = Callable[[GPTConfig], Norm]
MLPFactory = Callable[[GPTConfig], MLP]
HeadFactory = Callable[[GPTConfig], Head]


@dataclasses.dataclass(frozen=True)
class Components:
    """The model's swappable slots, each a factory ``(GPTConfig) -> module``; the defaults are GPT-2's.

    The one list of slots: the model, the LitModule's constructor, Hugging Face interop, resuming and
    ablation labels all read it from here (``dataclasses.fields(Components)``, :data:`SLOTS`).
    """

    attention: AttentionFactory = CausalSelfAttention
    """The attention of every block."""
    position: PositionFactory = LearnedPosition
    """The position encoding (given to every attention)."""
    norm: NormFactory = LayerNorm
    """The normalisation layer (before attention, before the MLP and at the end)."""
    mlp: MLPFactory = GeluMLP
    """The feed-forward sub-layer of every block."""
    head: HeadFactory = TiedLMHead
    """The output head."""

    def as_dict(self) -> dict[str, Callable[[GPTConfig], nn.Module]]:
        """``{slot: factory}`` (shallow: the factories themselves, not copies)."""
        return {slot: getattr(self, slot) for slot in SLOTS}


SLOTS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Components))
"""The slot names, in order: attention, position, norm, mlp, head."""

BASES: dict[str, type[nn.Module]] = {
    slot: typing.get_args(hint)[-1] for slot, hint in typing.get_type_hints(Components).items()
}
"""The base class each slot's factory builds (``Attention`` ...): what a spec of that slot is rebuilt as."""

GPT2 = Components()
"""GPT-2's components: causal self-attention, learned positions, LayerNorm, GELU MLP, tied head."""


class GPT(nn.Module):
    """A decoder-only transformer built from swappable parts."""

    def __init__(
        self,
        config: GPTConfig,
        attention: AttentionFactory = GPT2.attention,
        position: PositionFactory = GPT2.position,
        norm: NormFactory = GPT2.norm,
        mlp: MLPFactory = GPT2.mlp,
        head: HeadFactory = GPT2.head,
    ) -> None:
        """The slots' factories default to :data:`GPT2`'s; ``GPT(config, **components.as_dict())`` builds
        from a :class:`Components`."""
        super().__init__()
        self.config = config
        self.components = Components(attention, position, norm, mlp, head)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.position = position(config)
        limit = self.position.max_positions
        if limit is not None and limit < config.block_size:
            raise GPT2KitError(
                f"{type(self.position).__name__} covers {limit} positions but block_size={config.block_size}: "
                "lower block_size or pick a position encoding without a table (e.g. RotaryPosition)"
            )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(attention(config), mlp(config), norm(config), norm(config)) for _ in range(config.n_layer)
        )
        for block in self.blocks:  # e.g. ALiBi's bias needs an attention that can add one
            block.attn.check_position(self.position)
        self.ln_f = norm(config)
        self.head = head(config)
        gpt2_init(self, config.n_layer)

    def forward(
        self,
        idx: Tensor,
        *,
        pos: Tensor | None = None,
        valid: Tensor | None = None,
        cache: list[KVCache] | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Outputs of the head (logits (B, T, vocab) for a language model) for token ids (B, T).

        Args:
            idx: token ids (B, T).
            pos: absolute positions (B or 1, T); default: continue after what ``cache`` holds.
            valid: (B, T) bool, False on padding tokens.
            cache: one :class:`KVCache` per block (from :meth:`new_cache`) for incremental decoding.
            last_only: apply the head to the last position only, (B, 1, vocab): all that sampling
                needs, and for a long prompt most of the prefill's cost saved (vocab x C per position).
        """
        B, T = idx.shape
        if pos is None:
            start = cache[0].length if cache else 0
            limit = self.position.max_positions
            if limit is not None and start + T > limit:
                raise GPT2KitError(
                    f"sequence reaches position {start + T} but {type(self.position).__name__} covers "
                    f"{limit}: keep inputs within block_size={self.config.block_size} (crop the oldest tokens)"
                )
            pos = torch.arange(start, start + T, device=idx.device).unsqueeze(0)  # (1, T)
        x = self.drop(self.position.embed(self.wte(idx), pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, self.position, pos, cache[i] if cache else None, valid)
        if last_only:
            x, valid = x[:, -1:], None if valid is None else valid[:, -1:]
        return self.head(self.ln_f(x), self.wte, valid)

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary to ``vocab_size`` (e.g. after adding special tokens to the tokenizer).

        Existing rows are kept; new rows are drawn from N(0, 0.02) as GPT-2 initialises embeddings. A
        tied head reads ``wte`` and so stays tied; a head with its own weight resizes itself.
        """
        old = self.wte.weight
        if vocab_size < old.size(0):
            raise GPT2KitError(
                f"resize_token_embeddings({vocab_size}) would drop trained rows of the {old.size(0)}-token "
                "embedding: only growing is supported"
            )
        self.wte = nn.Embedding.from_pretrained(grow_rows(old, vocab_size), freeze=not old.requires_grad)
        self.head.resize_vocab(vocab_size)
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def decayed_parameter_names(self) -> set[str]:
        """The parameters AdamW decays: matrices, not biases, norms or embeddings (GPT-2's practice)."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return {n for n, p in self.named_parameters() if p.dim() >= 2 and id(p) not in embeddings}

    def new_cache(
        self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None
    ) -> list[KVCache]:
        """An empty KV cache per block, for up to ``max_len`` tokens (default: block_size)."""
        ref = self.wte.weight
        max_len = max_len or self.config.block_size
        return [b.attn.new_cache(batch_size, max_len, ref.device, dtype or ref.dtype) for b in self.blocks]

    def component(self, slot: str) -> nn.Module:
        """The (first) module a slot's factory built: ``blocks[0].attn``, ``position``, ``ln_f`` ..."""
        modules = {
            "attention": lambda: self.blocks[0].attn,
            "position": lambda: self.position,
            "norm": lambda: self.ln_f,
            "mlp": lambda: self.blocks[0].mlp,
            "head": lambda: self.head,
        }
        return modules[slot]()

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters, each shared tensor counted once (GPT-2 small: 124,439,808)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
