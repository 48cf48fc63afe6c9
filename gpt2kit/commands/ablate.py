"""``python -m gpt2kit ablate --config STUDY``: an ablation study run here or on SLURM, then its report."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from gpt2kit.ablate import ablate, load_study, plan
from gpt2kit.ablate.launcher import LAUNCHERS
from gpt2kit.ablate.study import Run, Study
from gpt2kit.errors import GPT2KitError

log = logging.getLogger("gpt2kit")


def plan_summary(study: Study, runs: Sequence[Run]) -> str:
    """What a study would run: the base, the shared overrides, each variant's overrides and folders."""
    from gpt2kit.ablate.study import override_args

    lines = [
        f"base: {study.base}",
        f"every run: {' '.join(override_args(study.overrides)) or '(no overrides)'}",
    ]
    width = max(len(v.name) for v in study.variants)
    for v in study.variants:
        mine = [r for r in runs if r.variant == v.name]
        what = f"does not parse: {mine[0].error}" if mine[0].error else " ".join(override_args(v.overrides))
        seeds = ",".join(str(r.seed) for r in mine)
        lines.append(
            f"  {v.name:<{width}}  {what or '(the base recipe)'}  → {mine[0].dir.parent}/seed{{{seeds}}}"
        )
    n_bad = len({r.variant for r in runs if r.error})
    lines.append(
        f"{len(runs)} runs: {len(study.variants)} variants × {len(study.seeds)} seeds; {n_bad} variant(s) do not parse"
    )
    return "\n".join(lines) + "\n"


def ablate_main(args: Sequence[str]) -> None:
    """Run an ablation study: a base recipe × variants/grid × seeds, then results.csv, report.md, plot.png.

    Finished runs are skipped and unfinished ones resumed, so the same command continues an interrupted
    study.
    """
    from gpt2kit.parsing import CommandParser

    parser = CommandParser(prog="python -m gpt2kit ablate", description=ablate_main.__doc__)
    parser.add_argument("--config", required=True, help="the study file (see recipes/ablations/)")
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: train here (--parallel runs at once); slurm: submit the runs that are not done, queued "
        "or running as one SLURM job array (the study's launcher: block says what each asks for)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs to train at once: 1 runs them one after another in this process; N > 1 in N subprocesses "
        "that share the CPU cores (OMP_NUM_THREADS), one GPU each when there are several. With --launcher "
        "slurm: the most jobs of the array running at once (launcher: max_parallel)",
    )
    parser.add_argument("--out_dir", help="folder of the runs and the report (default: the study's out_dir)")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="list the runs and their commands, then stop (--launcher slurm: print the sbatch script too)",
    )
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from the runs there")
    parser.add_argument(
        "--wait", action="store_true", help="--launcher slurm: wait for the jobs, then report"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="--launcher slurm: one line per run (state, step, job id, error)",
    )
    parser.add_argument("--cancel", action="store_true", help="--launcher slurm: scancel the study's jobs")
    cfg = parser.parse_args(list(args))
    study = load_study(cfg.config, cfg.out_dir)
    slurm_only = [f"--{k}" for k in ("wait", "status", "cancel") if getattr(cfg, k)]
    if slurm_only and cfg.launcher != "slurm":
        raise GPT2KitError(f"{slurm_only[0]} is for SLURM studies: add --launcher slurm")
    if cfg.launcher == "slurm" and cfg.parallel is not None:
        study.launcher.max_parallel = cfg.parallel
    if cfg.status or cfg.cancel:
        from gpt2kit.ablate import slurm

        runs = plan(study)
        if cfg.cancel:
            jobs = slurm.cancel(runs)
            log.info("ablate: cancelled %d job(s)%s", len(jobs), f": {' '.join(jobs)}" if jobs else "")
        sys.stdout.write(slurm.status_lines(runs))
        return
    runs = ablate(
        study,
        cfg.parallel or 1,
        dry_run=cfg.dry_run,
        report_only=cfg.report_only,
        launcher=cfg.launcher,
        wait=cfg.wait,
    )
    if cfg.dry_run:
        sys.stdout.write(plan_summary(study, runs))
        if cfg.launcher == "slurm":
            from gpt2kit.ablate import slurm

            todo = [r for r in runs if r.config is not None]
            sys.stdout.write(f"\n# the sbatch script (one array of {len(todo)} runs):\n")
            sys.stdout.write(slurm.sbatch_script(study, todo, study.launcher.partition))
