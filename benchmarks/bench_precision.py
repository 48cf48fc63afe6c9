"""Training throughput by precision: gpt2kit fp32 / bf16-mixed / bf16-mixed + compile vs a plain PyTorch loop.

    python benchmarks/bench_precision.py [--steps 12] [--repeats 3] [--batch-size 8] [--quality-steps 60] [--threads N]

The 6-layer, 6-head, 384-wide model with 256-token windows (nanoGPT's Shakespeare-char shape) on Tiny
Shakespeare, side by side in one run: a plain PyTorch loop over the same model, data, AdamW groups,
LR schedule and clipping, in fp32 and under bf16 autocast; and gpt2kit (Lightning) in fp32,
``bf16-mixed`` and ``bf16-mixed`` with ``compile``. Each row is the median tokens/s of ``--repeats``
short runs (first ``--warmup`` steps excluded: allocation, compilation), the rows in a shuffled order
each round.
MFU is against the matmul peak measured in the row's dtype (gpt2kit.training.perf).

Quality: the same seed trained ``--quality-steps`` steps in fp32 and in bf16-mixed, then the loss on
the fixed validation windows. Targets: gpt2kit bf16-mixed >= 1.5x the plain fp32 loop; |Δ val loss|
<= 0.02.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from gpt2kit import GPTConfig
from gpt2kit.data import TextDataModule
from gpt2kit.training.hardware import native_bf16
from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor
from gpt2kit.training.perf import flops_per_token, measure_peak_flops

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0, bias=False)
OPTIM = OptimConfig(lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99), warmup_steps=10)


def make(batch_size: int, compile: bool = False, seed: int = 0) -> tuple[GPTLitModule, TextDataModule]:
    torch.manual_seed(seed)
    data = TextDataModule("tinyshakespeare", block_size=256, batch_size=batch_size, val_max_windows=64)
    module = GPTLitModule(GPTConfig(**SHAPE, vocab_size=data.vocab_size), optim=OPTIM, compile=compile)
    return module, data


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def _tokens_per_sec(times: list[float], warmup: int, tokens_per_step: int) -> float:
    timed = times[warmup:]
    return (len(timed) - 1) * tokens_per_step / (timed[-1] - timed[0])


def gpt2kit_run(steps: int, warmup: int, batch_size: int, precision: str, compile: bool = False) -> float:
    module, data = make(batch_size, compile)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps + warmup, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, data)
    return _tokens_per_sec(timer.times, warmup, batch_size * 256)


def plain_run(steps: int, warmup: int, batch_size: int, bf16: bool) -> float:
    module, data = make(batch_size)
    model = module.model.train()
    opt = torch.optim.AdamW(module.param_groups(), lr=OPTIM.lr, betas=OPTIM.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, OPTIM.warmup_steps, steps + warmup, 0.1)
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    it = iter(data.train_dataloader())
    times = []
    for _ in range(steps + warmup):
        times.append(time.perf_counter())
        x, y = next(it)
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter())
    return _tokens_per_sec(times, warmup, batch_size * 256)


def val_loss_after(steps: int, batch_size: int, precision: str) -> float:
    L.seed_everything(1337, verbose=False)
    module, data = make(batch_size, seed=1337)
    trainer = L.Trainer(
        max_steps=steps, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=steps,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, gradient_clip_val=1.0,
    )  # fmt: skip
    trainer.fit(module, data)
    # judged in fp32, so the comparison is of the weights the two precisions reached
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        module, data, verbose=False
    )[0]["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quality-steps", type=int, default=60, help="0 skips the val-loss comparison")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the compiled row (slow to compile on CPU)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bf16 = native_bf16("cpu")
    rows: dict[str, tuple] = {"plain PyTorch fp32": (plain_run, dict(bf16=False), torch.float32)}
    if bf16:
        rows["plain PyTorch bf16 autocast"] = (plain_run, dict(bf16=True), torch.bfloat16)
    rows["gpt2kit 32-true"] = (gpt2kit_run, dict(precision="32-true"), torch.float32)
    if bf16:
        rows["gpt2kit bf16-mixed"] = (gpt2kit_run, dict(precision="bf16-mixed"), torch.bfloat16)
        if not args.no_compile:
            rows["gpt2kit bf16-mixed + compile"] = (
                gpt2kit_run, dict(precision="bf16-mixed", compile=True), torch.bfloat16,
            )  # fmt: skip
    else:
        print("this CPU has no native bf16: bf16 rows skipped\n")

    results: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows)
    for r in range(args.repeats):
        random.Random(r).shuffle(order)  # a shared machine's load drifts: no row always goes first
        for name in order:
            fn, kw, _dtype = rows[name]
            results[name].append(fn(args.steps, args.warmup, args.batch_size, **kw))

    module, _ = make(args.batch_size)
    fpt = flops_per_token(module.model)
    base = statistics.median(results["plain PyTorch fp32"])
    print(f"shape {SHAPE}, batch {args.batch_size} x 256 tokens, {torch.get_num_threads()} threads\n")
    print(f"| run | tokens/s (median of {args.repeats}) | × plain fp32 | MFU (measured peak) | runs |")
    print("|---|---|---|---|---|")
    for name, (_, _, dtype) in rows.items():
        med = statistics.median(results[name])
        mfu = med * fpt / measure_peak_flops("cpu", dtype)
        runs = ", ".join(f"{v:,.0f}" for v in results[name])
        print(f"| {name} | {med:,.0f} | {med / base:.2f}× | {mfu:.1%} | {runs} |")
    peaks = ", ".join(
        f"{d}: {measure_peak_flops('cpu', d) / 1e9:,.0f} GFLOP/s" for d in {r[2] for r in rows.values()}
    )
    print(f"\nmeasured matmul peaks: {peaks}; model FLOPs/token {fpt / 1e6:.1f} M")

    if bf16:
        ratio = statistics.median(results["gpt2kit bf16-mixed"]) / base
        print(
            f"gpt2kit bf16-mixed / plain fp32 = {ratio:.2f}× (target >= 1.5×): {'PASS' if ratio >= 1.5 else 'FAIL'}"
        )
    if args.quality_steps and bf16:
        fp32 = val_loss_after(args.quality_steps, args.batch_size, "32-true")
        bf = val_loss_after(args.quality_steps, args.batch_size, "bf16-mixed")
        delta = abs(bf - fp32)
        print(
            f"val loss after {args.quality_steps} steps: fp32 {fp32:.4f}, bf16-mixed {bf:.4f}, "
            f"|Δ| = {delta:.4f} (target <= 0.02): {'PASS' if delta <= 0.02 else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
