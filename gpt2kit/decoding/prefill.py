"""Prefill: running prompts through the model and loading their keys and values into slot rows.

The engine (:class:`~gpt2kit.decoding.engine.Engine`) chooses which requests to admit and which slot each
takes; this module computes their rows of the slot cache (:class:`~gpt2kit.decoding.slots.SlotKVCache`)
and the logits that sample each first token, in two ways:

* :func:`prefill_batch` — the prompts admitted together in **one forward**: prompts of different lengths
  are *left*-padded to a common length; each row gets its own positions (its first real token is
  position 0) and a mask that hides the padding, so a padded row sees exactly what it would see alone.
  :func:`batches` groups prompts of similar lengths so that the padding stays small.
* :func:`prefill_row` — one prompt alone, in chunks of ``chunk`` tokens (a prompt longer than the prefill
  budget), after the prefix its slot already holds (the next turn of a chat), and with the logits of
  every position when the prompt's own logprobs are asked for. The context slide uses it too.

Both work in a temporary cache of the prompt's size and copy each row into its slot afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpt2kit.decoding.sequence import Request
from gpt2kit.decoding.slots import SlotKVCache
from gpt2kit.model import GPT


def batches(reqs: list[Request], budget: int) -> list[list[Request]]:
    """Batches of prompts of similar lengths whose padded size stays within ``budget`` tokens."""
    groups: list[list[Request]] = []
    for req in sorted(reqs, key=lambda r: len(r.prompt)):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * len(req.prompt) <= budget:
            group.append(req)
        else:
            groups.append([req])
    return groups


def prefill_batch(model: GPT, cache: list[SlotKVCache], rows: list[list[int]], slots: list[int]) -> Tensor:
    """One left-padded forward over several prompts; row b goes into slot ``slots[b]``. The last
    position's logits (B, vocab)."""
    device = cache[0].k.device  # the slot cache's, i.e. the model's
    lengths = [len(r) for r in rows]
    L = max(lengths)
    # Padding repeats the row's first token: it is masked out of attention, and keeps ids valid.
    ids = torch.tensor([[r[0]] * (L - len(r)) + r for r in rows], device=device)  # (B, L)
    pos = valid = None
    if min(lengths) < L:
        pad = torch.tensor([L - n for n in lengths], device=device)[:, None]  # (B, 1)
        cols = torch.arange(L, device=device)[None, :]  # (1, L)
        valid = cols >= pad  # (B, L) False on padding
        pos = (cols - pad).clamp(min=0)  # (B, L) each row starts at position 0
    tmp = model.new_cache(len(rows), L)
    logits = model(ids, pos=pos, valid=valid, cache=tmp, last_only=True)[:, -1]  # (B, vocab)
    for b, slot in enumerate(slots):
        for slot_layer, layer in zip(cache, tmp, strict=True):
            slot_layer.load_row(slot, layer, src_row=b, start=L - lengths[b])
    return logits


def prefill_row(
    model: GPT,
    cache: list[SlotKVCache],
    slot: int,
    ids: list[int],
    reuse: int = 0,
    chunk: int = 512,
    all_logits: bool = False,
) -> Tensor:
    """Run ``ids[reuse:]`` through a one-row cache that starts with the slot's first ``reuse`` columns,
    ``chunk`` tokens at a time (all at once for ``all_logits``), and load the result into the slot.
    The logits (1, 1, vocab), or (1, T - reuse, vocab) with ``all_logits``."""
    device = cache[0].k.device
    tmp = model.new_cache(1, len(ids))
    if reuse:
        for slot_layer, layer in zip(cache, tmp, strict=True):
            layer.k[0, :, :reuse] = slot_layer.k[slot, :, :reuse]
            layer.v[0, :, :reuse] = slot_layer.v[slot, :, :reuse]
            layer.pos[0, :reuse] = slot_layer.pos[slot, :reuse]
            layer.valid[0, :reuse] = True
            layer.length = reuse
    chunk = len(ids) if all_logits else chunk
    outs = []
    for start in range(reuse, len(ids), chunk):
        x = torch.tensor([ids[start : start + chunk]], device=device)  # positions continue
        outs.append(model(x, cache=tmp, last_only=not all_logits))
    for slot_layer, layer in zip(cache, tmp, strict=True):
        slot_layer.load_row(slot, layer)
    return outs[-1] if not all_logits else torch.cat(outs, dim=1)
