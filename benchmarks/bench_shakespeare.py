"""Quality: the Shakespeare char recipe (nanoGPT's CPU baby GPT) must reach val loss <= 1.89 at 2000 steps.

    python benchmarks/bench_shakespeare.py [--seeds 1337 1 2] [--max_steps 2000]

Runs the recipe through the CLI once per seed, reads the final val_loss from the CSV logs, and prints
a table with the median. nanoGPT's reference for this configuration is 1.886.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "shakespeare-char.yaml"
TARGET = 1.89


def run(seed: int, max_steps: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable, "-m", "gpt2kit", "fit", "--config", str(RECIPE),
                f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
                f"--trainer.max_steps={max_steps}", "--trainer.enable_progress_bar=false",
            ],
            cwd=tmp, check=True, capture_output=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        with open(next(Path(tmp).rglob("metrics.csv"))) as f:
            rows = list(csv.DictReader(f))
        val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
        return val[-1], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--max_steps", type=int, default=2000)
    args = parser.parse_args()
    results = []
    print("| seed | val loss | wall time (s) |\n|---|---|---|")
    for seed in args.seeds:
        loss, wall = run(seed, args.max_steps)
        results.append((loss, wall))
        print(f"| {seed} | {loss:.4f} | {wall:.0f} |", flush=True)
    med = statistics.median(r[0] for r in results)
    wall = statistics.median(r[1] for r in results)
    verdict = "PASS" if med <= TARGET else "FAIL"
    print(
        f"\nmedian val loss {med:.4f} (target <= {TARGET}, nanoGPT 1.886): {verdict}; median wall time {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
