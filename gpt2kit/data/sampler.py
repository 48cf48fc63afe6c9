"""Which windows each rank reads, in which order — so that a run resumes exactly, on any number of processes.

Three parts, each a pure function of what it is given:

1. **The global order of an epoch** (:class:`EpochOrder`): the start offset of the i-th training window
   of epoch ``e`` is a function of ``(seed, e, i)`` only — never of the number of processes. A
   :class:`WindowSampler` component (registered kind ``sampler``, chosen in YAML with
   ``data.init_args.sampler``) builds it from the training tokens: :class:`RandomWindows` (nanoGPT's
   random windows, the default) or :class:`BOSAlignedWindows` (every window starts at a document
   boundary, as nanochat and modded-nanogpt do).
2. **Dealing** (:class:`TrainSampler`): each optimizer micro-step consumes the next ``W × B`` windows of
   that order (``W`` processes, ``B`` windows per process and batch), rank ``r`` taking every ``W``-th
   from ``r``. So the ``W`` per-rank batches of one step hold exactly the windows of one batch of a
   single process with ``W`` times the batch size; with gradient accumulation ``A``, an optimizer step
   consumes ``W × B × A``.
3. **The position** (Lightning's stateful-dataloader protocol): the training loader's ``state_dict`` is
   the number of windows of the epoch consumed by *all* ranks together (``samples_done``, the same on
   every rank), with the epoch and what defines the order. Lightning stores it with the loops in every
   checkpoint and hands it back on ``fit(ckpt_path=...)``; dealing restarts *from that position*, so a
   run resumed on another number of processes continues with exactly the windows it had not trained on
   — none repeated, none skipped. "Trained on" comes from Lightning's own progress counter (batches
   processed this epoch), not from what the loader has handed out, which runs ahead by the batches
   Lightning and the workers prefetch.

Resuming on ``W'`` processes with per-process batch ``B'``: steps then consume ``W' × B' × A'`` windows
each (the global batch changes with the world size unless ``data.batch_size`` or
``trainer.accumulate_grad_batches`` keeps it). Lightning counts the batches of the epoch per rank and
keeps counting from the saved count; the loader's length follows (``saved count + batches left``), so
the epoch ends where the windows do. The one position a new world cannot serve: Lightning steps the
optimizer when its count is a multiple of ``A'``, so a saved count that is not (a 4-process run killed at
step 5, resumed on 2 processes with ``accumulate_grad_batches=2``) would make the first optimizer step
a partial one — refused with one line (:meth:`TrainSampler.load_state_dict`). The part of an epoch
smaller than one global batch is dropped (``drop_last``), as in an uninterrupted run.

Both samplers subclass :class:`~torch.utils.data.DistributedSampler` so that Lightning, under DDP or
FSDP, keeps them instead of substituting its own (which would shard by its own seed and, for
evaluation, repeat windows to even out the ranks).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import Specified

log = logging.getLogger(__name__)

PAD = -1
"""Index an evaluation sampler yields to even out the ranks; the dataset turns it into a window with no targets."""

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_MASK = (1 << 64) - 1
_SCAN = 1 << 26  # tokens read at a time when looking for document boundaries: flat memory on any corpus


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


# -- 1. the global order of an epoch -----------------------------------------------------------------------
class EpochOrder:
    """The items of every epoch in their global order: ``items(seed, epoch, index)``, pure.

    ``samples_per_epoch`` items per epoch (all ranks together); ``name`` says which order it is, so that a
    saved position is never read in another order.
    """

    name = "order"
    samples_per_epoch: int

    def items(self, seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
        """The dataset indices (for windows: start offsets) of the global samples ``index`` of ``epoch``."""
        raise NotImplementedError


class UniformOrder(EpochOrder):
    """Every sample drawn uniformly from ``[0, n)`` with replacement (:func:`window_starts`)."""

    name = "random"

    def __init__(self, n: int, samples_per_epoch: int) -> None:
        self.n, self.samples_per_epoch = n, samples_per_epoch

    def items(self, seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
        return window_starts(seed, epoch, index, self.n)


class PermutedOrder(EpochOrder):
    """``table`` (default ``0 .. n-1``), each entry once per epoch, in a permutation drawn from (seed, epoch)."""

    name = "permuted"

    def __init__(self, n: int, table: np.ndarray | None = None, name: str | None = None) -> None:
        self.samples_per_epoch, self.table = n, table
        if name is not None:
            self.name = name
        self._cached: tuple[tuple[int, int], np.ndarray] | None = None

    def items(self, seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
        if self._cached is None or self._cached[0] != (seed, epoch):
            self._cached = (
                (seed, epoch),
                np.random.default_rng([seed, epoch]).permutation(self.samples_per_epoch),
            )
        picked = self._cached[1][index]
        return picked if self.table is None else self.table[picked]


class WindowSampler(Specified):
    """Base class of the ``sampler`` components: which training windows an epoch holds, in which order.

    A subclass turns the training tokens into an :class:`EpochOrder` of window start offsets
    (:meth:`order`); dealing them to ranks and resuming is the same for all (:class:`TrainSampler`).
    """

    def order(self, tokens: np.ndarray, block_size: int, eot_id: int | None) -> EpochOrder:
        """The epoch order of windows of ``block_size + 1`` tokens over ``tokens`` (a memmap).

        ``eot_id``: the token that separates documents in the shards (None: the tokenizer has none).
        """
        raise NotImplementedError


SAMPLER = add_kind("sampler", WindowSampler)


@SAMPLER.register("random")
class RandomWindows(WindowSampler):
    """Windows that start anywhere, drawn uniformly with replacement (nanoGPT); an epoch is tokens / block_size."""

    def order(self, tokens: np.ndarray, block_size: int, eot_id: int | None) -> EpochOrder:
        n_offsets = len(tokens) - block_size  # every start that leaves room for the shifted target
        return UniformOrder(n_offsets, max(1, n_offsets // block_size))


@SAMPLER.register("bos_aligned")
class BOSAlignedWindows(WindowSampler):
    """Every window starts at a document boundary (nanochat, modded-nanogpt); each once per epoch, shuffled.

    gpt2kit's text shards put the end-of-text token between documents; a window starts at that token
    (the BOS of the document after it: the model learns to begin a document) or at token 0 for the
    first document. The windows are laid out once, left to right: each starts at the first boundary at
    or after the end of the previous window's input, and runs on across the boundaries it meets. So no
    token is an input twice in an epoch, and the rest of a document longer than a window is not
    trained on (the cropping nanochat and modded-nanogpt do). An epoch is every such window once, in a
    permutation drawn from (seed, epoch).
    """

    def order(self, tokens: np.ndarray, block_size: int, eot_id: int | None) -> EpochOrder:
        if eot_id is None:
            raise GPT2KitError(
                "sampler bos_aligned needs documents separated by an end-of-text token, and this data's "
                "tokenizer has none: add '<|endoftext|>' to its special_tokens, or use sampler random"
            )
        began = time.perf_counter()
        starts = document_starts(tokens, eot_id)
        table = chain_windows(starts, block_size, len(tokens))
        if len(table) == 0:
            raise GPT2KitError(
                f"sampler bos_aligned finds no window of block_size={block_size} + 1 tokens that starts at a "
                f"document boundary in {len(tokens):,} training tokens: lower block_size or add text"
            )
        log.info(
            "bos_aligned: %d windows at %d document boundaries (%.1f s)",
            len(table),
            len(starts),
            time.perf_counter() - began,
        )
        return PermutedOrder(len(table), table, name="bos_aligned")


def document_starts(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """Offsets where documents start: 0 and every end-of-text token (read in chunks: flat memory)."""
    found = [np.zeros(1, dtype=np.int64)]
    for lo in range(0, len(tokens), _SCAN):
        hits = np.flatnonzero(np.asarray(tokens[lo : lo + _SCAN]) == eot_id).astype(np.int64) + lo
        found.append(hits[hits > 0])  # 0 is already a start
    return np.concatenate(found)


def chain_windows(starts: np.ndarray, block_size: int, n_tokens: int) -> np.ndarray:
    """Window starts taken left to right: from each start, the first boundary at or after ``start + block_size``.

    A window is ``block_size + 1`` tokens (input and shifted target); its last token, a target only, may
    be the next window's first input. Windows that would run past the end are left out.
    """
    usable = starts[starts + block_size + 1 <= n_tokens]
    if len(usable) == 0:
        return usable
    nxt = np.searchsorted(usable, usable + block_size).tolist()  # the index each window's successor has
    out, i, n = [], 0, len(usable)
    while i < n:
        out.append(i)
        i = nxt[i]
    return usable[np.asarray(out, dtype=np.int64)]


# -- 2. dealing, and 3. the position -----------------------------------------------------------------------
class TrainSampler(DistributedSampler):
    """Training items: this rank's share of the rest of an epoch of ``order``, from the saved position on.

    Yields dataset indices (for windows: start offsets). ``position`` windows of the epoch are consumed
    (by all ranks); rank ``r`` of ``W`` reads the global samples ``position + r, position + r + W, ...``.
    """

    def __init__(
        self,
        dataset: Dataset,
        order: EpochOrder,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.order = order
        self.samples_per_epoch = order.samples_per_epoch
        self.position = 0  # global samples of this epoch consumed before this iteration starts
        self.base_batches = 0  # Lightning's count of this epoch's batches (per rank) at ``position``
        self.trained: Callable[[], int] | None = None  # Lightning's count of batches over all epochs, if set
        self.mark = 0  # that count at ``position``
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )

    def _left(self) -> int:
        """Samples this rank has left in the epoch (every rank the same: the remainder is dropped)."""
        return max(0, self.samples_per_epoch - self.position) // self.num_replicas

    # DistributedSampler's own attributes, kept true for whoever reads them
    num_samples = property(_left, lambda self, value: None)
    total_size = property(lambda self: self._left() * self.num_replicas, lambda self, value: None)

    def __len__(self) -> int:
        return self._left()

    def __iter__(self) -> Iterator[int]:
        position, left, chunk = self.position, self._left(), 4096
        for lo in range(0, left, chunk):
            local = np.arange(lo, min(lo + chunk, left))
            index = position + local * self.num_replicas + self.rank
            yield from self.order.items(self.seed, self.epoch, index).tolist()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts from its beginning; the same one keeps a resumed start
            self.epoch, self.position, self.base_batches = epoch, 0, 0
            self.mark = self.trained() if self.trained is not None else 0

    # -- resuming ---------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int, batch_size: int, trained: int | None = None) -> dict[str, Any]:
        """The position after ``batches_done`` batches of this epoch (Lightning's count, per rank).

        ``trained``: Lightning's count of batches over all epochs (default: ``batches_done``). The position
        follows it, not the count of the epoch, which Lightning does not always restart at 0 (a run resumed
        from the checkpoint written when training ended starts a new epoch and counts on).
        """
        trained = batches_done if trained is None else trained
        consumed = (trained - self.mark) * batch_size * self.num_replicas
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "samples_done": self.position + consumed,  # global: the same on every rank, whatever W
            "samples_per_epoch": self.samples_per_epoch,
            "order": self.order.name,
            "batches_done": batches_done,
            "world_size": self.num_replicas,
            "batch_size": batch_size,
        }

    def load_state_dict(
        self,
        state: dict[str, Any],
        batches_done: int,
        batch_size: int,
        accumulate: int = 1,
        trained: int | None = None,
    ) -> None:
        """Continue from a saved position: any world size, unless the first optimizer step would be partial.

        ``batches_done``: Lightning's restored count (used for states saved before it was stored);
        ``accumulate``: this run's ``accumulate_grad_batches``; ``trained``: Lightning's restored count over
        all epochs (default: the count of the epoch), from which :meth:`state_dict` counts on.
        """
        expected = (
            ("order", state.get("order", self.order.name), self.order.name, "data.sampler"),
            ("seed", int(state["seed"]), self.seed, "data.seed"),
            ("samples_per_epoch", int(state["samples_per_epoch"]), self.samples_per_epoch, "the data and block_size"),
        )  # fmt: skip
        for what, saved, here, keep in expected:
            if saved != here:
                raise GPT2KitError(
                    f"cannot resume the data position: the checkpoint's is in another order ({what}: checkpoint "
                    f"{saved}, here {here}); keep {keep} as they were to resume, or start a new run from its weights"
                )
        position = int(state["samples_done"])
        base = int(state.get("batches_done", batches_done))
        old_world, old_batch = state.get("world_size"), state.get("batch_size")
        if not 0 <= position <= self.samples_per_epoch:
            raise GPT2KitError(
                f"cannot resume the data position: samples_done={position} is outside an epoch of "
                f"{self.samples_per_epoch} samples (a damaged checkpoint?)"
            )
        changed = old_world is not None and (old_world, old_batch) != (self.num_replicas, batch_size)
        if changed and base % accumulate:
            raise GPT2KitError(
                f"cannot resume on {self.num_replicas} process(es) × batch_size={batch_size} with "
                f"accumulate_grad_batches={accumulate}: the checkpoint was saved after {base} batches per rank of "
                f"epoch {state['epoch']} (on {old_world} × {old_batch}), and Lightning steps the optimizer when "
                f"its count of batches is a multiple of {accumulate}, so the first step would hold "
                f"{accumulate - base % accumulate} of its {accumulate} micro-batches; keep the global batch with "
                f"data.batch_size instead, or use an accumulate_grad_batches that divides {base}"
            )
        if changed and self.samples_per_epoch - position < old_world * old_batch:
            position = self.samples_per_epoch  # the old world had ended this epoch: its tail stays dropped
        self.epoch, self.position, self.base_batches = int(state["epoch"]), position, base
        self.mark = base if trained is None else trained
        if changed:
            log.info(
                "resuming the data position on %d process(es) × %d (saved on %d × %d): epoch %d, %d of %d samples "
                "done, %d batches per rank left",
                self.num_replicas,
                batch_size,
                old_world,
                old_batch,
                self.epoch,
                position,
                self.samples_per_epoch,
                self._left() // batch_size,
            )


class RandomWindowSampler(TrainSampler):
    """:class:`TrainSampler` over :class:`UniformOrder` windows: starts in ``[0, n_offsets)``, drawn at random."""

    def __init__(
        self,
        dataset: Dataset,
        n_offsets: int,
        samples_per_epoch: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(dataset, UniformOrder(n_offsets, samples_per_epoch), seed, num_replicas, rank)


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
    """A DataLoader over a :class:`TrainSampler` that Lightning can checkpoint mid-epoch, on any world size.

    ``batches_done`` returns how many batches of the current epoch were trained on (Lightning's progress
    counter, per rank), ``trained`` how many over all epochs, and ``accumulate`` is the trainer's
    ``accumulate_grad_batches``; the DataModule sets them when it builds the loader for a Trainer. The length is Lightning's count at the resumed
    position plus the batches left, so the epoch ends where the windows do, whatever the world size.
    """

    batches_done: Callable[[], int] | None = None
    trained: Callable[[], int] | None = None
    accumulate: int = 1

    def __len__(self) -> int:
        return self.sampler.base_batches + len(self.sampler) // self.batch_size

    def state_dict(self) -> dict[str, Any]:
        assert self.batches_done is not None, "built outside a Trainer: nothing tracks the batches trained on"
        trained = self.trained() if self.trained is not None else None
        return self.sampler.state_dict(self.batches_done(), self.batch_size, trained)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        done = self.batches_done() if self.batches_done is not None else 0
        trained = self.trained() if self.trained is not None else None
        self.sampler.load_state_dict(state, done, self.batch_size, self.accumulate, trained)
