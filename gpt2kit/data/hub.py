"""Corpora from the Hugging Face Hub by name: ``hf:datasets/ORG/NAME[@REVISION]/PATTERN``.

Wherever a data source is accepted (a DataModule's ``source``, ``prepare``), a name with the
``hf:datasets/`` prefix is a dataset repository on the hub and the files of it that ``PATTERN`` matches
(a glob over the repository's paths, as ``huggingface_hub`` matches ``allow_patterns``: ``*`` also
crosses ``/``), e.g. FineWeb-Edu's 10B-token sample::

    hf:datasets/HuggingFaceFW/fineweb-edu/sample/10BT/*.parquet

Only the matching files are fetched, with ``huggingface_hub.snapshot_download`` (resumable: an
interrupted download goes on where it stopped) into the hub's own cache (``HF_HOME``,
``HF_HUB_CACHE``), shared with every other hub client. With ``HF_HUB_OFFLINE=1`` only the cache is
read. The files are then read by the reader of their suffix (:mod:`gpt2kit.data.readers`: Parquet,
JSON lines, text), in the order of their paths in the repository.

Nothing is fetched when a config is parsed (``--print_config``, ``--help``): a source is resolved when
the data is prepared. A cached file's identity is the hub blob it links to (for Parquet and other LFS
files, its sha256), so a prepared dataset is found again without reading 30 GB to hash it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

PREFIX = "hf:datasets/"
"""What marks a hub dataset where a data source is expected."""

_SPEC = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/\s]+))?(?:/(?P<pattern>.+))?")
_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
"""A blob of the hub cache is named by its content: git's sha1 (small files) or sha256 (LFS files)."""


@dataclass(frozen=True)
class HubDataset:
    """A parsed ``hf:datasets/`` name: which repository, at which revision, which of its files."""

    spec: str
    repo: str
    revision: str | None
    pattern: str

    @property
    def at(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo

    def download_command(self) -> str:
        """The command that puts these files into the hub cache (where there is a network)."""
        revision = f" --revision {shlex.quote(self.revision)}" if self.revision else ""
        return f"hf download {self.repo} --repo-type dataset{revision} --include {shlex.quote(self.pattern)}"


def is_hub_dataset(spec: str) -> bool:
    """Whether a data source names a hub dataset rather than a corpus or local files."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> HubDataset:
    """``hf:datasets/ORG/NAME[@REVISION]/PATTERN`` → its parts; a name without a file pattern is refused
    (a web-scale repository holds terabytes: say which files)."""
    m = _SPEC.fullmatch(spec.removeprefix(PREFIX))
    if m is None:
        raise GPT2KitError(
            f"'{spec}' is not a hub dataset name: write hf:datasets/ORG/NAME[@REVISION]/PATTERN "
            "(e.g. hf:datasets/HuggingFaceFW/fineweb-edu/sample/10BT/*.parquet)"
        )
    if not m["pattern"]:
        raise GPT2KitError(
            f"'{spec}' names no files: add the pattern of the files to read after the repository, e.g. "
            f"{spec.rstrip('/')}/sample/10BT/*.parquet for one subset, or {spec.rstrip('/')}/**.parquet for "
            "every Parquet file of the repository"
        )
    pattern = m["pattern"] + ("*" if m["pattern"].endswith("/") else "")  # a folder: everything in it
    return HubDataset(spec, m["repo"], m["revision"], pattern)


def hub_cache() -> Path:
    """The hub's cache folder, read from the environment now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks to read only the cache."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def matching(folder: Path, pattern: str) -> list[Path]:
    """The files under a snapshot folder whose repository paths match ``pattern``, sorted by path."""
    from huggingface_hub.utils import filter_repo_objects

    if not folder.is_dir():
        return []
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [folder / p for p in filter_repo_objects(paths, allow_patterns=[pattern])]


def fetch(spec: str) -> list[Path]:
    """The local files of a hub dataset name, downloading the missing ones into the hub's cache."""
    dataset = parse(spec)
    try:
        from huggingface_hub import errors, snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise GPT2KitError(
            f"{spec} needs huggingface_hub to fetch the dataset: pip install 'gpt2kit[hf]' "
            "(or download the files and give their path or glob)"
        ) from None
    cache, is_offline = hub_cache(), offline()
    try:
        folder = Path(
            snapshot_download(
                dataset.repo,
                repo_type="dataset",
                revision=dataset.revision,
                allow_patterns=[dataset.pattern],
                cache_dir=cache,
                local_files_only=is_offline,
            )
        )
    except GatedRepoError:
        raise GPT2KitError(
            f"{spec}: the dataset {dataset.repo} is gated: accept its terms on "
            f"https://huggingface.co/datasets/{dataset.repo} and log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise GPT2KitError(
            f"{spec}: there is no dataset repository {dataset.repo} on the hub (or it is private: log in "
            "with `hf auth login` or set HF_TOKEN); check the name on https://huggingface.co/datasets"
        ) from None
    except RevisionNotFoundError:
        raise GPT2KitError(
            f"{spec}: the dataset {dataset.repo} has no revision '{dataset.revision}': give a branch, tag or "
            "commit of the repository"
        ) from None
    except Exception as exc:  # huggingface_hub's offline, cache-miss and connection errors
        incomplete = getattr(errors, "IncompleteSnapshotError", ())  # recent huggingface_hub (2.x) knows
        if isinstance(exc, incomplete):
            raise GPT2KitError(
                f"{spec}: the hub cache ({cache}) holds only part of its files (an interrupted download) and the "
                f"hub {'is off (HF_HUB_OFFLINE)' if is_offline else 'cannot be reached'}: finish the download "
                f"where there is a network (`{dataset.download_command()}`: it resumes), then run again"
            ) from None
        raise GPT2KitError(_not_fetched(dataset, cache, is_offline, exc)) from None
    files = matching(folder, dataset.pattern)
    if not files:
        if is_offline:
            raise GPT2KitError(_not_fetched(dataset, cache, is_offline, None))
        raise GPT2KitError(
            f"{spec}: no file of the dataset {dataset.at} matches '{dataset.pattern}': compare the pattern "
            f"with the repository's files (https://huggingface.co/datasets/{dataset.repo}/tree/"
            f"{dataset.revision or 'main'}); * matches across folders, e.g. sample/10BT/*.parquet"
        )
    log.info("%s: %d file(s) in %s", spec, len(files), folder)
    return files


def _not_fetched(dataset: HubDataset, cache: Path, is_offline: bool, exc: Exception | None) -> str:
    why = (
        "HF_HUB_OFFLINE is set and its files are not in the hub cache"
        if is_offline
        else f"it could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    )
    return (
        f"{dataset.spec}: {why} ({cache}): download it once where there is a network "
        f"(`{dataset.download_command()}`, with the same HF_HOME), or give local files instead"
    )


def blob_digest(path: Path) -> str | None:
    """The content hash a hub-cache file is stored under (its blob's name), or None for other files."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _BLOB.fullmatch(target.name):
        return target.name
    return None
