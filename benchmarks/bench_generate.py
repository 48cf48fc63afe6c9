"""Decoding speed: gpt2kit's generation engine vs transformers' ``generate(use_cache=True)``.

    python benchmarks/bench_generate.py [--new_tokens 128] [--repeats 3] [--threads N] [--device cpu]

Both sides decode greedily from the same random GPT-2 small weights (124M, built locally; nothing
is downloaded): a 16-token prompt, 128 new tokens, no early stop. Runs alternate between the two
sides, and each figure is the median of ``--repeats`` runs after one warm-up run. Reported:

* batch 1, fp32 and bf16 weights, and gpt2kit's int8 weights with each kernel (CPU; ``--dtype int8``
  runs the one printed, see gpt2kit.decoding.int8): tokens/s
  (new tokens over the whole call, prefill included) and time to first token (prefill + the first
  sampled token);
* the same tokens/s as a fraction of the memory-bandwidth bound: at batch 1 every new token reads
  every weight once, so the bound is (GB/s of a large tensor copy) / (bytes of weights);
* batch 8 (eight 16-token prompts): new tokens/s over all rows.

Target: at batch 1, gpt2kit at least 2x transformers. On a shared machine, numbers move with the
load of other processes; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch

from gpt2kit import GPT, preset
from gpt2kit.config import SamplingConfig
from gpt2kit.decoding.int8 import quantize_int8, resolve_kernel
from gpt2kit.decoding.static import requests_for, static_engine
from gpt2kit.interop.hf import state_from_hf

PROMPT = 16


def copy_bandwidth(device: str, gib: float = 1.0) -> float:
    """GB/s moved (read + written) by copying a large tensor, best of 5."""
    n = int(gib * 2**30) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def models(device: str):
    """The same random GPT-2 small weights as a transformers model and as a gpt2kit GPT."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    ours = GPT(preset("gpt2")).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in state_from_hf(hf.state_dict()).items()})
    return hf.to(device), ours.to(device)


def time_ours(model: GPT, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """(seconds to first token, seconds for all new tokens)."""
    cfg = SamplingConfig(max_new_tokens=new, temperature=0, stop_at_eot=False)
    rows = prompt.tolist()
    firsts: list[float] = []
    _sync(str(prompt.device))
    start = time.perf_counter()
    engine = static_engine(model, rows, cfg, None)  # a static batch: submit all, run until idle
    for req in requests_for(rows, cfg):
        req.listener = lambda ev: firsts.append(time.perf_counter()) if not firsts else None
        engine.submit(req)
    engine.run_until_idle()
    _sync(str(prompt.device))
    return firsts[0] - start, time.perf_counter() - start


def time_hf(model, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    kwargs = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True, pad_token_id=0)
    kwargs.update(eos_token_id=None)

    def run(n: int) -> float:
        _sync(str(prompt.device))
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)
        _sync(str(prompt.device))
        assert out.shape[1] == prompt.shape[1] + n
        return time.perf_counter() - start

    return run(1), run(new)


def compare(
    hf, ours: GPT, prompt: torch.Tensor, new: int, repeats: int, int8: dict[str, GPT] | None = None
) -> dict[str, tuple[float, float]]:
    """Median (first-token, total) seconds of each side; runs alternate between the sides."""
    fns: dict[str, Callable[[], tuple[float, float]]] = {
        "transformers": lambda: time_hf(hf, prompt, new),
        "gpt2kit": lambda: time_ours(ours, prompt, new),
    }
    for name, model in (int8 or {}).items():
        fns[name] = functools.partial(time_ours, model, prompt, new)
    for fn in fns.values():
        fn()  # warm-up
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            results[name].append(fn())
    return {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip_batch8", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new, device = args.new_tokens, args.device
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bandwidth = copy_bandwidth(device)
    print(f"copy bandwidth: {bandwidth:.1f} GB/s\n")
    hf, ours = models(device)
    n_params = ours.num_params()
    # the int8 copy of the float32 model, made once (generate --dtype int8 makes it per run); its int8
    # weights are a snapshot, so converting `ours` to bf16 and back leaves them as they are
    int8 = None
    if device == "cpu":  # the default kernel (float activations) and FBGEMM's (int8 activations)
        int8 = {f"int8 {k}": quantize_int8(ours, k) for k in ("weight_only", "dynamic")}
        print(f"--dtype int8 (kernel auto) runs int8 {resolve_kernel('auto')} on this CPU")
    torch.manual_seed(1)
    prompt = torch.randint(0, 50257, (1, PROMPT), device=device)

    print(f"batch 1: {PROMPT}-token prompt, {new} new tokens, greedy (median of {args.repeats})")
    header = f"{'weights':8} {'side':14} {'tok/s':>7} {'of bound':>9} {'first token':>12}"
    print(header + "\n" + "-" * len(header))
    for dtype in (torch.float32, torch.bfloat16):
        hf, ours = hf.to(dtype), ours.to(dtype)
        runs = compare(hf, ours, prompt, new, args.repeats, int8 if dtype == torch.float32 else None)
        for side, (first, total) in runs.items():
            rate = new / total
            size = 1 if "int8" in side else dtype.itemsize
            bound = bandwidth * 1e9 / (n_params * size)
            name = "int8" if size == 1 else str(dtype).removeprefix("torch.")
            print(f"{name:8} {side:14} {rate:7.1f} {rate / bound:8.0%} {first * 1000:9.0f} ms")
        bound = bandwidth * 1e9 / (n_params * dtype.itemsize)
        print(f"{'':8} {'bound':14} {bound:7.1f}")
        for side in runs:
            if side != "transformers":
                speedup = runs["transformers"][1] / runs[side][1]
                print(
                    f"{'':8} speed-up of {side} over transformers {str(dtype).removeprefix('torch.')}: {speedup:.2f}x"
                )
        print()

    if not args.skip_batch8:
        batch = torch.randint(0, 50257, (8, PROMPT), device=device)
        print(f"batch 8: eight {PROMPT}-token prompts, {new} new tokens each (median of {args.repeats})")
        for dtype in (torch.float32, torch.bfloat16):
            hf, ours = hf.to(dtype), ours.to(dtype)
            runs = compare(hf, ours, batch, new, args.repeats, int8 if dtype == torch.float32 else None)
            for side, (first, total) in runs.items():
                name = "int8" if "int8" in side else str(dtype).removeprefix("torch.")
                print(f"{name:8} {side:14} {8 * new / total:7.1f} tok/s   first token {first * 1000:.0f} ms")
        print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
