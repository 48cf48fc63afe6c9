"""The GPU check: the 124M recipe's shape in bf16 with and without torch.compile, nanoGPT's train.py on the
same shape, Muon's step against AdamW's, in ONE table.

    python benchmarks/gpu_check.py [--steps 60] [--warmup 20] [--nanogpt PATH] [--dry]
    bash benchmarks/gpu_check.sh [--nanogpt PATH]        # this, then the GPU-marked tests (<= 8 minutes)

Rows (each trains ``--steps`` steps on a synthetic corpus and times the steps after ``--warmup``):

* gpt2kit, recipes/pretrain/gpt2-124m.yaml's shape (GPT-2 small, block 1024, micro-batch 12, vocabulary
  padded to 50304 as nanoGPT does), bf16-mixed, GPT2AdamW: eager, then ``torch.compile``;
* the same with MuonAdamW (the modern recipe's optimizer; its Newton-Schulz in the device's dtype);
* nanoGPT's own ``train.py`` from a karpathy/nanoGPT checkout (``--nanogpt PATH`` or ``$NANOGPT``), same
  shape, bias, batch and dtype, compiled, on a synthetic ``data/gpu_check/`` it writes there;
* Muon's optimizer step alone on GPT-2 small's 48 matrices: torch.optim.Muon and gpt2kit's BatchedMuon;
* with ``--tests``, the suite's GPU-marked tests (``pytest -m gpu``): their summary line.

Columns: ms per step (median), tokens/s, MFU against the GPU's datasheet dense bf16 peak (the table
below; against the matmul peak measured here where the GPU is not in it), peak memory, and the ratio to
the first row. Targets on one H100: MFU >= 45% with compile; tokens/s >= nanoGPT's.

``--dry``: the same rows and table on the CPU with the nano preset and a few steps (torch.compile not
applied: no kernels are generated), so the script is known to run before a GPU is lent
(tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from gpt2kit import GPT, preset
from gpt2kit.data import TextDataModule
from gpt2kit.training.lit import GPTLitModule
from gpt2kit.training.optim import BatchedMuon, GPT2AdamW, MuonAdamW, WarmupCosine
from gpt2kit.training.perf import flops_per_token, measure_peak_flops

DATASHEET_BF16_DENSE = [  # (name fragment, FLOP/s): NVIDIA datasheets, dense (no sparsity); first match wins
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
]  # fmt: skip


@dataclass
class Row:
    name: str
    step_s: float
    tokens: int  # per step
    fpt: float  # training FLOPs per token
    mem_gib: float | None = None
    note: str = ""


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def median_step(times: list[float], warmup: int) -> float:
    times = times[warmup:] if len(times) > warmup + 2 else times
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def synthetic_text(work: Path, chars: int) -> Path:
    path = work / "random.txt"
    rng = np.random.default_rng(0)  # the text does not change the speed; printable letters, char-tokenized
    path.write_bytes(rng.integers(32, 127, chars, dtype=np.uint8).tobytes())
    return path


def train_gpt2kit(args, work: Path, arch, *, compile: bool, muon: bool) -> Row:
    data = TextDataModule(
        str(synthetic_text(work, 2_000_000)), block_size=arch.block_size, batch_size=args.batch_size,
        val_max_windows=2, cache=str(work / "prepared"), num_workers=0 if args.dry else 2,
    )  # fmt: skip
    optimizer = MuonAdamW if muon else GPT2AdamW
    module = GPTLitModule(
        arch, optimizer=optimizer, schedule=WarmupCosine(warmup_steps=10), compile=compile and not args.dry
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.steps,
        gradient_clip_val=1.0, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    if args.accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, data)
    mem = torch.cuda.max_memory_allocated() / 2**30 if args.accelerator == "gpu" else None
    name = f"gpt2kit {'MuonAdamW' if muon else 'AdamW'}, {'compile' if compile else 'eager'}"
    note = "compile not applied (--dry)" if compile and args.dry else ""
    tokens = args.batch_size * arch.block_size
    return Row(name, median_step(timer.times, args.warmup), tokens, flops_per_token(module.model), mem, note)


def train_nanogpt(args, checkout: Path, arch, fpt: float) -> Row:
    """nanoGPT's train.py on the same shape, from its own checkout, on a synthetic token file."""
    data = checkout / "data" / "gpu_check"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4_000_000), ("val", 200_000)):
        rng.integers(0, 50257, n, dtype=np.uint16).tofile(data / f"{split}.bin")
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, "train.py", "--dataset=gpu_check", f"--out_dir={out}", f"--batch_size={args.batch_size}",
            f"--block_size={arch.block_size}", f"--n_layer={arch.n_layer}", f"--n_head={arch.n_head}",
            f"--n_embd={arch.n_embd}", f"--bias={arch.bias}", "--dropout=0.0", "--gradient_accumulation_steps=1",
            f"--max_iters={args.steps}", "--eval_interval=100000", "--eval_iters=1", "--log_interval=1",
            "--always_save_checkpoint=False", "--wandb_log=False", f"--device={'cuda' if args.accelerator == 'gpu' else 'cpu'}",
            f"--compile={not args.dry}", f"--dtype={'float32' if args.dry else 'bfloat16'}",
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return Row("nanoGPT train.py", float("nan"), 0, fpt, note=f"failed: {tail[0][:80]}")
    ms = [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", done.stdout, re.M)]
    step = statistics.median(ms[args.warmup :] if len(ms) > args.warmup + 2 else ms) / 1000
    vocab = "" if arch.vocab_size == 50304 else f"vocabulary 50304 (ours {arch.vocab_size})"
    return Row(
        f"nanoGPT train.py, {'eager' if args.dry else 'compile'}",
        step,
        args.batch_size * arch.block_size,
        fpt,
        note=vocab,
    )


def muon_steps(args, layers: int, d: int) -> list[Row]:
    """The optimizer step alone over GPT-2's hidden matrices: torch.optim.Muon vs BatchedMuon, interleaved."""
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers
    gen = torch.Generator().manual_seed(0)
    makers = {
        "torch.optim.Muon step": torch.optim.Muon,
        "gpt2kit BatchedMuon step": BatchedMuon,
    }
    opts = {}
    for name, make in makers.items():
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opts[name] = make(params, lr=0.02)
    times: dict[str, list[float]] = {name: [] for name in makers}
    for i in range(12):
        for name, opt in opts.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return [Row(n, statistics.median(t), 0, 0.0, note=f"{len(shapes)} matrices") for n, t in times.items()]


def gpu_tests(args) -> Row:
    """``pytest -m gpu`` (the suite's GPU-marked tests) as one row: counts and wall time."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/"]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=args.tests_timeout)
        summary = (done.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    except subprocess.TimeoutExpired:
        summary = f"stopped after {args.tests_timeout} s"
    return Row("pytest -m gpu", time.perf_counter() - start, 0, 0.0, note=summary)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the timing (compilation)")
    p.add_argument(
        "--batch_size", type=int, default=12, help="the recipe's micro-batch of 1024-token windows"
    )
    p.add_argument(
        "--nanogpt", type=Path, default=os.environ.get("NANOGPT"), help="a karpathy/nanoGPT checkout"
    )
    p.add_argument("--dry", action="store_true", help="tiny model on the CPU, a few steps: tests the script")
    p.add_argument("--timeout", type=int, default=150, help="seconds for nanoGPT's run")
    p.add_argument(
        "--tests", action="store_true", help="also run the GPU-marked tests (pytest -m gpu), one row"
    )
    p.add_argument("--tests_timeout", type=int, default=150)
    args = p.parse_args()
    if args.dry:
        args.steps, args.warmup, args.batch_size = min(args.steps, 6), min(args.warmup, 2), 2
        args.accelerator, args.precision = "cpu", "32-true"
        arch = preset("nano", vocab_size=128)
    else:
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device: run on a GPU, or pass --dry to check the script on the CPU")
        args.accelerator, args.precision = "gpu", "bf16-mixed"
        arch = preset("gpt2", vocab_size=50304)
        torch.set_float32_matmul_precision("high")
    if args.nanogpt and not (args.nanogpt / "train.py").is_file():
        sys.exit(f"error: {args.nanogpt} has no train.py: pass the folder of a karpathy/nanoGPT checkout")
    if args.accelerator == "gpu":
        name = torch.cuda.get_device_name()
        peak, basis = next(
            ((v, "datasheet dense bf16") for k, v in DATASHEET_BF16_DENSE if k in name), (None, "")
        )
        if peak is None:
            peak, basis = measure_peak_flops("cuda", torch.bfloat16), "measured bf16 matmul peak"
    else:
        name = "CPU (--dry)"
        peak, basis = measure_peak_flops("cpu", torch.float32), "measured float32 matmul peak"
    print(f"device: {name}; torch {torch.__version__}; peak for MFU: {peak / 1e12:.3g} TFLOP/s ({basis})")
    print(
        f"shape: {arch.n_layer} layers x {arch.n_embd}, block {arch.block_size}, vocabulary {arch.vocab_size}, "
        f"micro-batch {args.batch_size}; {args.precision}; {args.steps} steps, first {args.warmup} not timed\n"
    )
    print("| run | ms/step | tokens/s | MFU | peak memory | × first row | note |")
    print("|---|---:|---:|---:|---:|---:|---|", flush=True)

    work = Path(tempfile.mkdtemp(prefix="gpt2kit-gpu-check-"))
    jobs = [  # each row is printed as soon as it is measured: a run cut short keeps what it had
        ("gpt2kit AdamW, eager", lambda: [train_gpt2kit(args, work, arch, compile=False, muon=False)]),
        ("gpt2kit AdamW, compile", lambda: [train_gpt2kit(args, work, arch, compile=True, muon=False)]),
        ("gpt2kit MuonAdamW, compile", lambda: [train_gpt2kit(args, work, arch, compile=True, muon=True)]),
    ]
    if args.nanogpt:
        fpt = flops_per_token(GPT(arch))
        jobs.append(("nanoGPT train.py", lambda: [train_nanogpt(args, args.nanogpt.resolve(), arch, fpt)]))
    jobs.append(("Muon step", lambda: muon_steps(args, arch.n_layer, arch.n_embd)))
    if args.tests:
        jobs.append(("pytest -m gpu", lambda: [gpu_tests(args)]))
    first = None
    for label, job in jobs:
        try:
            rows = job()
        except Exception as exc:  # one broken row must not hide the others
            rows = [Row(label, float("nan"), 0, 0.0, note=f"failed: {type(exc).__name__}: {str(exc)[:100]}")]
        for r in rows:
            if first is None and r.tokens:
                first = r.step_s
            tps = r.tokens / r.step_s if r.tokens else None
            mfu = f"{tps * r.fpt / peak:.1%}" if tps and r.fpt else "—"
            mem = f"{r.mem_gib:.1f} GiB" if r.mem_gib is not None else "—"
            ratio = f"{r.step_s / first:.2f}×" if r.tokens and first else "—"
            tok = f"{tps:,.0f}" if tps else "—"
            ms = f"{1000 * r.step_s:.1f}" if r.fpt or r.note.endswith("matrices") else f"({r.step_s:.0f} s)"
            if r.note.startswith("failed"):
                ms = "—"
            print(f"| {r.name} | {ms} | {tok} | {mfu} | {mem} | {ratio} | {r.note} |", flush=True)


if __name__ == "__main__":
    main()
