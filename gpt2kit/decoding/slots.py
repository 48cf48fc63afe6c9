"""The slot KV cache: one layer's cache seen as rows that each hold one request, filled to its own length."""

from __future__ import annotations

import torch
from torch import Tensor

from gpt2kit.errors import GPT2KitError
from gpt2kit.nn import KVCache


class SlotKVCache(KVCache):
    """One layer's KV cache seen as slots: row i holds request i's tokens, each row filled to its own length.

    It shares the preallocated tensors of a layer's :class:`KVCache` (from ``GPT.new_cache``) and keeps its
    contract (``append`` returns every cached key, value, position and validity), so every attention
    variant runs on it unchanged. Before each decode step the engine sets :attr:`cols`, the column each
    row writes its new token to; columns a row has not filled stay invalid and are masked out.
    """

    def __init__(self, layer: KVCache) -> None:  # noqa: D107 (no super().__init__: the tensors are shared)
        self.k, self.v, self.pos, self.valid = layer.k, layer.v, layer.pos, layer.valid
        self.max_len = layer.max_len
        self.padded = True  # rows of different lengths: every query needs the mask
        self.length = 0
        self.cols: Tensor | None = None
        """(R,) long: where each of the first R rows writes its token in the next ``append``."""
        self.width = 0
        """How many columns the next ``append`` returns (the longest row afterwards)."""

    def append(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None) -> tuple[Tensor, ...]:
        """Store one new token per row (k, v: (R, h, 1, hs)) at each row's own column; return rows :R."""
        if k.size(2) != 1 or self.cols is None or self.cols.numel() != k.size(0):
            raise GPT2KitError("SlotKVCache takes one token per row of the decode batch (set cols first)")
        R = k.size(0)
        if R == 1:  # one row: plain slices (no gather)
            c = int(self.cols[0]) if self.cols.device.type == "cpu" else self.cols[0]
            self.k[0, :, c] = k[0, :, 0]
            self.v[0, :, c] = v[0, :, 0]
            self.pos[0, c] = pos[0, 0]
            self.valid[0, c] = True
        elif not self.padded:  # every row writes the same column (a uniform batch): slices, no scatter
            c = int(self.cols[0]) if self.cols.device.type == "cpu" else self.cols[0]
            self.k[:R, :, c] = k[:, :, 0]
            self.v[:R, :, c] = v[:, :, 0]
            self.pos[:R, c] = pos[:, 0]
            self.valid[:R, c] = True
        else:
            rows = torch.arange(R, device=k.device)
            self.k[rows, :, self.cols] = k[:, :, 0]  # (R, h, hs) at (row, :, its column)
            self.v[rows, :, self.cols] = v[:, :, 0]
            self.pos[rows, self.cols] = pos[:, 0]
            self.valid[rows, self.cols] = True
        w = self.width
        return self.k[:R, :, :w], self.v[:R, :, :w], self.pos[:R, :w], self.valid[:R, :w]

    def load_row(self, row: int, source: KVCache, src_row: int = 0, start: int = 0) -> None:
        """Make slot ``row`` hold row ``src_row`` of a prefill's cache from column ``start`` on, and nothing else."""
        n = source.length - start
        self.k[row, :, :n] = source.k[src_row, :, start : source.length]
        self.v[row, :, :n] = source.v[src_row, :, start : source.length]
        self.pos[row, :n] = source.pos[src_row, start : source.length]
        self.valid[row] = False
        self.valid[row, :n] = True

    def truncate(self, length: int) -> None:  # slots are reset with load_row, not truncated
        raise GPT2KitError("SlotKVCache rows are replaced with load_row, not truncated")
