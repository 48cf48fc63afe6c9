"""Ablation studies: ``python -m gpt2kit ablate --config recipes/ablations/NAME.yaml``.

A study is a base recipe, the overrides every run shares, named variants and/or a grid of overrides,
and seeds (:mod:`gpt2kit.ablate.study`). Each run trains in its own folder like any ``fit``
(:mod:`gpt2kit.ablate.runner`), and the report is read back from the runs' Lightning logs
(:mod:`gpt2kit.ablate.report`)::

    runs/ablations/NAME/
      results.csv  report.md  plot.png      one row per run; mean ± std per variant; curves
      VARIANT/seedN/
        config.yaml                         the resolved config (python -m gpt2kit fit --config it)
        run.json                            status, wall time, sessions
        logs/version_*/metrics.csv          the CSVLogger's output (a resumed run adds a version)
        checkpoints/last.ckpt               what an interrupted run resumes from
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from gpt2kit.ablate.launcher import LAUNCHERS
from gpt2kit.ablate.report import collect, write_csv, write_plot, write_report
from gpt2kit.ablate.runner import run_all
from gpt2kit.ablate.study import Run, Study, load_study, plan
from gpt2kit.errors import GPT2KitError

__all__ = ["RunRecord", "Run", "Study", "ablate", "ablate_command", "load_study", "plan"]

log = logging.getLogger("gpt2kit.ablate")


class RunRecord(L.Callback):
    """What the report needs besides the losses, through the run's own loggers.

    * ``num_params`` and ``num_trainable_params``, as hyperparameters (``hparams.yaml``);
    * ``fit_time_s``, the seconds from the start of fitting to its end (or to the error or Ctrl-C that
      stopped it), as a metric (``metrics.csv``): a resumed run's sessions add up, and the time to start
      Python or read the config is not counted, so runs in this process and in subprocesses compare.
    * ``elapsed_s`` at each validation, the seconds from the start of fitting (this session's) to that
      validation's start: the wall time at which a run reached a study's ``target``.

    And when a run is stopped by a SIGTERM (a ``kill``, a cancelled, preempted or timed-out SLURM job),
    which Lightning turns into a clean stop at the end of the step, it saves ``last_checkpoint`` there:
    the resumed run loses no step and ends with the same weights as an uninterrupted one.

    The ablation runner adds it to every run's callbacks.
    """

    def __init__(self, last_checkpoint: str | None = None) -> None:
        """
        Args:
            last_checkpoint: where to save the state when a SIGTERM stops the run (None: nothing saved).
        """
        self._start: float | None = None
        self._reached = 0.0
        self.last_checkpoint = last_checkpoint

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        model = pl_module.model  # a GPTLitModule's GPT: runs are gpt2kit fits
        params = {
            "num_params": model.num_params(),
            "num_trainable_params": model.num_params(trainable_only=True),
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(params)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self._reached = time.perf_counter() - self._start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:  # in the row of the val metrics
            pl_module.log("elapsed_s", self._reached, sync_dist=True, reduce_fx="max")

    def _log_time(self, trainer: L.Trainer) -> None:
        if self._start is None:
            return
        seconds, self._start = time.perf_counter() - self._start, None
        for logger in trainer.loggers:
            logger.log_metrics({"fit_time_s": seconds}, step=trainer.global_step)

    def _save_last(self, trainer: L.Trainer) -> None:
        """Through the callback that keeps ``last.ckpt`` (the run's config always has one), so that it
        knows the file as its own: saved by anyone else, the resumed run would write ``last-v1.ckpt``."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        target = Path(self.last_checkpoint).resolve()
        for cb in trainer.checkpoint_callbacks:
            if (
                isinstance(cb, ModelCheckpoint)
                and cb.save_last
                and cb.dirpath
                and Path(cb.dirpath).resolve() == target.parent
            ):
                cb._save_last_checkpoint(
                    trainer, cb._monitor_candidates(trainer)
                )  # as LastCheckpoint does at the end
                return
        trainer.save_checkpoint(target)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_time(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._log_time(trainer)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # Raised between two steps (every rank agrees on it): a consistent state to resume from.
        if isinstance(exception, SIGTERMException) and self.last_checkpoint is not None:
            self._save_last(trainer)
            log.info(
                "ablate: stopped by SIGTERM at step %d; saved %s", trainer.global_step, self.last_checkpoint
            )


def ablate(
    study: Study,
    parallel: int = 1,
    *,
    dry_run: bool = False,
    report_only: bool = False,
    launcher: str = "local",
    wait: bool = False,
    wait_timeout_s: float | None = None,
) -> list[Run]:
    """Run a study (skipping finished runs, resuming unfinished ones) and write its report.

    ``launcher="slurm"`` submits the runs that are not done, queued or running as one SLURM job array
    (:mod:`gpt2kit.ablate.slurm`) and returns; with ``wait`` it waits for them to end (at most
    ``wait_timeout_s``, if given). The report is written either way, from whatever the runs have logged.
    """
    from gpt2kit.registry import export_plugins, load_plugins

    if launcher not in LAUNCHERS:
        raise GPT2KitError(f"launcher '{launcher}' is not one of {', '.join(LAUNCHERS)}")
    if parallel < 1:
        raise GPT2KitError(f"parallel={parallel}: give the number of runs to train at once (1 or more)")
    load_plugins(study.plugins, entry_points=False)  # entry points are loaded already (cli.main)
    export_plugins(study.plugins)  # the runs started in subprocesses (--parallel, SLURM jobs) need them too
    runs = plan(study)
    bad = sorted({(r.variant, r.error) for r in runs if r.error is not None})
    for variant, error in bad:
        log.warning("ablate: variant '%s' does not parse, marked failed: %s", variant, error)
    if dry_run:  # the caller shows plan_summary(study, runs)
        return runs
    if len(bad) == len(study.variants):
        raise GPT2KitError(f"no variant of {study.path} parses; the first: {bad[0][0]}: {bad[0][1]}")
    study.out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study.path, study.out_dir / "study.yaml")
    finished = True
    if not report_only and launcher == "local":
        finished = run_all(runs, parallel)
    elif not report_only:
        from gpt2kit.ablate import slurm

        slurm.submit(study, runs)
        finished = slurm.wait(runs, timeout_s=wait_timeout_s) if wait else False
    write_study_report(study, runs)
    results = collect(runs)
    done = sum(r.status == "done" for r in results)
    how = (
        ""
        if finished or done == len(results)
        else " (interrupted)"
        if launcher == "local"
        else " (the others are SLURM's)"
    )
    log.info("ablate: %d of %d runs done%s; report: %s", done, len(results), how, study.out_dir / "report.md")
    return runs


def write_study_report(study: Study, runs: Sequence[Run]) -> None:
    """results.csv, report.md and plot.png from what the runs have logged."""
    results = collect(runs)
    write_csv(results, study.out_dir / "results.csv")
    plotted = write_plot(study, results, study.out_dir / "plot.png")
    write_report(study, results, study.out_dir / "report.md", "plot.png" if plotted else None)


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


def ablate_command(args: Sequence[str]) -> None:
    """Run an ablation study: a base recipe × variants/grid × seeds, then results.csv, report.md, plot.png.

    Finished runs are skipped and unfinished ones resumed, so the same command continues an interrupted
    study.
    """
    from gpt2kit.parsing import CommandParser

    parser = CommandParser(prog="python -m gpt2kit ablate", description=ablate_command.__doc__)
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
