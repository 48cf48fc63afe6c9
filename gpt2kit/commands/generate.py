"""``python -m gpt2kit generate --ckpt CKPT --prompt TEXT``: sample text from a checkpoint, streamed."""

from __future__ import annotations

import dataclasses
import sys

from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.loaded import Dtype
from gpt2kit.errors import GPT2KitError


def generate_command(
    ckpt: str,
    prompt: str = "",
    prompt_file: str | None = None,
    num_samples: int = 1,
    sampling: SamplingConfig | None = None,
    device: str = "cpu",
    dtype: Dtype = "float32",
) -> None:
    """Sample text from a checkpoint, printing tokens as they are generated.

    Args:
        ckpt: path to a gpt2kit checkpoint (.ckpt), trained or from import-hf, or a hub name (hf:gpt2).
        prompt: text to continue; empty starts from the end-of-text token.
        prompt_file: a file of prompts (one per line, or .jsonl with {"prompt": ...}) instead of --prompt.
        num_samples: number of independent samples per prompt.
        sampling: the sampling options (--temperature, --top_k, ..., see docs/generation.md); a seed
            makes sample i use seed + i.
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        dtype: weight dtype; bfloat16 halves the bytes read per token (faster decoding), int8 (CPU)
            quarters them and is faster still, at a small cost in accuracy.
    """
    from gpt2kit.decoding import encode_prompt, load_for_inference, stream_text

    if num_samples < 1:
        raise GPT2KitError(f"num_samples={num_samples} must be >= 1")
    prompts = [prompt]
    if prompt_file is not None:
        from gpt2kit.data.prompts import read_prompts  # (the data package imports Lightning)

        prompts = read_prompts(prompt_file)
    loaded = load_for_inference(_local(ckpt), device, dtype)
    tok = loaded.require_tokenizer()
    cfg = loaded.sampling(sampling)
    seed = cfg.seed
    ids = [encode_prompt(tok, text) for text in prompts]  # every prompt is checked before sampling
    n = 0
    for i, (text, prompt_ids) in enumerate(zip(prompts, ids, strict=True)):
        for j in range(num_samples):
            if len(prompts) > 1:
                sys.stdout.write(f"--- prompt {i + 1}, sample {j + 1} ---\n")
            elif num_samples > 1:
                sys.stdout.write(f"--- sample {j + 1} ---\n")
            if seed is not None:
                cfg = dataclasses.replace(cfg, seed=seed + n)
            n += 1
            sys.stdout.write(text)
            for piece in stream_text(loaded.model, tok, prompt_ids, cfg):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")


def _local(ckpt: str) -> str:
    """A local checkpoint for ``ckpt``: itself, or the import of an ``hf:`` name (fetched once)."""
    from gpt2kit.interop.hub import resolve_checkpoint

    return resolve_checkpoint(ckpt)
