"""Which windows each rank reads, in which order — as pure functions, so that a run can resume exactly.

Training windows are a pure function of ``(seed, epoch, global sample index)``: the i-th sample of an
epoch starts at ``hash(seed, epoch, i) mod n_offsets`` (random windows with replacement, as nanoGPT,
but with no generator state to save). Rank ``r`` of ``W`` reads the global samples ``r, r + W, r + 2W
...``, so the ``W`` per-rank batches of one step together hold exactly the samples of one batch of a
single-process run with ``W`` times the batch size.

Resuming is Lightning's stateful-dataloader protocol: the training loader has ``state_dict`` /
``load_state_dict``; Lightning stores the state with the loops in every checkpoint and hands it back on
``fit(ckpt_path=...)`` before it iterates, and the sampler continues from the first sample that was not
trained on. "Trained on" comes from Lightning's own progress counter (batches processed this epoch),
not from what the loader has handed out, which runs ahead by the batches Lightning and the workers
prefetch.

Both samplers subclass :class:`~torch.utils.data.DistributedSampler` so that Lightning, under DDP or
FSDP, keeps them instead of substituting its own (which would shard by its own seed and, for
evaluation, repeat windows to even out the ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

PAD = -1
"""Index an evaluation sampler yields to even out the ranks; the dataset turns it into a window with no targets."""

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_MASK = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wraps mod 2^64): a bijection that scatters neighbouring counters."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def window_starts(seed: int, epoch: int, index: np.ndarray, n_offsets: int) -> np.ndarray:
    """Start offsets of the global samples ``index`` of an epoch: uniform in [0, n_offsets), stateless."""
    key = _mix(np.array([(seed * _GOLDEN + epoch) & _MASK], dtype=np.uint64))  # (1,)
    counters = key + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)  # wraps, by design
    return (_mix(counters) % np.uint64(n_offsets)).astype(np.int64)


class RandomWindowSampler(DistributedSampler):
    """Training windows: this rank's share of an epoch of random window starts, resumable mid-epoch.

    Yields start offsets (the dataset is indexed by offset). An epoch has ``samples_per_epoch`` global
    samples, ``samples_per_epoch // num_replicas`` per rank.
    """

    def __init__(
        self,
        dataset: Dataset,
        n_offsets: int,
        samples_per_epoch: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.n_offsets = n_offsets
        self.samples_per_epoch = samples_per_epoch
        self.num_samples = samples_per_epoch // num_replicas  # per rank
        self.total_size = self.num_samples * num_replicas
        self.start = 0  # first local sample of this epoch not yet trained on

    def __len__(self) -> int:
        return self.num_samples  # always the whole epoch: Lightning counts resumed batches itself

    def __iter__(self) -> Iterator[int]:
        start, chunk = self.start, 4096
        for lo in range(start, self.num_samples, chunk):
            local = np.arange(lo, min(lo + chunk, self.num_samples))
            yield from window_starts(
                self.seed, self.epoch, local * self.num_replicas + self.rank, self.n_offsets
            ).tolist()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts from its beginning; the same one keeps a resumed start
            self.epoch, self.start = epoch, 0

    # -- resuming ---------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int, batch_size: int) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "samples_done": batches_done * batch_size * self.num_replicas,  # global, so W may change
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        # ceil: with a different number of ranks, at most W - 1 samples are skipped, none repeated
        self.start = math.ceil(int(state["samples_done"]) / self.num_replicas)


class EvalSampler(DistributedSampler):
    """Evaluation windows: rank ``r`` of ``W`` takes items ``r, r + W, ...``; together, every item once.

    Ranks must run the same number of batches (FSDP gathers weights at every forward), so the shorter
    shards are padded with :data:`PAD`, which the dataset serves as a window without targets.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.n = len(dataset)  # type: ignore[arg-type]
        self.num_samples = math.ceil(self.n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        for i in range(self.rank, self.total_size, self.num_replicas):
            yield i if i < self.n else PAD


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`RandomWindowSampler` that Lightning can checkpoint mid-epoch.

    ``batches_done`` returns how many batches of the current epoch were trained on; the DataModule
    points it at Lightning's progress counter when it builds the loader for a Trainer.
    """

    batches_done: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, Any]:
        assert self.batches_done is not None, "built outside a Trainer: nothing tracks the batches trained on"
        return self.sampler.state_dict(self.batches_done(), self.batch_size)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
