"""Speed accounting: model FLOPs per token, the device's measured matmul peak, and MFU.

MFU (model FLOPs utilisation, PaLM appendix B) is the share of the hardware's peak that the model's
own arithmetic would use at the measured throughput: ``tokens/s × FLOPs/token ÷ (peak × devices)``.
FLOPs per token follow nanoGPT's estimate, ``6N + 12·L·T·C``: 6 per weight that takes part in a matmul
(2 forward, 4 backward) and the attention scores and weighted sums (full T×T, as is the convention).

The peak is *measured*, not read from a spec sheet: the FLOP/s of a large square matmul on the current
device in the training dtype, timed once per process and cached. A measured peak is what the device
actually sustains (an H100's is below its datasheet's), so it is an honest denominator on any device,
CPUs included; pass ``peak_flops`` to use a datasheet figure instead.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from gpt2kit.model import GPT

_PEAKS: dict[tuple[str, torch.dtype], float] = {}


def matmul_params(model: GPT) -> int:
    """Parameters that take part in a matmul per token: all but lookup-only embedding tables.

    The token embedding counts when a tied head multiplies by it (GPT-2), as in nanoGPT.
    """
    n = model.num_params()
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m is not model.wte:
            n -= m.weight.numel()  # position tables: looked up, never multiplied
    if any(True for _ in model.head.parameters()):  # an untied head has its own matrix: wte is lookup-only
        n -= model.wte.weight.numel()
    return n


def flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len`` (default block_size)."""
    cfg = model.config
    T = seq_len or cfg.block_size
    return 6 * matmul_params(model) + 12 * cfg.n_layer * T * cfg.n_embd


def precision_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype the matmuls run in under a Lightning ``precision`` setting."""
    p = str(precision)
    if p.startswith("bf16") or p == "transformer-engine":
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    if p.startswith("64"):
        return torch.float64
    return torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype`` (median of ``repeats``), cached per process.

    Draws no numbers from the global RNG, so measuring does not change a run's random stream.
    """
    device = torch.device(device)
    key = (str(device), dtype)
    if key not in _PEAKS:
        n = 8192 if device.type == "cuda" else 2048 if device.type == "mps" else 1024
        inner = 10 if device.type == "cuda" else 1  # ~ms per product on a GPU: time several per sample
        g = torch.Generator().manual_seed(0)
        a = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
        times = []
        for i in range(repeats + 2):  # the first two warm up (kernel choice, caches, clocks)
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        _PEAKS[key] = 2 * n**3 * inner / sorted(times)[len(times) // 2]
    return _PEAKS[key]
