"""What each component costs: training tokens/s of every attention and position variant on one shape.

    python benchmarks/bench_components.py                       # small shape on the CPU
    python benchmarks/bench_components.py --device cuda --dtype bfloat16 \\
        --n_layer 12 --n_head 12 --n_embd 768 --block_size 1024 --batch 8

Each row times full training steps (forward, backward, AdamW) of a whole GPT that differs from the
default (CausalSelfAttention + LearnedPosition) in one component; the figure is the median of
``--repeats`` timed runs, the variants taking turns so that a busy machine slows them alike. A second table compares the MLPs alone, including GPT-2's GELU written op by
op (as nanoGPT once did) against the fused ``F.gelu(approximate="tanh")`` of :class:`GeluMLP`.
The tables are printed as markdown and written to ``benchmarks/results/components-<device>.md``.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit import GPT, GPTConfig
from gpt2kit.nn import (
    ALiBiPosition,
    CausalSelfAttention,
    GeluMLP,
    GroupedQueryAttention,
    LearnedPosition,
    MathAttention,
    NoPosition,
    ReluMLP,
    RotaryPosition,
    SinusoidalPosition,
    SlidingWindowAttention,
    SwiGLUMLP,
)

RESULTS = Path(__file__).parent / "results"


class OpByOpGeluMLP(GeluMLP):
    """GPT-2's MLP with the tanh GELU spelled out in elementwise ops (the baseline GeluMLP must beat)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        return self.dropout(self.c_proj(h))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer(module: nn.Module, step: Callable[[], Tensor], tokens: int, args) -> Callable[[], float]:
    """A timed run: ``args.steps`` optimizer steps of ``step()``'s loss, returning tokens/s."""
    device = torch.device(args.device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def run(n: int = args.steps) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            with autocast:
                loss = step()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        return tokens * n / (time.perf_counter() - start)

    run(args.warmup)
    return run


def model_trainer(config: GPTConfig, args: argparse.Namespace, **components) -> Callable[[], float]:
    torch.manual_seed(0)
    model = GPT(config, **components).to(args.device).train()
    idx = torch.randint(config.vocab_size, (args.batch, config.block_size + 1), device=args.device)
    x, y = idx[:, :-1], idx[:, 1:]

    def step() -> Tensor:
        return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())

    return trainer(model, step, x.numel(), args)


def mlp_trainer(config: GPTConfig, mlp_cls: Callable[[GPTConfig], nn.Module], args) -> Callable[[], float]:
    torch.manual_seed(0)
    mlp = mlp_cls(config).to(args.device).train()
    x = torch.randn(args.batch, config.block_size, config.n_embd, device=args.device)

    def step() -> Tensor:
        return mlp(x).float().square().mean()

    return trainer(mlp, step, args.batch * config.block_size, args)


def median_rates(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median tokens/s of each variant; the variants take turns, so load on the machine hits all alike."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
    return {name: statistics.median(r) for name, r in rates.items()}


def table(title: str, rows: dict[str, float], reference: str) -> str:
    lines = [f"| {title} | tokens/s | vs {reference} |", "|---|---:|---:|"]
    for name, rate in rows.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / rows[reference]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--vocab_size", type=int, default=65)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=int, default=None, help="sliding window (default: block_size / 4)")
    p.add_argument("--n_kv_head", type=int, default=None, help="GQA kv heads (default: n_head / 4 or 1)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--out", type=Path, default=None, help="markdown file (default: results/components-DEVICE.md)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        vocab_size=args.vocab_size,
        dropout=0.0,
    )
    window = args.window or max(1, args.block_size // 4)
    n_kv = args.n_kv_head or max(1, args.n_head // 4)
    attentions = {
        "CausalSelfAttention (SDPA)": CausalSelfAttention,
        "MathAttention": MathAttention,
        f"SlidingWindowAttention(window={window})": functools.partial(SlidingWindowAttention, window=window),
        f"GroupedQueryAttention(n_kv_head={n_kv})": functools.partial(GroupedQueryAttention, n_kv_head=n_kv),
    }
    positions = {
        "LearnedPosition": LearnedPosition,
        "NoPosition": NoPosition,
        "SinusoidalPosition": SinusoidalPosition,
        "RotaryPosition": RotaryPosition,
        "ALiBiPosition": ALiBiPosition,
    }
    mlps = {
        "GeluMLP (fused tanh GELU)": GeluMLP,
        "GELU op by op (baseline)": OpByOpGeluMLP,
        "ReluMLP": ReluMLP,
        "SwiGLUMLP": SwiGLUMLP,
    }
    results = {
        "attention (with LearnedPosition)": (
            {name: model_trainer(config, args, attention=a) for name, a in attentions.items()},
            "CausalSelfAttention (SDPA)",
        ),
        "position (with CausalSelfAttention)": (
            {name: model_trainer(config, args, position=pos) for name, pos in positions.items()},
            "LearnedPosition",
        ),
        "mlp alone (forward + backward)": (
            {name: mlp_trainer(config, m, args) for name, m in mlps.items()},
            "GELU op by op (baseline)",
        ),
    }
    tables = [table(title, median_rates(runs, args.repeats), ref) for title, (runs, ref) in results.items()]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    header = (
        f"Shape: n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd} "
        f"block_size={args.block_size} batch={args.batch} {args.dtype}; device {args.device} ({where}), "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}; median of {args.repeats} runs "
        f"of {args.steps} training steps."
    )
    report = "\n\n".join([header, *tables]) + "\n"
    print(report)
    out = args.out or RESULTS / f"components-{torch.device(args.device).type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
