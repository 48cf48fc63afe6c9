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
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from gpt2kit.ablate.launcher import LAUNCHERS
from gpt2kit.ablate.report import collect, write_csv, write_plot, write_report
from gpt2kit.ablate.runner import run_all
from gpt2kit.ablate.study import Run, Study, load_study, plan
from gpt2kit.errors import GPT2KitError

__all__ = ["RunRecord", "Run", "Study", "ablate", "load_study", "plan"]

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
