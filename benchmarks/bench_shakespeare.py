"""Quality: the Shakespeare char recipe (nanoGPT's CPU baby GPT) must reach val loss <= 1.89 at 2000 steps.

    python benchmarks/bench_shakespeare.py [--seeds 1337 1 2] [--max_steps 2000] [--reference] [--spread]
    python benchmarks/bench_shakespeare.py --recipe recipes/pretrain/shakespeare-char-modern.yaml --target 1.60
    python benchmarks/bench_shakespeare.py --nanogpt ~/src/nanoGPT [--seeds 1337]
    python benchmarks/bench_shakespeare.py --nanogpt ~/src/nanoGPT --max_steps 300 --seeds 1337 1337 1337  # step time

Runs the recipe through the CLI once per seed, reads the validation losses from the CSV logs (the
full validation: every non-overlapping 64-token window of the last 10%), and prints a table with the
median, the loss at step 500 and the first validation step below nanoGPT's 1.898. nanoGPT's
reference for this configuration is 1.886 (its 20-batch estimate; 1.898 on the full validation).

``--nanogpt PATH`` runs nanoGPT's own ``train.py`` from a checkout of karpathy/nanoGPT (its README's
CPU command, same seed and steps; the character data is prepared there from the same text if it is
not yet), loads the ``ckpt.pt`` it saves, and evaluates it on the same validation windows, beside
gpt2kit's run. No nanoGPT code is part of gpt2kit: only its checkpoint's names are mapped.

Step time, both sides measured the same way: nanoGPT's ``train.py`` prints ``iter N: ... time Y ms``
for every iteration (``--log_interval=1``): the time from the end of one optimizer step to the end of
the next (batch, forward, backward, clipping, step, its logging). gpt2kit's ``fit`` gets a callback
(``StepTimes``) that takes the same interval, from one ``on_train_batch_end`` to the next. Each side's
step time is the median over its iterations after the first ``WARMUP`` (the few that include a
validation or a checkpoint fall out of the median). The runs alternate (gpt2kit, nanoGPT, gpt2kit,
...), one pair per seed, both in a fresh process with torch's default thread count (printed; or
``--threads N`` for both); the ratio nanoGPT ms / gpt2kit ms is taken within each pair and its
median printed: >= 1 means gpt2kit's step is at least as fast.

Beside each run, ``--reference`` trains the same model with nanoGPT's own loop written plainly (its
``get_batch``: ``torch.randint`` windows; AdamW; warmup + cosine; clipping) for the same steps and
seed, and evaluates it on the same validation windows as gpt2kit. It also prints nanoGPT's
estimator (the mean of 20 random validation batches), whose spread shows how far one reported
number can move. ``--spread`` measures that spread exactly for each gpt2kit model.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parent
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "shakespeare-char.yaml"
TARGET = 1.89
NANOGPT_FULL_VAL = 1.898  # nanoGPT's train.py, seed 1337, evaluated on every validation window (issue 16)
WARMUP = 10  # iterations left out of each side's median step time


class StepTimes(L.Callback):
    """Writes the time between consecutive training-batch ends (nanoGPT's ``dt``) to a JSON file.

    Given to ``fit`` by ``run`` (``--trainer.callbacks+=``), with the benchmarks folder on the path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.seconds: list[float] = []
        self._last: float | None = None
        self.clock = time.perf_counter

    def on_train_batch_end(self, *args) -> None:
        now = self.clock()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now

    def on_train_end(self, *args) -> None:
        Path(self.path).write_text(json.dumps({"threads": torch.get_num_threads(), "seconds": self.seconds}))


def median_ms(seconds: list[float], warmup: int = WARMUP) -> float:
    """Median step time in ms, the first ``warmup`` steps left out (all of them when that leaves too few)."""
    steady = seconds[warmup:] if len(seconds) > warmup + 2 else seconds
    return 1000 * statistics.median(steady)


def child_env(threads: int | None) -> dict[str, str]:
    """The environment of both sides' processes: this one's, the benchmarks folder importable (for
    ``StepTimes``), and ``OMP_NUM_THREADS`` when a thread count is asked for."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def estimator_spread(ckpt: Path, draws: int = 10_000) -> tuple[float, float, float]:
    """How far nanoGPT's reported val loss moves for one model: (loss over all windows, std, P(<= 1.886)).

    nanoGPT reports the mean loss of ``eval_iters=20`` batches of 12 windows drawn at random from
    the validation split (its CPU recipe). This computes the loss of every window it could draw,
    then draws that estimate ``draws`` times.
    """
    from gpt2kit.checkpoint import load_module
    from gpt2kit.data import TextDataModule

    model = load_module(ckpt).model.eval()
    block = model.config.block_size
    prepared = TextDataModule("tinyshakespeare", block_size=block, batch_size=12).prepared()
    val = np.memmap(prepared.path / "val.bin", dtype=np.dtype(prepared.meta["dtype"]), mode="r")
    val = torch.from_numpy(val.astype(np.int64))
    n = len(val) - block
    window_loss = torch.empty(n)
    with torch.no_grad():
        for i in range(0, n, 2048):
            xy = val[torch.arange(i, min(i + 2048, n))[:, None] + torch.arange(block + 1)]
            logits = model(xy[:, :-1])
            window_loss[i : i + 2048] = F.cross_entropy(
                logits.transpose(1, 2), xy[:, 1:], reduction="none"
            ).mean(1)
    generator = torch.Generator().manual_seed(0)
    estimates = window_loss[torch.randint(n, (draws, 20 * 12), generator=generator)].mean(1)
    return window_loss.mean().item(), estimates.std().item(), (estimates <= 1.886).float().mean().item()


def run(
    seed: int,
    max_steps: int,
    spread: bool = False,
    recipe: Path = RECIPE,
    threads: int | None = None,
    fit_args: tuple[str, ...] = (),
) -> tuple[float, float, tuple | None, dict[int, float], list[float], int]:
    """One fit of ``recipe`` (plus ``fit_args``): (final val loss, wall time, spread stats, {step: val
    loss}, seconds per step, torch's thread count in the fit)."""
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "step_times.json"
        timer = {"class_path": "bench_shakespeare.StepTimes", "init_args": {"path": str(times)}}
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable, "-m", "gpt2kit", "fit", "--config", str(recipe),
                f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
                f"--trainer.max_steps={max_steps}", "--trainer.enable_progress_bar=false",
                f"--trainer.callbacks+={json.dumps(timer)}", *fit_args,
            ],
            cwd=tmp, check=True, capture_output=True, env=child_env(threads),
        )  # fmt: skip
        wall = time.perf_counter() - start
        with open(next(Path(tmp).rglob("metrics.csv"))) as f:
            rows = list(csv.DictReader(f))
        curve = {int(r["step"]) + 1: float(r["val_loss"]) for r in rows if r.get("val_loss")}  # steps done
        stats = estimator_spread(next(Path(tmp).rglob("last.ckpt"))) if spread else None
        steps = json.loads(times.read_text())
        return curve[max(curve)], wall, stats, curve, steps["seconds"], steps["threads"]


# --- nanoGPT's own train.py, from the user's checkout ---------------------------------------------------------

NANOGPT_CPU = [  # nanoGPT's README, "I only have a macbook": the baby GPT on a CPU
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
    "--dropout=0.0",
]  # fmt: skip


def state_from_nanogpt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanoGPT's ``model`` state dict → gpt2kit GPT names. The names are Hugging Face GPT-2's (see
    gpt2kit.interop.hf) but its layers are ``nn.Linear``, so nothing is transposed."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("_orig_mod.").removeprefix("transformer.")  # torch.compile's prefix
        if key == "lm_head.weight" or key.endswith(".attn.bias"):  # tied to wte; the causal-mask buffer
            continue
        out[
            key.replace("h.", "blocks.", 1) if key.startswith("h.") else key.replace("wpe.", "position.wpe.")
        ] = value
    return out


def nanogpt_model(ckpt: Path) -> torch.nn.Module:
    """A gpt2kit GPT holding the weights of a nanoGPT ``ckpt.pt`` (exact GELU, as nanoGPT's nn.GELU())."""
    from gpt2kit import GPT, GPTConfig
    from gpt2kit.nn import ExactGeluMLP, LayerNorm

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    args = saved["model_args"]
    config = GPTConfig(
        n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"], block_size=args["block_size"],
        vocab_size=args["vocab_size"], bias=args["bias"], dropout=0.0,
    )  # fmt: skip
    norm = functools.partial(LayerNorm, bias=args["bias"])
    model = GPT(config, norm=norm, mlp=ExactGeluMLP)
    model.load_state_dict(state_from_nanogpt(saved["model"]))  # strict: every tensor, no stray name
    return model.eval()


def full_validation(model: torch.nn.Module, val: np.ndarray, block: int = 64) -> float:
    """Mean next-token loss over every non-overlapping window of ``val`` (gpt2kit's validation windows)."""
    total = count = 0.0
    starts = list(range(0, len(val) - block, block))
    with torch.no_grad():
        for i in range(0, len(starts), 64):
            xy = torch.stack(
                [torch.from_numpy(val[s : s + block + 1].astype(np.int64)) for s in starts[i : i + 64]]
            )
            logits = model(xy[:, :-1])
            total += F.cross_entropy(logits.flatten(0, 1), xy[:, 1:].flatten(), reduction="sum").item()
            count += xy[:, 1:].numel()
    return total / count


def shakespeare_text() -> str:
    from gpt2kit.corpora import fetch_corpus

    return (fetch_corpus("tinyshakespeare") / "input.txt").read_text(encoding="utf-8")


def nanogpt_val_tokens(text: str) -> np.ndarray:
    """The last 10% of the text in nanoGPT's character ids (its prepare.py: sorted set of the characters)."""
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    val = text[int(len(text) * 0.9) :]
    return np.array([stoi[c] for c in val], dtype=np.uint16)


# Runs train.py as `python train.py ARGS` would, after printing the process's torch thread count.
NANOGPT_LAUNCH = (
    "import runpy, sys, torch; print(f'torch threads: {torch.get_num_threads()}', flush=True); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def nanogpt_step_seconds(stdout: str) -> tuple[list[float], int | None]:
    """(seconds of every iteration nanoGPT's train.py printed, in order; its torch thread count)."""
    ms = re.findall(r"^iter \d+: loss [-\d.naif]+, time ([\d.]+)ms", stdout, re.M)
    threads = re.search(r"^torch threads: (\d+)$", stdout, re.M)
    return [float(m) / 1000 for m in ms], int(threads.group(1)) if threads else None


def run_nanogpt(
    checkout: Path, seed: int, max_steps: int, threads: int | None = None
) -> tuple[float, float, list[float], int | None]:
    """nanoGPT's train.py from ``checkout``: (full-validation loss of its final checkpoint, wall time,
    seconds per iteration as it printed them, torch's thread count in it).

    karpathy/nanoGPT's train.py has no seed option (it seeds 1337 itself), so ``seed`` is not passed on.
    """
    checkout = checkout.expanduser().resolve()
    if not (checkout / "train.py").is_file():
        sys.exit(f"error: {checkout} has no train.py: pass the folder of a karpathy/nanoGPT checkout")
    text = shakespeare_text()
    data = checkout / "data" / "shakespeare_char"
    if not (data / "val.bin").is_file():  # prepare.py downloads input.txt unless it is there
        data.mkdir(parents=True, exist_ok=True)
        if not (data / "input.txt").is_file():
            (data / "input.txt").write_text(text, encoding="utf-8")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as out:
        # train.py saves ckpt.pt when it evaluates (every eval_interval iterations, 250 in its config):
        # a run of steps that are not a multiple of 250 evaluates (and saves) at its end instead
        every = 250 if max_steps % 250 == 0 else max_steps
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", NANOGPT_LAUNCH, "train.py", *NANOGPT_CPU, f"--max_iters={max_steps}",
             f"--lr_decay_iters={max_steps}", f"--eval_interval={every}", f"--out_dir={out}",
             "--always_save_checkpoint=True"],
            cwd=checkout, check=True, capture_output=True, text=True, env=child_env(threads),
        )  # fmt: skip  # no --seed: train.py always seeds 1337
        wall = time.perf_counter() - start
        model = nanogpt_model(Path(out) / "ckpt.pt")
    seconds, torch_threads = nanogpt_step_seconds(done.stdout)
    return (
        full_validation(model, nanogpt_val_tokens(text), model.config.block_size),
        wall,
        seconds,
        torch_threads,
    )


def reference(seed: int, max_steps: int) -> tuple[float, float]:
    """nanoGPT's loop over gpt2kit's model: (val loss on every validation window, nanoGPT's 20-batch estimate)."""
    from gpt2kit import GPTConfig
    from gpt2kit.data import TextDataModule
    from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor

    torch.manual_seed(seed)
    block, batch = 64, 12
    data = TextDataModule("tinyshakespeare", block_size=block, batch_size=batch)
    prepared = data.prepared()
    dtype = np.dtype(prepared.meta["dtype"])
    train, val = (np.memmap(prepared.path / f"{s}.bin", dtype=dtype, mode="r") for s in ("train", "val"))
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=block, vocab_size=data.vocab_size, bias=False)
    module = GPTLitModule(cfg, optim=OptimConfig(lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99)))
    model = module.model

    def windows(split: np.ndarray, starts) -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.stack([torch.from_numpy(split[i : i + block + 1].astype(np.int64)) for i in starts])
        return xy[:, :-1], xy[:, 1:]

    opt = torch.optim.AdamW(module.param_groups(), lr=1e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 100, max_steps, 0.1))
    for _ in range(max_steps):
        x, y = windows(train, torch.randint(len(train) - block, (batch,)).tolist())
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        total = count = 0.0
        starts = list(range(0, len(val) - block, block))  # non-overlapping, as gpt2kit's validation
        for i in range(0, len(starts), 64):
            x, y = windows(val, starts[i : i + 64])
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
        estimate = [
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
            for x, y in (windows(val, torch.randint(len(val) - block, (batch,)).tolist()) for _ in range(20))
        ]
    return total / count, float(np.mean(estimate))


def machine() -> str:
    """One line: the CPU's vector extensions, torch's kernel level and threads, the load average."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        pass
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx_vnni") or ["no AVX-512"]
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"CPU: {', '.join(wide)}; torch {torch.__version__} kernels {capability}, {torch.get_num_threads()} "
        f"threads; cores {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument(
        "--recipe", type=Path, default=RECIPE, help="the fit recipe to run (default: the baby GPT)"
    )
    parser.add_argument("--target", type=float, default=TARGET, help="the median final val loss to reach")
    parser.add_argument("--reference", action="store_true", help="also run nanoGPT's plain loop per seed")
    parser.add_argument(
        "--nanogpt", type=Path, help="a karpathy/nanoGPT checkout: run its train.py per seed too"
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="how far nanoGPT's 20-batch estimate moves, for each final model",
    )
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's own choice)"
    )
    parser.add_argument(
        "--fit_arg",
        action="append",
        default=[],
        help="an extra argument for gpt2kit's fit, e.g. --fit_arg=--model.mlp=ExactGeluMLP (nanoGPT's GELU)",
    )
    args = parser.parse_args()
    print(machine(), flush=True)
    if args.fit_arg:
        print(f"gpt2kit fit with: {' '.join(args.fit_arg)}", flush=True)
    results, refs, nano = [], [], []
    head = "| seed | gpt2kit val loss | at step 500 | first below 1.898 | wall time (s) | ms/step |"
    extra = (" plain nanoGPT loop | its 20-batch estimate |" if args.reference else "") + (
        " nanoGPT train.py | its wall time (s) | its ms/step | nanoGPT ms / gpt2kit ms |"
        if args.nanogpt
        else ""
    )
    print(head + extra)
    print("|---|---|---|---|---|---|" + "---|" * extra.count("|"), flush=True)
    for seed in args.seeds:
        loss, wall, stats, curve, seconds, threads = run(
            seed, args.max_steps, args.spread, args.recipe, args.threads, tuple(args.fit_arg)
        )
        results.append((loss, wall, curve, median_ms(seconds), threads))
        below = next((s for s in sorted(curve) if curve[s] < NANOGPT_FULL_VAL), None)
        row = (
            f"| {seed} | {loss:.4f} | {curve.get(500, float('nan')):.4f} | {below or 'never'} | {wall:.0f} |"
            f" {results[-1][3]:.1f} |"
        )
        if args.reference:
            refs.append(reference(seed, args.max_steps))
            row += f" {refs[-1][0]:.4f} | {refs[-1][1]:.4f} |"
        if args.nanogpt:
            n_loss, n_wall, n_seconds, n_threads = run_nanogpt(
                args.nanogpt, seed, args.max_steps, args.threads
            )
            nano.append((n_loss, n_wall, median_ms(n_seconds), n_threads))
            row += f" {n_loss:.4f} | {n_wall:.0f} | {nano[-1][2]:.1f} | {nano[-1][2] / results[-1][3]:.3f} |"
        print(row, flush=True)
        if stats:
            mean, std, below_p = stats
            print(
                f"  seed {seed}: loss over every window nanoGPT could draw {mean:.4f}; its 20-batch estimate "
                f"has std {std:.4f} and reads <= 1.886 with probability {below_p:.1%}",
                flush=True,
            )
    med = statistics.median(r[0] for r in results)
    wall = statistics.median(r[1] for r in results)
    verdict = "PASS" if med <= args.target else "FAIL"
    at = "" if args.max_steps == 2000 else f" (after {args.max_steps} steps; the target is for 2000)"
    print(
        f"\nmedian val loss {med:.4f}{at} (target <= {args.target}, nanoGPT 1.886): {verdict}; median wall time {wall:.0f} s"
    )
    print(
        f"gpt2kit step: median {statistics.median(r[3] for r in results):.1f} ms "
        f"(each run's median after {WARMUP} warm-up steps; torch threads {sorted({r[4] for r in results})})"
    )
    if refs:
        ref = statistics.median(r[0] for r in refs)
        print(f"plain nanoGPT loop, same model, seeds and validation windows: median {ref:.4f}")
    if nano:
        print(
            f"nanoGPT's train.py, same seeds, steps and validation windows: median {statistics.median(n[0] for n in nano):.4f}"
            f", median wall time {statistics.median(n[1] for n in nano):.0f} s"
        )
        ratio = statistics.median(n[2] / r[3] for n, r in zip(nano, results, strict=True))
        print(
            f"nanoGPT train.py step: median {statistics.median(n[2] for n in nano):.1f} ms (torch threads "
            f"{sorted({n[3] for n in nano}, key=str)}); nanoGPT ms / gpt2kit ms = {ratio:.3f}, median of "
            f"{len(nano)} interleaved pairs (target >= 1): {'PASS' if ratio >= 1 else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
