"""Throughput: `gpt2kit fit` (Lightning) vs a plain PyTorch loop over the same model, data and optimizer.

    python benchmarks/bench_lightning_overhead.py [--steps 150] [--repeats 3]

Both sides train the baby-GPT shape on Tiny Shakespeare with the same batches, AdamW groups, LR
schedule and gradient clipping; the first steps of each run are excluded as warm-up. Runs alternate
between the two sides and the medians are compared. Target: the Lightning layer costs at most 5%.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from gpt2kit import GPTConfig
from gpt2kit.data import TextDataModule
from gpt2kit.lit import GPTLitModule, OptimConfig

WARMUP = 20


def make(seed: int = 0) -> tuple[GPTLitModule, TextDataModule]:
    torch.manual_seed(seed)
    data = TextDataModule("tinyshakespeare", block_size=64, batch_size=12)
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=data.vocab_size, bias=False)
    return GPTLitModule(cfg, optim=OptimConfig(lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99))), data


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.times.append(time.perf_counter())


def lightning_tokens_per_sec(steps: int) -> float:
    module, data = make()
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, data)
    timed = timer.times[WARMUP:]
    return (len(timed) - 1) * 12 * 64 / (timed[-1] - timed[0])


def plain_tokens_per_sec(steps: int) -> float:
    module, data = make()
    data.setup("fit")
    model = module.model.train()
    opt = torch.optim.AdamW(module.param_groups(), lr=1e-3, betas=(0.9, 0.99))
    from gpt2kit.lit import lr_factor

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 100, steps, 0.1))
    times = []
    it = iter(data.train_dataloader())
    for _ in range(steps):
        times.append(time.perf_counter())
        x, y = next(it)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    timed = times[WARMUP:]
    return (len(timed) - 1) * 12 * 64 / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lit, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_tokens_per_sec(args.steps))
        lit.append(lightning_tokens_per_sec(args.steps))
    p, q = statistics.median(plain), statistics.median(lit)
    print(f"| loop | tokens/s (median of {args.repeats}) | runs |\n|---|---|---|")
    print(f"| plain PyTorch | {p:,.0f} | {', '.join(f'{v:,.0f}' for v in plain)} |")
    print(f"| gpt2kit (Lightning) | {q:,.0f} | {', '.join(f'{v:,.0f}' for v in lit)} |")
    overhead = 1 - q / p
    print(
        f"\ngpt2kit / plain = {q / p:.3f} (Lightning overhead {overhead:+.1%}; target <= 5%): {'PASS' if overhead <= 0.05 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
