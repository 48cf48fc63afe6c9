"""A hand-built Hugging Face hub cache, as `snapshot_download` leaves it, for tests with no network.

    HF_HOME/hub/models--openai-community--gpt2/refs/main             the commit
    HF_HOME/hub/models--openai-community--gpt2/snapshots/COMMIT/      config.json, model.safetensors,
                                                                      vocab.json, merges.txt

The weights are a tiny random GPT-2 (2 layers of width 32, 64 positions); the vocabulary is the real
one (GPT2KIT_DATA/gpt2-bpe), so the tokenizer is GPT-2's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)
"""The hub model's sizes, for recipe overrides (--model.arch.*)."""


def build_hub_cache(
    hf_home: Path,
    shared_data: Path,
    repo: str = "openai-community/gpt2",
    seed: int = 0,
    sizes: dict | None = None,
):
    """Write a random GPT-2 (``sizes``, default :data:`TINY`) into ``hf_home``'s hub cache under ``repo``
    (revision main); returns the model."""
    import transformers

    root = Path(hf_home) / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**(sizes or TINY), vocab_size=50257, initializer_range=0.1)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(snap)
    shutil.copy(shared_data / "gpt2-bpe" / "encoder.json", snap / "vocab.json")
    shutil.copy(shared_data / "gpt2-bpe" / "vocab.bpe", snap / "merges.txt")
    return model


def tiny_overrides() -> list[str]:
    """Dotted overrides that make a GPT-2 small recipe the hub cache's tiny model."""
    return [
        f"--model.arch.n_layer={TINY['n_layer']}",
        f"--model.arch.n_head={TINY['n_head']}",
        f"--model.arch.n_embd={TINY['n_embd']}",
        f"--model.arch.block_size={TINY['n_positions']}",
    ]


def build_dataset_cache(hf_home: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Write ``files`` (repository path → content) into ``hf_home``'s hub cache as the dataset ``repo`` at
    revision main, as `snapshot_download` leaves it: each file a relative link to a blob named by its
    sha256 (LFS files are). Returns the snapshot folder."""
    import hashlib
    import os

    root = Path(hf_home) / "hub" / f"datasets--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for path, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def parquet_bytes(columns: dict[str, list], row_group_size: int | None = None) -> bytes:
    """A Parquet file of ``columns`` (name → values), as bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, row_group_size=row_group_size)
    return out.getvalue()
