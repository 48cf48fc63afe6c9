"""Any gpt2kit tokenizer as a ``tokenizers.Tokenizer`` with the same ids: what a ``tokenizer.json`` holds.

gpt2kit's own serialisation (``Tokenizer.to_json``) is another format; wherever gpt2kit writes a file
named ``tokenizer.json`` it is this one, so that ``tokenizers.Tokenizer.from_file`` and transformers
load it.
"""

from __future__ import annotations

from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers.base import Tokenizer

HF_TOKENIZER_FILE = "tokenizer.json"
"""The Hugging Face tokenizer file name."""


def _inner(tok: Tokenizer) -> Tokenizer:
    """The tokenizer that does the work (a CheckpointTokenizer stands for the one it holds)."""
    return getattr(tok, "inner", tok)


def backend_for(tok: Tokenizer) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes and decodes exactly as ``tok``; refuses one it cannot build."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    from gpt2kit.tokenizers.bpe import ByteLevelBPE
    from gpt2kit.tokenizers.char import CharTokenizer
    from gpt2kit.tokenizers.hf import HFTokenizer

    tok = _inner(tok)
    specials = list(tok.special_tokens)
    if isinstance(tok, HFTokenizer):
        return Backend.from_str(tok._tok.to_str())
    if isinstance(tok, ByteLevelBPE):
        tokens = tok._loaded()
        vocab = {t: i for i, t in enumerate(tokens)}  # special tokens too: added tokens then keep their ids
        merges = [tuple(m.split(" ", 1)) for m in tok.merges]
        backend = Backend(models.BPE(vocab=vocab, merges=merges))
        # GPT-2's regex split (use_regex) over the byte alphabet, as gpt2kit's tiktoken encoder does
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
    elif isinstance(tok, CharTokenizer):
        if not tok.chars:
            raise GPT2KitError("the char tokenizer is not trained: there is no vocabulary to export")
        backend = Backend(models.WordLevel(vocab={c: i for i, c in enumerate(tok.itos)}, unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.Split(
            Regex(r"[\s\S]"), behavior="isolated"
        )  # one per character
        backend.decoder = decoders.Fuse()  # characters join with nothing between them
    else:
        raise GPT2KitError(
            f"cannot write the {type(tok).__name__} tokenizer as a Hugging Face tokenizer.json (only byte-level "
            "BPE, char and Hugging Face tokenizers can be): the exported folder would have no usable tokenizer; "
            "export a model trained with one of those"
        )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for t in specials:  # the added tokens take the next free ids: they must be gpt2kit's
        if backend.token_to_id(t) != tok.token_id(t):
            raise GPT2KitError(
                f"special token {t!r} would get id {backend.token_to_id(t)} in tokenizer.json but has "
                f"{tok.token_id(t)} in gpt2kit: this {type(tok).__name__} cannot be exported exactly"
            )
    return backend


def save_tokenizer_json(tok: Tokenizer, path: Any) -> bool:
    """Write ``tok`` as a Hugging Face ``tokenizer.json`` at ``path``; False (nothing written) if it cannot be."""
    try:
        backend = backend_for(tok)
    except GPT2KitError:
        return False
    backend.save(str(path))
    return True
