"""Throughput: `gpt2kit fit` (Lightning) vs a plain PyTorch loop over the same model, data and optimizer.

    python benchmarks/bench_lightning_overhead.py [--steps 300] [--repeats 3] [--progress_bar]

Both sides train the baby-GPT shape of the Shakespeare recipe on Tiny Shakespeare with the same
batches, AdamW groups, LR schedule and gradient clipping. The Lightning side runs as `fit` does,
with the recipe's CSV logger (every 10 steps) and learning-rate monitor.

The two sides run step by step in turn, in one process: a callback runs one plain step after each
Lightning step. On a shared machine whose speed drifts by 20% within seconds, runs one after the
other measure the drift more than the 5% asked for; steps in turn see the same conditions. A
Lightning step is timed from the start of one training batch to the start of the next (its hooks,
callbacks, logging and optimizer step included), minus the plain step run inside it. The first
steps are warm-up. Target: the Lightning layer costs at most 5%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F

from gpt2kit import GPTConfig
from gpt2kit.data import TextDataModule
from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor

WARMUP = 20
TOKENS = 12 * 64  # batch 12, block 64


def make(seed: int = 0) -> tuple[GPTLitModule, TextDataModule]:
    torch.manual_seed(seed)
    data = TextDataModule("tinyshakespeare", block_size=64, batch_size=12)
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=data.vocab_size, bias=False)
    return GPTLitModule(cfg, optim=OptimConfig(lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99))), data


def plain_loop(steps: int) -> Callable[[], None]:
    """One step of nanoGPT's loop per call, over its own copy of the model and data."""
    module, data = make()
    data.setup("fit")
    model = module.model.train()
    opt = torch.optim.AdamW(module.param_groups(), lr=1e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 100, steps, 0.1))
    batches = iter(data.train_dataloader())

    def step() -> None:
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


class InTurn(L.Callback):
    """Runs one plain step after each Lightning step, and times both."""

    def __init__(self, plain_step: Callable[[], None]) -> None:
        self.plain_step = plain_step
        self.lightning: list[float] = []
        self.plain: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(self, *args) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.lightning.append(now - self._start - self.plain[-1])
        self._start = now

    def on_train_batch_end(self, *args) -> None:
        start = time.perf_counter()
        self.plain_step()
        self.plain.append(time.perf_counter() - start)


def run(steps: int, progress_bar: bool) -> tuple[float, float]:
    """(plain tokens/s, Lightning tokens/s) over the steps after warm-up."""
    module, data = make()
    turn = InTurn(plain_loop(steps))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=steps, logger=L.pytorch.loggers.CSVLogger(tmp), log_every_n_steps=10,
            callbacks=[turn, L.pytorch.callbacks.LearningRateMonitor()], enable_checkpointing=False,
            enable_progress_bar=progress_bar, enable_model_summary=False, limit_val_batches=0,
            gradient_clip_val=1.0,
        )  # fmt: skip
        trainer.fit(module, data)
    lit, plain = turn.lightning[WARMUP:], turn.plain[WARMUP : len(turn.lightning)]
    return TOKENS * len(plain) / sum(plain), TOKENS * len(lit) / sum(lit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--progress_bar", action="store_true", help="with fit's progress bar on (a terminal's cost)"
    )
    args = parser.parse_args()
    runs = [run(args.steps, args.progress_bar) for _ in range(args.repeats)]
    ratios = [lit / plain for plain, lit in runs]
    print(
        "| run | plain PyTorch tokens/s | gpt2kit (Lightning) tokens/s | gpt2kit / plain |\n|---|---|---|---|"
    )
    for i, ((plain, lit), ratio) in enumerate(zip(runs, ratios, strict=True)):
        print(f"| {i + 1} | {plain:,.0f} | {lit:,.0f} | {ratio:.3f} |")
    ratio = statistics.median(ratios)
    print(
        f"\ngpt2kit / plain = {ratio:.3f}, median of {args.repeats} (Lightning overhead {1 - ratio:+.1%}; "
        f"target <= 5%): {'PASS' if ratio >= 0.95 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
