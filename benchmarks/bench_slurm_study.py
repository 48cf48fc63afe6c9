"""The SLURM launcher's overhead: one small study through ``--launcher local --parallel 2`` and through a
SLURM cluster (e.g. the one-node ``scripts/local-slurm.sh up``), and the time from a requeue signal to the
resumed run's first step.

    scripts/local-slurm.sh up && export SLURM_CONF=/tmp/gpt2kit-slurm/slurm.conf
    python benchmarks/bench_slurm_study.py [--variants 4] [--seeds 2] [--steps 300] [--out /tmp/bench-slurm]

Prints the wall time of each launcher (from the command's start to the last run's end; the local one
first, then SLURM, on the same idle-or-not machine: compare them side by side) and, for the requeue,
the seconds from ``scancel --signal=USR2`` to the job being requeued and to the resumed run's first step
(SLURM holds a requeued job back for about two minutes before it may start again: that is part of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HELPER = """
import time
import lightning as L

class Progress(L.Callback):
    def __init__(self, path: str, sleep_s: float = 0.0) -> None:
        self.path, self.sleep_s = path, sleep_s
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {time.time()}\\n")
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.sleep_s)
"""
TINY = {
    "model.arch.n_layer": 2,
    "model.arch.n_head": 2,
    "model.arch.n_embd": 64,
    "model.arch.block_size": 64,
    "trainer.val_check_interval": 100,
    "trainer.limit_val_batches": 5,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}
VARIANTS = {
    "gpt2": {},
    "rms": {"model.norm": "RMSNorm"},
    "rope": {"model.position": "RotaryPosition"},
    "swiglu": {"model.mlp": "SwiGLUMLP"},
    "alibi": {"model.position": "ALiBiPosition"},
}


def study(out: Path, name: str, variants: int, seeds: int, steps: int, **extra) -> Path:
    spec = {
        "base": str(REPO / "recipes/pretrain/shakespeare-char.yaml"),
        "out_dir": str(out / name),
        "seeds": list(range(1, seeds + 1)),
        "overrides": {**TINY, "trainer.max_steps": steps, **extra.pop("overrides", {})},
        "variants": dict(list(VARIANTS.items())[:variants]),
        "launcher": {"time": 60, "cpus_per_task": 1},
        **extra,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def ablate(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gpt2kit", "ablate", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="/tmp/bench-slurm")
    parser.add_argument("--skip_study", action="store_true", help="only the requeue timing")
    parser.add_argument("--skip_requeue", action="store_true", help="only the study timings")
    parser.add_argument(
        "--rounds", type=int, default=1, help="local, SLURM, SLURM, local, ...: drift cancels"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_helper.py").write_text(HELPER)
    os.environ["PYTHONPATH"] = f"{out}:{REPO}:{os.environ.get('PYTHONPATH', '')}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    if not args.skip_study:
        n = args.variants * args.seeds
        times: dict[str, list[float]] = {"local": [], "slurm": []}
        for r in range(args.rounds):
            order = ("local", "slurm") if r % 2 == 0 else ("slurm", "local")
            for launcher in order:
                path = study(out, f"{launcher}{r}", args.variants, args.seeds, args.steps)
                how = ["--parallel", "2"] if launcher == "local" else ["--launcher", "slurm", "--wait"]
                times[launcher].append(ablate("--config", str(path), *how))
        local, slurm = statistics.median(times["local"]), statistics.median(times["slurm"])
        print(f"study of {n} runs x {args.steps} steps, median of {args.rounds}: local --parallel 2 {local:.1f} s "
              f"{times['local']}; SLURM {slurm:.1f} s {times['slurm']} ({(slurm - local) / n:+.1f} s per run)")  # fmt: skip
    if args.skip_requeue:
        return

    progress = out / "progress"
    progress.unlink(missing_ok=True)
    slow = {"class_path": "bench_helper.Progress", "init_args": {"path": str(progress), "sleep_s": 0.2}}
    path = study(out, "requeue", 1, 1, 40, overrides={"trainer.callbacks": [slow]})
    ablate("--config", str(path), "--launcher", "slurm")
    run_json = out / "requeue" / "gpt2" / "seed1" / "run.json"
    job = yaml.safe_load(run_json.read_text())["job_id"]
    while not progress.is_file() or len(progress.read_text().splitlines()) < 5:
        time.sleep(0.2)
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    requeued = None
    while requeued is None:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if state.strip() == "PENDING":
            requeued = time.time()
        time.sleep(0.2)
    ablate("--config", str(path), "--launcher", "slurm", "--wait")
    rows = [line.split() for line in progress.read_text().splitlines()]
    steps = [int(s) for s, _ in rows]
    first = next(i for i in range(1, len(steps)) if float(rows[i][1]) > requeued)
    print(f"requeue: signal -> requeued (pending) {requeued - signalled:.1f} s; signal -> resumed run's first step "
          f"(step {steps[first]}) {float(rows[first][1]) - signalled:.1f} s; steps trained once each: "
          f"{steps == list(range(len(steps)))}")  # fmt: skip


if __name__ == "__main__":
    main()
