"""The DataModules: what every shard-backed one shares (:class:`ShardDataModule`), and pretraining text.

:class:`ShardDataModule` owns preparation — it resolves ``source``, prepares it once with the shared
pipeline (:func:`gpt2kit.data.prepare.prepare_shards`) and holds ``prepared``, ``tokenizer`` and
``vocab_size`` — and the loaders' plumbing. A subclass gives only its sample format: the
:class:`~gpt2kit.data.prepare.ShardFormat` that writes its shards, and how its loaders cut and batch
samples (:class:`TextDataModule` here; :class:`~gpt2kit.data.chat.ChatDataModule` for chat).

For text, training samples windows in a global order that depends on (seed, epoch) only — random, as nanoGPT
does, or aligned to document boundaries (the ``sampler`` option) — dealt across ranks and resumed mid-epoch
on any number of processes (:mod:`gpt2kit.data.sampler`); validation uses a fixed, evenly spaced set of
windows, so a validation loss is comparable across runs and checkpoints, and covered once in total
however many ranks share it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gpt2kit.corpora import cache_dir
from gpt2kit.data.cache import PreparedFolder
from gpt2kit.data.prepare import ShardFormat, prepare_shards
from gpt2kit.data.readers import ReadOptions, Source, TextSource
from gpt2kit.data.sampler import (
    PAD,
    EvalSampler,
    RandomWindows,
    ResumableDataLoader,
    TrainSampler,
    WindowSampler,
)
from gpt2kit.data.text import TextShards
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import CharTokenizer, Tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # a target that contributes no loss (torch's cross_entropy default)


class WindowDataset(Dataset):
    """Windows of ``block_size + 1`` tokens of a memmapped shard, split into input and target."""

    def __init__(
        self, path: Path, dtype: np.dtype, block_size: int, offsets: np.ndarray | None = None
    ) -> None:
        self.path, self.dtype, self.block_size = path, dtype, block_size
        n = len(np.memmap(path, dtype=dtype, mode="r"))
        self.n_offsets = n - block_size  # every start that leaves room for the shifted target
        self.offsets = offsets
        self._data: np.memmap | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.offsets) if self.offsets is not None else self.n_offsets

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == PAD:  # evens out the ranks' evaluation shards; counts for nothing
            return torch.zeros(self.block_size, dtype=torch.long), torch.full(
                (self.block_size,), IGNORE_INDEX
            )
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        start = int(self.offsets[i]) if self.offsets is not None else i
        chunk = torch.from_numpy(self._data[start : start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]  # (T,), (T,) target is the input shifted by one


class ShardDataModule(L.LightningDataModule):
    """What the shard-backed DataModules share: preparation, its tokenizer, settings, ranks and loaders.

    Subclasses give their sample format — :attr:`source_class` (which readers), :meth:`sample_format`
    (how documents become shards) — and their loaders; they may give batches a ``collate_fn``.
    """

    source_class: type[Source] = TextSource
    """How ``source`` is resolved: TextSource (documents) or ChatSource (conversations)."""

    def __init__(
        self,
        source: str | list[str],
        tokenizer: Tokenizer,
        block_size: int,
        batch_size: int,
        val_fraction: float,
        num_workers: int,
        seed: int,
        cache: str | None,
        cache_name: str,
    ) -> None:
        """``cache``: the folder for prepared shards; None: ``cache_name`` under the gpt2kit cache."""
        super().__init__()
        if block_size <= 0 or batch_size <= 0:
            raise GPT2KitError(f"block_size={block_size} and batch_size={batch_size} must be positive")
        self.source = [source] if isinstance(source, str) else list(source)
        if not self.source:
            raise GPT2KitError("source is an empty list: name at least one corpus or file")
        self._tokenizer = tokenizer  # as the recipe gave it; never changed (preparation trains a copy)
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.cache = Path(cache).expanduser() if cache else cache_dir() / cache_name
        self._prepared: PreparedFolder | None = None

    # -- the sample format: what subclasses give -----------------------------------------------------------
    def sample_format(self) -> ShardFormat:
        """How this DataModule's documents become shards."""
        raise NotImplementedError

    def read_options(self) -> ReadOptions:
        """Settings for the readers of ``source`` (a JSON field, the assistant of a two-agent corpus)."""
        return ReadOptions()

    # -- preparation ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.prepared()

    def sources(self) -> list[Source]:
        """``source`` resolved into files and their readers."""
        options = self.read_options()
        return [self.source_class.from_spec(spec, options) for spec in self.source]

    def prepared(self, progress: bool | None = None) -> Any:
        """The prepared data, preparing it first if needed (idempotent; cheap when cached).

        ``progress``: progress bars on stderr; None shows them when stderr is a terminal.
        """
        if self._prepared is None:
            self._prepared = prepare_shards(
                self.sample_format(), self.sources(), self._tokenizer, self.cache, self.val_fraction, progress
            )
        return self._prepared

    def summary(self) -> str:
        """One line on the prepared data (what ``python -m gpt2kit prepare`` prints)."""
        prepared = self.prepared()
        return f"{prepared.path}: {self.sample_format().summary(prepared.meta)}"

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was prepared with (trained, extended): the model's vocabulary."""
        return self.prepared().tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _ranks(self) -> tuple[int, int]:
        """(world size, this process's rank): how many share the data, and which share is this one's."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _collate(self) -> Any:
        """The loaders' ``collate_fn`` (None: PyTorch's default)."""
        return None

    def _loader(self, dataset: Dataset, cls: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        return cls(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # its own generator (worker seeds): iterating never draws from the global RNG, so a resumed
            # run, which iterates its loaders a different number of times, keeps the same global RNG stream
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def _train_loader(self, dataset: Dataset, sampler: TrainSampler, items: str, more: str) -> DataLoader:
        """A training loader that resumes mid-epoch, on any world size; refuses an epoch shorter than one batch per rank."""
        if len(sampler) < self.batch_size:
            raise GPT2KitError(
                f"an epoch has {len(sampler)} training {items} per rank, fewer than batch_size={self.batch_size}: "
                f"lower batch_size or the number of devices, or add {more}"
            )
        loader = self._loader(dataset, ResumableDataLoader, sampler=sampler, drop_last=True)
        trainer = self.trainer
        if trainer is not None:  # resume after the batches Lightning trained on, not those it prefetched
            loader.batches_done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
            loader.trained = sampler.trained = lambda: (
                trainer.fit_loop.epoch_loop.batch_progress.total.processed
            )
            loader.accumulate = trainer.accumulate_grad_batches
            if trainer.fit_loop.restarting:
                # Resuming mid-epoch: Lightning sizes the epoch (len) before it hands back the position, and
                # counts on from its restored count; until then, allow for a whole epoch after that count.
                sampler.base_batches = loader.batches_done()
        return loader


class TextDataModule(ShardDataModule):
    """Plain-text pretraining data: a named corpus or local files, tokenized once and cached."""

    def __init__(
        self,
        source: str | list[str] = "tinyshakespeare",
        tokenizer: Tokenizer | None = None,
        block_size: int = 64,
        batch_size: int = 12,
        val_fraction: float = 0.1,
        val_max_windows: int | None = None,
        num_workers: int = 0,
        seed: int = 1337,
        cache: str | None = None,
        field: str = "text",
        sampler: WindowSampler | None = None,
    ) -> None:
        """
        Args:
            source: a named corpus (tinyshakespeare, gutenberg-english, chinese-poetry, ...) or a file, folder
                or glob of UTF-8 text files (each one document), JSON-lines files (``*.jsonl``, one
                document per line) and Parquet files (``*.parquet``, one document per row); a hub dataset's
                files (``hf:datasets/ORG/NAME/PATTERN``, fetched when the data is prepared); or a list of these.
            tokenizer: the tokenizer to train on the corpus or use as is (default: char). It is not changed:
                an untrained one is copied and the copy trained (see ``tokenizer`` after preparation).
            block_size: tokens per training window; recipes link it to model.arch.block_size.
            batch_size: windows per batch (per device).
            val_fraction: share held out for validation: every 1/val_fraction-th document, or the end of
                each document when there are few (see :mod:`gpt2kit.data.prepare`).
            val_max_windows: cap on the number of fixed validation windows (evenly spaced); None: all.
            num_workers: DataLoader worker processes.
            seed: seed of the random training windows (a pure function of seed, epoch and sample index).
            cache: folder for prepared shards (default: $GPT2KIT_CACHE/prepared).
            field: the key of each JSON line (``*.jsonl``) or the column (``*.parquet``) that holds its text.
            sampler: which training windows an epoch holds, in which order (registered kind ``sampler``):
                ``random`` (default: start anywhere, nanoGPT) or ``bos_aligned`` (start at document
                boundaries). Either way the position in the data survives a change of world size.
        """
        tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        super().__init__(
            source, tokenizer, block_size, batch_size, val_fraction, num_workers, seed, cache, "prepared"
        )
        self.val_max_windows = val_max_windows
        self.field = field
        self.sampler = sampler if sampler is not None else RandomWindows()

    def sample_format(self) -> TextShards:
        return TextShards()

    def read_options(self) -> ReadOptions:
        return ReadOptions(field=self.field)

    @property
    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes of text per validation token: turns a loss per token into bits per byte."""
        meta = self.prepared().meta
        return meta["val_bytes"] / meta["val_tokens"]

    # -- loaders ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        prepared = self.prepared()
        for split in ("train", "val"):
            n = prepared.meta[f"{split}_tokens"]
            if n <= self.block_size:
                raise GPT2KitError(
                    f"the {split} split has {n} tokens, not more than block_size={self.block_size}: "
                    "lower block_size, raise val_fraction or add text"
                )

    def _dataset(self, split: str, offsets: np.ndarray | None = None) -> WindowDataset:
        prepared = self.prepared()
        return WindowDataset(prepared.path / f"{split}.bin", prepared.dtype, self.block_size, offsets)

    def val_offsets(self) -> np.ndarray:
        n = self.prepared().meta["val_tokens"]
        offsets = np.arange(0, n - self.block_size, self.block_size)  # non-overlapping windows
        if self.val_max_windows is not None and len(offsets) > self.val_max_windows:
            keep = np.linspace(0, len(offsets) - 1, self.val_max_windows).round().astype(int)
            offsets = offsets[keep]
        return offsets

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        world, rank = self._ranks()
        prepared = self.prepared()
        order = self.sampler.order(prepared.tokens("train"), self.block_size, prepared.tokenizer.eot_id)
        sampler = TrainSampler(dataset, order, seed=self.seed, num_replicas=world, rank=rank)
        return self._train_loader(dataset, sampler, "windows", "text")

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset("val", self.val_offsets())
        world, rank = self._ranks()
        return self._loader(dataset, sampler=EvalSampler(dataset, num_replicas=world, rank=rank))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
