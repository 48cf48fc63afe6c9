"""GPU throughput check: the GPT-2 124M shape trained for a few hundred steps in bf16 with torch.compile.

    python benchmarks/gpu_check.py [--steps 300] [--batch-size 24] [--no-compile] [--precision bf16-mixed]

Runs through gpt2kit as a user would (GPTLitModule, TextDataModule, Lightning Trainer) and reports
the median tokens/s after the warm-up (compilation, allocator) and MFU, against both the matmul peak
gpt2kit measures on the device (what the training logs show as ``mfu``) and the datasheet dense bf16
peak where the GPU is known. Target: MFU >= 45% on an H200.

Data: random text written to a temporary file (the machine may be offline; throughput does not
depend on the text), char-tokenized; the model's vocabulary is GPT-2's padded to 50304 as nanoGPT
does (a multiple of 64 for the tensor cores), so the head costs what GPT-2's does.

``--accelerator cpu --preset nano --steps 5`` smoke-tests the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from gpt2kit import preset
from gpt2kit.data import TextDataModule
from gpt2kit.lit import GPTLitModule, OptimConfig
from gpt2kit.perf import flops_per_token, measure_peak_flops, precision_dtype

DATASHEET_BF16_DENSE = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
"""Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's datasheets (SXM parts; no sparsity)."""


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50, help="steps excluded from the timing")
    parser.add_argument("--batch-size", type=int, default=24, help="sequences of block_size tokens per step")
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    torch.set_float32_matmul_precision("high")  # TF32 for whatever runs in fp32
    work = Path(tempfile.mkdtemp(prefix="gpt2kit-gpu-check-"))
    rng = random.Random(0)
    letters = string.ascii_letters + " \n.,;:!?'"
    (work / "random.txt").write_text("".join(rng.choices(letters, k=4_000_000)))

    arch = preset(args.preset, vocab_size=50304 if args.preset.startswith("gpt2") else 128)
    data = TextDataModule(
        str(work / "random.txt"), block_size=arch.block_size, batch_size=args.batch_size,
        val_max_windows=8, cache=str(work / "prepared"), num_workers=2,
    )  # fmt: skip
    module = GPTLitModule(arch, optim=OptimConfig(lr=6e-4, warmup_steps=20), compile=not args.no_compile)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.steps,
        gradient_clip_val=1.0, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    wall = time.perf_counter() - start

    times = timer.times[args.warmup :] if len(timer.times) > args.warmup + 2 else timer.times
    step = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
    tokens = args.batch_size * arch.block_size / step
    device = trainer.strategy.root_device
    fpt = flops_per_token(module.model, arch.block_size)
    peak = measure_peak_flops(device, precision_dtype(args.precision))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sheet = next((v for k, v in DATASHEET_BF16_DENSE.items() if k in name), None)

    print(f"device: {name}; torch {torch.__version__}; lightning {L.__version__}")
    print(
        f"model: {args.preset} shape, {module.model.num_params() / 1e6:.1f} M parameters, "
        f"{fpt / 1e9:.3f} GFLOP/token; batch {args.batch_size} x {arch.block_size}; {args.precision}; "
        f"compile={not args.no_compile}"
    )
    print(
        f"steps: {len(timer.times)} in {wall:.0f} s (warm-up {args.warmup} excluded); median step {step * 1e3:.1f} ms"
    )
    print(f"tokens/s: {tokens:,.0f}")
    mfu = tokens * fpt / peak
    print(
        f"MFU vs measured matmul peak ({peak / 1e12:.0f} TFLOP/s): {mfu:.1%}  (target >= 45%: {'PASS' if mfu >= 0.45 else 'FAIL'})"
    )
    if sheet:
        print(f"MFU vs datasheet dense bf16 peak ({sheet / 1e12:.0f} TFLOP/s): {tokens * fpt / sheet:.1%}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"final train_loss: {float(trainer.callback_metrics.get('train_loss', float('nan'))):.3f}")


if __name__ == "__main__":
    main()
