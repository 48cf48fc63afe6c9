"""Muon's optimizer step alone: torch.optim.Muon against gpt2kit's BatchedMuon, in each dtype, side by side.

    python benchmarks/bench_muon.py [--preset baby] [--repeats 20] [--threads N]

The hidden matrices of a model (the baby GPT of the Shakespeare recipe: 4 layers x 128, 16 matrices;
``--preset gpt2``: GPT-2 small's 48) get random gradients and take optimizer steps, the three
optimizers interleaved step by step so that a change in the machine's load falls on all alike; each
figure is the median over ``--repeats`` steps. ``BatchedMuon`` runs its Newton-Schulz iterations in
the dtype named (``auto``: what :func:`gpt2kit.training.optim.orthogonalization_dtype` picks on this machine).
On a CPU with native bfloat16 the float32 row is what a CPU without it gets from ``auto``; torch's
bfloat16 row on such a CPU is the emulated cost (issue 23: 453 ms per step on the baby GPT).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gpt2kit.training.optim import BatchedMuon, cpu_has_native_bf16, orthogonalization_dtype

SHAPES = {  # (rows, cols) of one block's matrices: c_attn, attn c_proj, c_fc, mlp c_proj
    "baby": (4, 128),
    "gpt2": (12, 768),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(SHAPES), default="baby")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, d = SHAPES[args.preset]
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers
    gen = torch.Generator().manual_seed(0)
    sides = {
        "torch.optim.Muon (bfloat16)": lambda ps: torch.optim.Muon(ps, lr=0.02),
        "BatchedMuon bfloat16": lambda ps: BatchedMuon(ps, lr=0.02, ns_dtype="bfloat16"),
        "BatchedMuon float32": lambda ps: BatchedMuon(ps, lr=0.02, ns_dtype="float32"),
        "BatchedMuon auto": lambda ps: BatchedMuon(ps, lr=0.02),
    }
    opts = {}
    for name, make in sides.items():
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(args.device)) for s in shapes]
        for q in params:
            q.grad = torch.randn(q.shape, generator=gen).to(args.device)
        opts[name] = make(params)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.repeats + 2):
        for name, opt in opts.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            opt.step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - start)
    native = cpu_has_native_bf16() if args.device == "cpu" else None
    print(
        f"{args.preset}: {len(shapes)} matrices on {args.device}; threads {torch.get_num_threads()}; "
        f"native bf16 (CPU) {native}; auto picks {orthogonalization_dtype(args.device)}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    base = statistics.median(times["torch.optim.Muon (bfloat16)"])
    print("| optimizer step | ms (median) | × torch.optim.Muon |\n|---|---:|---:|")
    for name, ts in times.items():
        ms = statistics.median(ts)
        print(f"| {name} | {1000 * ms:.1f} | {ms / base:.2f}× |")


if __name__ == "__main__":
    main()
