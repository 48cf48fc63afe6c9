"""Pretrained GPT-2 by name: ``hf:gpt2``, ``hf:openai-community/gpt2-medium``, ``hf:ORG/NAME@REVISION``.

Wherever a checkpoint path is accepted (``model.init_from``, ``generate --ckpt``, ``chat``, ``evaluate``,
``import-hf``), a name with the ``hf:`` prefix is fetched from the Hugging Face Hub with
``huggingface_hub.snapshot_download`` — only the files gpt2kit reads (config, safetensors weights,
tokenizer files) — into the hub's own cache (``HF_HOME``, ``HF_HUB_CACHE``), and imported once with the
safe import of :mod:`gpt2kit.interop.hf` into a gpt2kit checkpoint kept in gpt2kit's cache, keyed by the
snapshot's commit. With ``HF_HUB_OFFLINE=1`` only the cache is read.

GPT-2's short names (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) are OpenAI's repositories on
the hub, ``openai-community/...``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from gpt2kit.data.hub import hub_cache, offline
from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

PREFIX = "hf:"
"""What marks a Hugging Face Hub name where a checkpoint path is expected."""

ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
"""Short names and the repositories they stand for."""

FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "gpt2kit_tokenizer.json",
]
"""The files of a repository that gpt2kit reads (no TensorFlow, Flax, ONNX or Rust weights)."""

_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def is_hub_name(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is an ``hf:`` name rather than a file."""
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(name: str) -> tuple[str, str | None]:
    """``hf:ORG/NAME@REV`` → (repository id, revision or None); short names map to their repositories."""
    spec = name.removeprefix(PREFIX)
    repo, _, revision = spec.partition("@")
    if not _NAME.fullmatch(repo) or (revision == "" and "@" in spec):
        raise GPT2KitError(
            f"'{name}' is not a Hugging Face model name: write hf:NAME, hf:ORG/NAME or hf:ORG/NAME@REVISION "
            "(e.g. hf:gpt2, hf:openai-community/gpt2-medium@main)"
        )
    return ALIASES.get(repo, repo), revision or None


def snapshot(name: str) -> Path:
    """The local folder of a hub model (``hf:...``), downloaded into the hub's cache if it is not there."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GPT2KitError(
            f"{name} needs huggingface_hub to fetch the model: pip install 'gpt2kit[hf]' "
            "(or download the folder and give its path)"
        ) from None
    repo, revision = parse(name)
    cache, is_offline = hub_cache(), offline()
    try:
        folder = Path(
            snapshot_download(
                repo, revision=revision, cache_dir=cache, allow_patterns=FILES, local_files_only=is_offline
            )
        )
        if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
            # an old repository with PyTorch pickles only (read with weights_only)
            folder = Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    cache_dir=cache,
                    allow_patterns=["pytorch_model.bin"],
                    local_files_only=is_offline,
                )
            )
    except Exception as exc:  # huggingface_hub's offline, not-found and connection errors
        at = f"{repo} --revision {revision}" if revision else repo
        why = (
            "HF_HUB_OFFLINE is set and it is not in the cache"
            if is_offline
            else f"it could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        )
        raise GPT2KitError(
            f"{name}: {why} ({cache}): download it once where there is a network "
            f"(`hf download {at}`, with the same HF_HOME), or point at a local Hugging Face "
            "folder or .ckpt instead"
        ) from None
    return folder


def resolve_checkpoint(path: str) -> str:
    """A local gpt2kit checkpoint for ``path``: ``path`` itself, or for an ``hf:`` name the model imported.

    The import is made once per snapshot commit and kept in gpt2kit's cache
    (``$GPT2KIT_CACHE/hf/ORG--NAME/COMMIT.ckpt``), so a pinned revision always gives the same file.
    """
    if not is_hub_name(path):
        return path
    from gpt2kit.corpora import cache_dir
    from gpt2kit.interop.hf import import_hf

    folder = snapshot(path)
    repo, _ = parse(path)
    out = cache_dir() / "hf" / repo.replace("/", "--") / f"{folder.name}.ckpt"
    if not out.is_file():
        log.info("importing %s (%s) into %s", path, folder, out)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            import_hf(folder, tmp)
            os.replace(tmp, out)  # atomic: another process sees the whole file or none
        finally:
            tmp.unlink(missing_ok=True)
    return str(out)


def resolve_folder(path: str) -> str:
    """A local Hugging Face folder for ``path``: ``path`` itself, or an ``hf:`` name's snapshot."""
    return str(snapshot(path)) if is_hub_name(path) else path
