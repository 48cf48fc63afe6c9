"""Wall time per training step of the speedrun study's variants, side by side (issue 16: the modern
recipe's step must cost at most 1.3x the baseline's).

    GPT2KIT_DATA=/work/shared/data python benchmarks/bench_step_time.py [--variants baseline modern no_muon]
        [--steps 300] [--repeats 3] [--study recipes/ablations/speedrun.yaml] [--ns_dtype modern=float32]

Each named variant of the study (the baseline recipe, the modern recipe, the modern recipe without one
ingredient, ...) trains ``--steps`` steps in a temporary folder, through the ablation runner, so every
run is the same ``fit`` as the study's. The runs are interleaved (repeat 1 of every variant, then
repeat 2, ...) so that a change in the machine's load falls on all of them alike. The time per step is
what the runs log: ``tokens_per_sec`` (the time from one training step to the next, optimizer step
included, validation excluded), its median over the logged intervals after the first. The ratio to the
baseline is taken within each repeat; the median of those is printed.

``--ns_dtype VARIANT=DTYPE`` adds a copy of a Muon variant whose Newton-Schulz iterations run in DTYPE
(``MuonAdamW(ns_dtype=...)``: auto, bfloat16, float32), named ``VARIANT@DTYPE``: on a CPU with native
bfloat16, ``modern@float32`` beside ``modern`` shows what the step costs where bfloat16 is not native
(and ``modern@bfloat16`` on a CPU without it, what torch.optim.Muon's bfloat16 costs there).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

from gpt2kit.ablate.runner import run_all
from gpt2kit.ablate.study import load_study, plan, read_metrics

STUDY = Path(__file__).resolve().parents[1] / "recipes" / "ablations" / "speedrun.yaml"


def step_ms(run, tokens_per_step: int) -> float:
    """Median milliseconds per training step over the run's logged intervals, the first one left out."""
    rates = [r["tokens_per_sec"] for r in read_metrics(run) if "tokens_per_sec" in r][1:]
    if not rates:
        raise SystemExit(f"error: {run.label} logged no tokens_per_sec: give --steps >= 3 log intervals")
    return 1000 * tokens_per_step / statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=str(STUDY))
    p.add_argument("--variants", nargs="+", default=["baseline", "modern", "no_muon"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", default="baseline")
    p.add_argument("--ns_dtype", nargs="*", default=[], metavar="VARIANT=DTYPE")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as out:
        study = load_study(args.study, out)
        known = {v.name: v for v in study.variants}
        if missing := [v for v in args.variants if v not in known]:
            raise SystemExit(f"error: {missing[0]} is not a variant of {args.study}: {', '.join(known)}")
        for pair in args.ns_dtype:
            name, _, dtype = pair.partition("=")
            if name not in known or dtype not in ("auto", "bfloat16", "float32"):
                raise SystemExit(f"error: --ns_dtype {pair}: give VARIANT=auto|bfloat16|float32")
            extra = {**known[name].overrides, "model.optimizer.init_args.ns_dtype": dtype}
            known[f"{name}@{dtype}"] = dataclasses.replace(
                known[name], name=f"{name}@{dtype}", overrides=extra
            )
            args.variants.append(f"{name}@{dtype}")
        study = dataclasses.replace(
            study,
            variants=[known[v] for v in args.variants],
            seeds=list(range(args.repeats)),
            overrides={
                **study.overrides,
                "trainer.max_steps": args.steps,
                "trainer.val_check_interval": args.steps,
                "trainer.limit_val_batches": 1,
                "trainer.log_every_n_steps": 25,
                "trainer.enable_progress_bar": False,
            },
        )
        runs = plan(study)
        if bad := [r for r in runs if r.error]:
            raise SystemExit(f"error: {bad[0].variant}: {bad[0].error}")
        runs.sort(key=lambda r: r.seed)  # interleaved: every variant's first repeat, then the second, ...
        run_all(runs)
        cfg = runs[0].config
        tokens = cfg["data"]["init_args"]["batch_size"] * cfg["model"]["arch"]["block_size"]
        ms = {(r.variant, r.seed): step_ms(r, tokens) for r in runs}
    print(f"load average after: {os.getloadavg()}\n")
    print(f"| variant | ms per step (median of {args.repeats}) | per repeat | × {args.baseline} |")
    print("|---|---:|---|---:|")
    for v in args.variants:
        mine = [ms[v, s] for s in range(args.repeats)]
        ratio = statistics.median(ms[v, s] / ms[args.baseline, s] for s in range(args.repeats))
        each = ", ".join(f"{x:.1f}" for x in mine)
        print(f"| {v} | {statistics.median(mine):.1f} | {each} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
