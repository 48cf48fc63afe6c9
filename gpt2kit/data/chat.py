"""Chat data for fine-tuning: conversations → token samples with a loss mask, prepared once.

The chat sample format of the shared preparation (:func:`gpt2kit.data.prepare.prepare_shards`):
sources, the keyed cache, the tokenizer copy and ``tokenizer``/``vocab_size`` are the same as for
text; what differs is below. From conversation to training sample:

1. **Read** conversations (chat JSONL, Topical-Chat, ChatterBot: readers of kind ``chat`` in
   :mod:`gpt2kit.data.readers`, the formats in :mod:`gpt2kit.chat.conversations`).
   A bad row stops preparation with its location, or with ``on_bad_row="skip"`` is left out and
   reported (logged, counted and listed in ``meta.json``).
2. **Encode** each message as a turn with the chat template (:mod:`gpt2kit.chat.template`): ids, and a
   mask that is True on the tokens the model learns — the content and end-of-turn of *every* assistant
   turn, nothing else.
3. **Fit the window** of ``block_size + 1`` tokens (inputs plus the shifted target), see
   :func:`build_sample`: turns after the last assistant turn are dropped (nothing to learn there); a
   conversation that is too long loses its oldest turns, whole, keeping a leading system message while
   it fits, so that the sample still starts at a turn boundary and ends with the last assistant turn.
   Only when that last assistant turn alone is longer than the window is it cut, from the left. A
   sample left with no learned token is dropped and counted.
4. **Write** the samples of each split (whole conversations: every ``1/val_fraction``-th one goes to
   validation) as flat token and mask files plus sample offsets, atomically, under the cache; the
   folder is reused while sources, tokenizer, template and window are unchanged. The tokenizer
   given is copied before it is trained or given the template's special tokens.

Serving: a batch holds whole samples, right-padded to its longest one (``pad_to_block``: to
``block_size``), with target ``IGNORE_INDEX`` (-100) wherever the mask is False or on padding — so the
loss, and the validation loss, are over assistant tokens only. With ``pack=True`` several training
samples share a window (next-fit in a shuffled order; never two readings of one conversation); each
keeps its own mask. Packed conversations can attend to the ones before them in the window, as
documents do in pretraining; validation is never packed, so its loss compares across settings.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gpt2kit.chat.conversations import BadRow, Conversation, DialogueRoles
from gpt2kit.chat.template import ChatEncoder, ChatTemplate, EncodedTurn, RoleTokensTemplate
from gpt2kit.data.cache import PreparedFolder
from gpt2kit.data.datamodule import IGNORE_INDEX, ShardDataModule
from gpt2kit.data.prepare import ShardFormat, held_out, progress_bar
from gpt2kit.data.readers import ChatSource, ReadOptions
from gpt2kit.data.sampler import PAD, EvalSampler, PermutedOrder, TrainSampler
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizers import Tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
BATCH_CONVERSATIONS = 512
"""Conversations tokenized together (one ``encode_batch`` call)."""
OnBadRow = Literal["error", "skip"]


# --- one conversation → one sample ------------------------------------------------------------------------


@dataclass
class Sample:
    """A training sample: token ids and the mask of learned tokens, at most ``block_size + 1`` long."""

    ids: list[int]
    mask: list[bool]
    truncated: bool = False
    """Earlier turns were dropped (or cut) to fit the window."""
    cut: bool = False
    """The window starts inside a turn: the last assistant turn alone was longer than the window."""


def build_sample(turns: Sequence[EncodedTurn], window: int) -> Sample | None:
    """Fit a conversation's turns into ``window`` tokens; None if no token would be learned.

    Turns after the last learned (assistant) turn are dropped. While the rest is too long, the oldest
    turn goes — but not a leading system message, which goes only when the last assistant turn alone
    does not fit beside it. If that turn alone is still longer than the window, its oldest tokens are
    cut. The first token of a sample is never a target, so a sample needs a learned token after it.
    """
    last = max((i for i, t in enumerate(turns) if t.learned), default=None)
    if last is None:
        return None
    turns = list(turns[: last + 1])
    system = turns.pop(0) if turns[0].role == "system" else None
    truncated = False

    def size() -> int:
        return (len(system.ids) if system else 0) + sum(len(t.ids) for t in turns)

    while size() > window and len(turns) > 1:
        turns.pop(0)
        truncated = True
    if size() > window and system is not None:
        system, truncated = None, True
    kept = ([system] if system else []) + turns
    ids = [i for t in kept for i in t.ids]
    mask = [m for t in kept for m in t.mask]
    cut = len(ids) > window
    if cut:
        ids, mask = ids[-window:], mask[-window:]
    if not any(mask[1:]):
        return None
    return Sample(ids, mask, truncated or cut, cut)


# --- preparation --------------------------------------------------------------------------------------------


class PreparedChat(PreparedFolder):
    """Prepared chat samples on disk: per split, ``.bin`` ids, ``.mask.bin``, ``.idx.npy``, ``.group.npy``."""

    def ids(self, split: str) -> np.memmap:
        return _memmap(self.path / f"{split}.bin", np.dtype(self.meta["dtype"]))

    def mask(self, split: str) -> np.memmap:
        return _memmap(self.path / f"{split}.mask.bin", np.dtype(np.uint8))

    def offsets(self, split: str) -> np.ndarray:
        """Sample i is tokens ``offsets[i]:offsets[i + 1]``."""
        return np.load(self.path / f"{split}.idx.npy")

    def groups(self, split: str) -> np.ndarray:
        """The source conversation of each sample (the readings of one conversation share it)."""
        return np.load(self.path / f"{split}.group.npy")


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class _Split:
    """One split's files being written, with its counts."""

    def __init__(self, out: Path, split: str, dtype: np.dtype) -> None:
        self.ids = open(out / f"{split}.bin", "wb")  # noqa: SIM115  closed in close()
        self.mask = open(out / f"{split}.mask.bin", "wb")  # noqa: SIM115
        self.dtype = dtype
        self.offsets = [0]
        self.groups: list[int] = []
        self.counts = dict(readings=0, samples=0, truncated=0, cut=0, dropped=0, tokens=0, learned=0)

    def add(self, sample: Sample, group: int) -> None:
        np.asarray(sample.ids, dtype=self.dtype).tofile(self.ids)
        np.asarray(sample.mask, dtype=np.uint8).tofile(self.mask)
        self.offsets.append(self.offsets[-1] + len(sample.ids))
        self.groups.append(group)
        c = self.counts
        c["samples"] += 1
        c["truncated"] += sample.truncated
        c["cut"] += sample.cut
        c["tokens"] += len(sample.ids)
        c["learned"] += sum(sample.mask[1:])  # targets: every token but the first

    def close(self, out: Path, split: str) -> None:
        self.ids.close()
        self.mask.close()
        np.save(out / f"{split}.idx.npy", np.asarray(self.offsets, dtype=np.int64))
        np.save(out / f"{split}.group.npy", np.asarray(self.groups, dtype=np.int64))


def _conversations(
    sources: Sequence[ChatSource],
    on_bad_row: OnBadRow,
    bad: list[str],
    limit: int | None,
    quiet: bool = False,
) -> Iterator[tuple[int, Conversation]]:
    """Valid conversations with the index of their source conversation; bad rows raise or go to ``bad``."""
    groups: dict[str, int] = {}
    for source in sources:
        for row in source.rows():
            if isinstance(row, BadRow):
                if on_bad_row == "error":
                    raise GPT2KitError(
                        f"{row} (or set data.init_args.on_bad_row skip to leave such rows out, each one reported)"
                    )
                if len(bad) < 20 and not quiet:
                    log.warning("left out %s", row)
                bad.append(str(row))
                continue
            if row.group not in groups:
                if limit is not None and len(groups) >= limit:
                    return
                groups[row.group] = len(groups)
            yield groups[row.group], row


def _batches(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class ChatShards(ShardFormat):
    """Conversations → per split: token ids, loss mask, sample offsets and source conversation of each."""

    kind = "chat"
    version = FORMAT_VERSION
    prepared = PreparedChat

    def __init__(
        self,
        template: ChatTemplate,
        block_size: int,
        on_bad_row: OnBadRow = "error",
        max_conversations: int | None = None,
    ) -> None:
        self.template = template
        self.block_size = block_size
        self.on_bad_row = on_bad_row
        self.max_conversations = max_conversations

    def request(self) -> dict[str, Any]:
        return {
            "template": self.template.to_dict(),
            "block_size": self.block_size,
            "on_bad_row": self.on_bad_row,
            "max_conversations": self.max_conversations,
        }

    def label(self, tokenizer: Tokenizer) -> str:
        return f"{self.template.name}-{tokenizer.name}"

    def training_texts(self, sources: Sequence[ChatSource], progress: bool | None) -> Iterator[str]:
        """The template's own text, then every message (e.g. a char or BPE vocabulary learnt from them)."""
        conversations = _conversations(sources, self.on_bad_row, [], self.max_conversations, quiet=True)
        texts = (m.content for _, c in conversations for m in c.messages)
        return itertools.chain(self.template.literal_texts(), texts)

    def extend_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.add_special_tokens(self.template.special_tokens())  # after the vocabulary: ids grow

    def write(
        self,
        sources: Sequence[ChatSource],
        tokenizer: Tokenizer,
        dtype: np.dtype,
        out: Path,
        val_fraction: float,
        progress: bool | None,
    ) -> dict[str, Any]:
        encoder = ChatEncoder(self.template, tokenizer)
        window = self.block_size + 1
        splits = {split: _Split(out, split, dtype) for split in ("train", "val")}
        bad: list[str] = []
        seen_groups: set[int] = set()
        specs = ", ".join(s.spec for s in sources)
        conversations = _conversations(sources, self.on_bad_row, bad, self.max_conversations)
        bar = progress_bar(progress, None, "preparing conversations", unit=" conv")
        try:
            for batch in _batches(conversations, BATCH_CONVERSATIONS):
                encoded = encoder.encode_many([c.messages for _, c in batch])
                for (group, _), turns in zip(batch, encoded, strict=True):
                    split = splits["val" if held_out(group, val_fraction) else "train"]
                    split.counts["readings"] += 1
                    seen_groups.add(group)
                    sample = build_sample(turns, window)
                    if sample is None:
                        split.counts["dropped"] += 1
                    else:
                        split.add(sample, group)
                bar.update(len(batch))
        finally:
            bar.close()
            for name, split in splits.items():
                split.close(out, name)
        if not seen_groups:
            raise GPT2KitError(
                f"chat data {specs} holds no usable conversation"
                + (f" ({len(bad)} bad rows left out, e.g. {bad[0]})" if bad else "")
            )
        for name in ("train", "val"):
            if splits[name].counts["samples"] == 0:
                raise GPT2KitError(
                    f"chat data {specs} gives no {name} sample ({len(seen_groups)} conversations, "
                    f"val_fraction={val_fraction}): add conversations, or change val_fraction"
                )
        if bad:
            log.warning("left out %d bad row(s) in all (listed in meta.json)", len(bad))
        return {
            **self.request(),
            "conversations": len(seen_groups),
            "train": splits["train"].counts,
            "val": splits["val"].counts,
            "bad_rows": len(bad),
            "bad_row_list": bad[:1000],
        }

    def summary(self, meta: dict[str, Any]) -> str:
        """One line: samples per split and what truncation, dropping and bad rows did."""
        tr, va = meta["train"], meta["val"]
        total = {k: tr[k] + va[k] for k in tr}
        return (
            f"{tr['samples']:,} train + {va['samples']:,} val samples from {meta['conversations']:,} "
            f"conversations; {total['learned']:,} learned of {total['tokens']:,} tokens; {total['truncated']:,} "
            f"truncated ({total['cut']:,} cut inside the last assistant turn), {total['dropped']:,} dropped "
            f"with no learned token, {meta['bad_rows']:,} bad row(s) left out"
        )

    def on_reuse(self, meta: dict[str, Any]) -> None:
        if meta.get("bad_rows"):
            log.warning(
                "%d bad row(s) were left out of this data (on_bad_row=skip), e.g. %s; all are listed in "
                "meta.json",
                meta["bad_rows"],
                meta["bad_row_list"][0],
            )


# --- serving ------------------------------------------------------------------------------------------------


class ChatDataset(Dataset):
    """Items of prepared samples: one sample each, or several packed together. Item → (ids, mask)."""

    def __init__(self, prepared: PreparedChat, split: str, items: list[list[int]]) -> None:
        self.prepared, self.split, self.items = prepared, split, items
        self.offsets = prepared.offsets(split)
        self._ids: np.ndarray | None = None  # opened lazily, once per worker process
        self._mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if i == PAD:  # evens out the ranks' evaluation shards: no tokens, no targets
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
        if self._ids is None:
            self._ids, self._mask = self.prepared.ids(self.split), self.prepared.mask(self.split)
        spans = [(int(self.offsets[s]), int(self.offsets[s + 1])) for s in self.items[i]]
        ids = np.concatenate([self._ids[a:b] for a, b in spans]).astype(np.int64)
        mask = np.concatenate([self._mask[a:b] for a, b in spans]).astype(bool)
        starts = np.cumsum([0] + [b - a for a, b in spans[:-1]])
        mask[starts] = False  # a sample's first token is never a target, packed or not
        return torch.from_numpy(ids), torch.from_numpy(mask)


class ChatCollate:
    """Samples → (input, target) (B, T): right-padded; the target is IGNORE_INDEX where not learned."""

    def __init__(self, pad_id: int, length: int | None = None) -> None:
        """
        Args:
            pad_id: the input id on padding (never a target, never attended to by a real token).
            length: T of every batch (``block_size``); None: the longest sample of the batch, less one.
        """
        self.pad_id, self.length = pad_id, length

    def __call__(self, batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        T = self.length or max(1, max(len(ids) - 1 for ids, _ in batch))
        x = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        y = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, mask) in enumerate(batch):
            n = len(ids) - 1
            if n > 0:
                x[b, :n] = ids[:-1]
                y[b, :n] = torch.where(mask[1:], ids[1:], IGNORE_INDEX)  # (n,) a target only where learned
        return x, y


def pack(lengths: np.ndarray, groups: np.ndarray, window: int, seed: int) -> list[list[int]]:
    """Samples into windows of at most ``window`` tokens: next-fit over a seeded shuffle; a window never
    holds two samples of one source conversation (the other reading would give the answers away)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    windows: list[list[int]] = []
    current: list[int] = []
    used, in_window = 0, set()
    for s in order.tolist():
        n, g = int(lengths[s]), int(groups[s])
        if current and (used + n > window or g in in_window):
            windows.append(current)
            current, used, in_window = [], 0, set()
        current.append(s)
        used += n
        in_window.add(g)
    if current:
        windows.append(current)
    return windows


class ShuffledSampler(TrainSampler):
    """Every training item once per epoch, in an order that is a pure function of (seed, epoch).

    Like the pretraining sampler it has no state beyond the position in the epoch (in items consumed by
    all ranks), so a run resumed with ``--ckpt_path`` continues with the next batch it had not trained
    on, on any number of processes; rank r of W takes every W-th item of the rest of the order.
    """

    def __init__(self, dataset: Dataset, n: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, PermutedOrder(n), seed, num_replicas, rank)


class ChatDataModule(ShardDataModule):
    """Conversations for chat fine-tuning: loss on the assistant's turns only, prepared once and cached."""

    source_class = ChatSource

    def __init__(
        self,
        source: str | list[str] = "topical-chat",
        tokenizer: Tokenizer | None = None,
        template: ChatTemplate | None = None,
        block_size: int = 128,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        val_max_samples: int | None = None,
        roles: DialogueRoles = "both",
        on_bad_row: OnBadRow = "error",
        max_conversations: int | None = None,
        pack: bool = False,
        pad_to_block: bool = False,
        num_workers: int = 0,
        seed: int = 1337,
        cache: str | None = None,
    ) -> None:
        """
        Args:
            source: a dialogue corpus (topical-chat, chatterbot-corpus-english), or chat files: a path,
                folder or glob of .jsonl (gpt2kit's chat format), .json (Topical-Chat) or .yml (ChatterBot)
                files; or a list of these.
            tokenizer: the model's tokenizer (for fine-tuning: CheckpointTokenizer of model.init_from); the
                template's special tokens are added after its vocabulary, in a copy (this object is not
                changed). Default: GPT2Tokenizer.
            template: the chat template (registered kind chat_template). Default: RoleTokensTemplate.
            block_size: tokens per window; recipes link it to model.arch.block_size.
            batch_size: samples (or packed windows) per batch, per device.
            val_fraction: share of the conversations held out for validation (every 1/val_fraction-th).
            val_max_samples: cap on the validation samples (evenly spaced); None: all.
            roles: who is the assistant in two-speaker corpora without roles (Topical-Chat): "both" (each
                conversation twice, once per agent), "agent_2" (who replies to the opener) or "agent_1".
            on_bad_row: a row that is not a usable conversation (unknown role, empty, no assistant turn,
                bad JSON ...) stops preparation with its location ("error"), or is left out and reported
                ("skip": logged, counted and listed in meta.json).
            max_conversations: use only the first N source conversations (a quick trial); None: all.
            pack: put several training samples in each window (each keeps its own loss mask).
            pad_to_block: pad every batch to block_size (fixed shapes, e.g. for torch.compile) instead of
                to its longest sample.
            num_workers: DataLoader worker processes.
            seed: seed of the training order (and of packing).
            cache: folder for prepared samples (default: $GPT2KIT_CACHE/prepared-chat).
        """
        if tokenizer is None:
            from gpt2kit.tokenizers import GPT2Tokenizer

            tokenizer = GPT2Tokenizer()
        super().__init__(
            source, tokenizer, block_size, batch_size, val_fraction, num_workers, seed, cache, "prepared-chat"
        )
        if max_conversations is not None and max_conversations <= 0:
            raise GPT2KitError(f"max_conversations={max_conversations} must be positive (or null for all)")
        self.template = template if template is not None else RoleTokensTemplate()
        self.val_max_samples = val_max_samples
        self.roles = roles
        self.on_bad_row = on_bad_row
        self.max_conversations = max_conversations
        self.pack = pack
        self.pad_to_block = pad_to_block

    def sample_format(self) -> ChatShards:
        return ChatShards(self.template, self.block_size, self.on_bad_row, self.max_conversations)

    def read_options(self) -> ReadOptions:
        return ReadOptions(roles=self.roles)

    @property
    def chat_template(self) -> ChatTemplate:
        """Stored in checkpoints by GPTLitModule, so that ``chat`` renders prompts as training did."""
        return self.template

    # -- loaders --------------------------------------------------------------------------------------------
    def _items(self, split: str) -> list[list[int]]:
        prepared = self.prepared()
        offsets = prepared.offsets(split)
        n = len(offsets) - 1
        if split == "train" and self.pack:
            return pack(np.diff(offsets), prepared.groups(split), self.block_size + 1, self.seed)
        index = np.arange(n)
        if split == "val" and self.val_max_samples is not None and n > self.val_max_samples:
            index = np.linspace(0, n - 1, self.val_max_samples).round().astype(int)
        return [[int(i)] for i in index]

    def _collate(self) -> ChatCollate:
        tok = self.tokenizer
        pad_id = tok.eot_id if tok.eot_id is not None else ChatEncoder(self.template, tok).end_of_turn_id
        return ChatCollate(pad_id, self.block_size if self.pad_to_block else None)

    def train_dataloader(self) -> DataLoader:
        dataset = ChatDataset(self.prepared(), "train", self._items("train"))
        world, rank = self._ranks()
        sampler = ShuffledSampler(dataset, len(dataset), seed=self.seed, num_replicas=world, rank=rank)
        return self._train_loader(dataset, sampler, "samples", "conversations")

    def val_dataloader(self) -> DataLoader:
        dataset = ChatDataset(self.prepared(), "val", self._items("val"))
        world, rank = self._ranks()
        return self._loader(dataset, sampler=EvalSampler(dataset, num_replicas=world, rank=rank))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
