"""``ablate --launcher slurm``: a study's runs as one SLURM job array, through submitit.

Each pending run becomes one task of a job array. The task (:class:`FitJob`, on the compute node) runs
the very command the local launcher runs, ``python -m gpt2kit fit --config RUN/config.yaml [--ckpt_path
RUN/checkpoints/last.ckpt]``, in the same run folder, and records its state in ``run.json`` as the local
runner does, plus the job id: the logs, ``results.csv`` and the report are the same.

Preemption and time limits go through submitit's checkpoint/requeue support: SLURM sends the job's
signal (``USR2``, 90 s before the time limit, or from ``scancel --signal=USR2``), submitit calls
:meth:`FitJob.checkpoint`, which stops the training process with a SIGTERM (Lightning ends the step, and
:class:`~gpt2kit.ablate.RunRecord` saves ``last.ckpt``), and submitit requeues the job, which resumes from
that file. A run that fails (a bad config, a crash) is marked failed with its error line and not requeued.

``ablate`` is idempotent: it asks SLURM (``squeue``, which needs no accounting database) about the job ids
in ``run.json`` and submits only the runs that are neither done nor queued nor running.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2kit.ablate.runner import (
    DONE,
    FAILED,
    RUNNING,
    _finish,
    _last_error,
    _start,
    _succeeded,
    check_unchanged,
    prepare_run,
    read_state,
    write_state,
)
from gpt2kit.ablate.study import Run, Study, _get, fit_args
from gpt2kit.errors import GPT2KitError

log = logging.getLogger("gpt2kit.ablate")

QUEUED = "queued"
ALIVE = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED",
}  # fmt: skip
"""Job states in which a run is still SLURM's business: never submitted again."""
HOW_TO_POINT = (
    "run it on the cluster's login node, or point SLURM_CONF at the cluster's slurm.conf; to try it on this "
    "machine: scripts/local-slurm.sh up && export SLURM_CONF=/tmp/gpt2kit-slurm/slurm.conf"
)


# --- asking the cluster -------------------------------------------------------------------------------


def _slurm(cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GPT2KitError(
            f"SLURM did not answer `{' '.join(cmd[:2])}` in {timeout:.0f} s: is the controller up? {HOW_TO_POINT}"
        ) from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def partitions() -> dict[str, dict[str, Any]]:
    """The cluster's partitions: {name: {default, cpus, mem_mb, nodes, gpus, time}} (largest node of each),
    or a one-line error saying how to reach a cluster."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise GPT2KitError(
            f"--launcher slurm: no SLURM commands here (sbatch, sinfo not on PATH): {HOW_TO_POINT}"
        )
    conf = os.environ.get("SLURM_CONF")
    defaults = [Path("/etc/slurm/slurm.conf"), Path("/run/slurm/conf/slurm.conf")]  # set, or configless
    if (conf and not Path(conf).is_file()) or (not conf and not any(p.is_file() for p in defaults)):
        where = f"SLURM_CONF={conf} is not a file" if conf else "no SLURM_CONF and no /etc/slurm/slurm.conf"
        raise GPT2KitError(f"--launcher slurm: no SLURM configuration ({where}): {HOW_TO_POINT}")
    out = _slurm(["sinfo", "-h", "-o", "%P|%c|%m|%D|%G|%l"])
    if out.returncode != 0:
        conf = conf or "the default /etc/slurm/slurm.conf"
        raise GPT2KitError(
            f"--launcher slurm: no SLURM controller reachable (sinfo: {_first_line(out.stderr)}; config: "
            f"{conf}): {HOW_TO_POINT}"
        )
    found: dict[str, dict[str, Any]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, cpus, mem, nodes, gres, limit = parts
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = sum(int(g.split(":")[-1].split("(")[0]) for g in gres.split(",") if g.startswith("gpu") and
                   g.split(":")[-1].split("(")[0].isdigit())  # fmt: skip
        p = found.setdefault(name, {"default": default, "cpus": 0, "mem_mb": 0, "nodes": 0, "gpus": 0})
        p["cpus"] = max(p["cpus"], int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit() else 0)
        p["mem_mb"] = max(p["mem_mb"], int(mem.rstrip("+")) if mem.rstrip("+").isdigit() else 0)
        p["nodes"] += int(nodes) if nodes.isdigit() else 0
        p["gpus"] = max(p["gpus"], gpus)
        p["time"] = limit
    if not found:
        raise GPT2KitError(
            f"--launcher slurm: the cluster has no partition (sinfo shows none): {HOW_TO_POINT}"
        )
    return found


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: SLURM state} for the ids the controller still knows (``squeue -t all``: pending, running
    and recently ended jobs; an id it has forgotten is left out)."""
    if not job_ids:
        return {}
    out = _slurm(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"])
    if out.returncode != 0:
        raise GPT2KitError(f"squeue failed ({_first_line(out.stderr)}): {HOW_TO_POINT}")
    wanted = set(job_ids)
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted:
            states[job] = state
    return states


# --- what to submit --------------------------------------------------------------------------------------


def _job_name(study: Study) -> str:
    return f"{study.launcher.job_name_prefix}{study.name}"


def _submitit_folder(study: Study) -> Path:
    return study.out_dir.resolve() / "slurm"


def _parameters(study: Study, runs: Sequence[Run], partition: str | None) -> dict[str, Any]:
    """The ``submitit.SlurmExecutor`` parameters (sbatch's names) for the study's runs."""
    opts = study.launcher
    params: dict[str, Any] = {
        "job_name": _job_name(study),
        "time": opts.time_min,
        "cpus_per_task": opts.cpus_per_task,
        "nodes": opts.nodes,
        "ntasks_per_node": opts.tasks_per_node,
        "array_parallelism": opts.max_parallel or max(1, len(runs)),
        "signal_delay_s": 90,  # USR2 this long before the time limit: time to save and requeue
    }
    if partition:
        params["partition"] = partition
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.mem_gb is not None:
        params["mem"] = (
            f"{opts.mem_gb:g}GB" if opts.mem_gb == int(opts.mem_gb) else f"{int(opts.mem_gb * 1024)}MB"
        )
    if opts.setup:
        params["setup"] = list(opts.setup)
    if opts.sbatch:
        params["additional_parameters"] = {k.replace("-", "_"): v for k, v in opts.sbatch.items()}
    return params


def _executor(study: Study, runs: Sequence[Run], partition: str | None) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(folder=_submitit_folder(study) / "%j")
    try:
        executor.update_parameters(**_parameters(study, runs, partition))
    except ValueError as exc:
        raise GPT2KitError(f"{study.path}: launcher: submitit refuses it: {_first_line(str(exc))}") from None
    return executor


def sbatch_script(study: Study, runs: Sequence[Run], partition: str | None = None) -> str:
    """The sbatch script a submission of ``runs`` writes (one job array); needs no cluster."""
    import shlex

    _need_submitit()

    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes; no public dry run

    folder = _submitit_folder(study) / "%j"
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    params = {**_parameters(study, runs, partition), "map_count": len(runs) if len(runs) > 1 else None}
    try:
        return _make_sbatch_string(command=command, folder=folder, **params)
    except (TypeError, ValueError) as exc:
        raise GPT2KitError(f"{study.path}: launcher: submitit refuses it: {_first_line(str(exc))}") from None


def _check_tasks(study: Study, runs: Sequence[Run]) -> None:
    """Lightning's SLURM environment needs one task per device: the block and the runs must agree."""
    opts = study.launcher
    for run in runs:
        trainer = (run.config or {}).get("trainer") or {}
        devices, num_nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
        if isinstance(devices, str) and devices.isdigit():  # the CLI keeps "2" as given
            devices = int(devices)
        per_node = devices if isinstance(devices, int) and devices > 0 else None
        several = opts.tasks > 1 or (per_node or 1) * num_nodes > 1
        if several and (per_node != opts.tasks_per_node or num_nodes != opts.nodes):
            raise GPT2KitError(
                f"{study.path}: launcher asks for {opts.tasks_per_node} task(s) per node on {opts.nodes} "
                f"node(s) but {run.label} trains on trainer.devices={devices}, trainer.num_nodes="
                f"{num_nodes}: Lightning runs one task per device; make them equal (overrides: "
                f"trainer.devices: {opts.tasks_per_node}, trainer.num_nodes: {opts.nodes})"
            )


def check_cluster(study: Study, runs: Sequence[Run]) -> str | None:
    """The partition to submit to (None: the default), after checking the cluster can run the request:
    the partition exists, and ``sbatch --test-only`` accepts the script. One-line errors."""
    opts = study.launcher
    found = partitions()
    where = f"{study.path}: launcher"
    if opts.partition is not None and opts.partition not in found:
        close = difflib.get_close_matches(opts.partition, list(found), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise GPT2KitError(
            f"{where}: partition '{opts.partition}' is not on this cluster: {hint}it has {', '.join(found)}"
        )
    _check_tasks(study, runs)
    folder = _submitit_folder(study)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "test-only.sh"
    script.write_text(sbatch_script(study, runs, opts.partition))
    out = _slurm(["sbatch", "--test-only", str(script)])
    script.unlink()
    if out.returncode != 0:
        name = opts.partition or next((n for n, p in found.items() if p["default"]), next(iter(found)))
        p = found.get(name, {})
        asked = (
            f"{opts.nodes} node(s) × {opts.tasks_per_node} task(s) × {opts.cpus_per_task} CPU(s)"
            + (f", {opts.gpus_per_node} GPU(s)/node" if opts.gpus_per_node else "")
            + (f", {opts.mem_gb:g} GB/node" if opts.mem_gb else "")
            + f", {opts.time_min} min"
        )
        raise GPT2KitError(
            f"{where}: the cluster cannot run this request ({_first_line(out.stderr)}): asked {asked}; partition "
            f"'{name}' has {p.get('nodes')} node(s) of {p.get('cpus')} CPUs, {p.get('mem_mb', 0) / 1024:.0f} GB, "
            f"{p.get('gpus')} GPU(s), time limit {p.get('time')}"
        )
    return opts.partition


def _runs_to_submit(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[Run, str]]]:
    """(the runs to submit, [(run, why it is skipped)]): skipped when done, or queued/running in SLURM."""
    states = job_states([s["job_id"] for s in map(read_state, runs) if s.get("job_id")])
    todo, skipped = [], []
    for run in runs:
        if run.config is None:
            continue
        state = read_state(run)
        job = state.get("job_id")
        if state.get("status") == DONE:
            skipped.append((run, "done"))
        elif job and states.get(job) in ALIVE:
            skipped.append((run, f"job {job} is {states[job].lower()}"))
        else:
            todo.append(run)
    return todo, skipped


def _need_submitit() -> None:
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise GPT2KitError(
            "--launcher slurm needs submitit: pip install 'gpt2kit[slurm]' (or pip install submitit)"
        ) from None


def submit(study: Study, runs: Sequence[Run]) -> list[Run]:
    """Submit, as one job array, every run that is neither done nor queued nor running; returns them."""
    _need_submitit()
    check_unchanged(runs)
    for run in runs:
        if run.config is None:
            write_state(run, variant=run.variant, seed=run.seed, status=FAILED, error=run.error)
        else:
            prepare_run(run)
    todo, skipped = _runs_to_submit(runs)
    for run, why in skipped:
        log.info("ablate: %s not submitted: %s", run.label, why)
    if not todo:
        log.info("ablate: nothing to submit")
        return []
    partition = check_cluster(study, todo)
    executor = _executor(study, todo, partition)
    with executor.batch():
        jobs = [executor.submit(FitJob(run)) for run in todo]
    for run, job in zip(todo, jobs, strict=True):
        state = read_state(run)
        history = [*state.get("job_ids", []), job.job_id]
        write_state(run, status=QUEUED, job_id=job.job_id, job_ids=history, error=None)
    array = jobs[0].job_id.split("_")[0]
    log.info(
        "ablate: submitted %d run(s) as job array %s (%s); logs in %s",
        len(jobs), array, _job_name(study), _submitit_folder(study),
    )  # fmt: skip
    return list(todo)


# --- watching, listing, cancelling -----------------------------------------------------------------------


def _step_reached(run: Run) -> int | None:
    from gpt2kit.ablate.study import read_metrics

    steps = [r["step"] for r in read_metrics(run) if "train_loss" in r]  # logged after step N: N + 1 done
    return int(max(steps)) + 1 if steps else None


def run_status(runs: Sequence[Run]) -> list[tuple[Run, str, dict[str, Any]]]:
    """[(run, state, run.json)]: ``done``/``failed`` from run.json, else SLURM's state of its job, else
    what run.json says (``running`` with no live job: the job died; the next ``ablate`` resubmits it)."""
    records = [read_state(r) for r in runs]
    states = job_states([s["job_id"] for s in records if s.get("job_id")])
    out = []
    for run, state in zip(runs, records, strict=True):
        status = state.get("status", "pending") if run.config is not None else FAILED
        job = state.get("job_id")
        if status not in (DONE, FAILED) and job:
            slurm = states.get(job)
            if slurm in ALIVE:
                status = RUNNING if slurm in ("RUNNING", "COMPLETING") else QUEUED if slurm in (
                    "PENDING", "REQUEUED", "REQUEUE_FED", "CONFIGURING") else slurm.lower()  # fmt: skip
            elif status in (QUEUED, RUNNING):
                status = f"dead ({slurm.lower() if slurm else 'job gone'}; ablate resubmits it)"
        out.append((run, status, state))
    return out


def status_lines(runs: Sequence[Run]) -> str:
    """One line per run: variant, seed, state, step reached / max_steps, job id, error."""
    rows = []
    for run, status, state in run_status(runs):
        max_steps = _get(run.config or {}, "trainer.max_steps")
        step = _step_reached(run)
        steps = f"step {step or 0}/{max_steps}" if isinstance(max_steps, int) else f"step {step or 0}"
        error = state.get("error") or run.error
        rows.append((run.variant, f"seed {run.seed}", status, steps, f"job {state.get('job_id') or '-'}",
                     error or ""))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() + (
        f"  {r[5]}" if r[5] else "") + "\n" for r in rows)  # fmt: skip


def cancel(runs: Sequence[Run]) -> list[str]:
    """``scancel`` the study's live jobs; returns their ids. Their runs resume when submitted again."""
    alive = [job for run, status, state in run_status(runs) if (job := state.get("job_id"))
             and status not in (DONE, FAILED) and not status.startswith("dead")]  # fmt: skip
    if alive:
        out = _slurm(["scancel", *alive])
        if out.returncode != 0:
            raise GPT2KitError(f"scancel failed: {_first_line(out.stderr)}")
        for run in runs:
            if read_state(run).get("job_id") in alive:
                write_state(run, status="cancelled")
    return alive


def wait(runs: Sequence[Run], poll_s: float = 5.0, timeout_s: float | None = None) -> bool:
    """Until no run of the study has a live job; True when every run ended (done or failed)."""
    start = time.monotonic()
    while True:
        statuses = [status for _, status, _ in run_status(runs)]
        live = [s for s in statuses if s not in (DONE, FAILED) and not s.startswith("dead") and s != "cancelled"
                and s != "pending"]  # fmt: skip
        if not live:
            return all(s in (DONE, FAILED) for s in statuses)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return False
        time.sleep(poll_s)


# --- on the compute node ------------------------------------------------------------------------------------


def _ignore_requeue_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SLURM sends the job's signal to every process of the step: the training process leaves it to
    # submitit (here, its parent), which stops it with a SIGTERM at the end of a step. Ignoring USR1 too
    # keeps Lightning's own SLURM auto-requeue (on USR1) out of it: one mechanism requeues, not two.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class FitJob:
    """One run as a submitit job: ``python -m gpt2kit fit`` on the run's config, on each task of the job."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._proc: subprocess.Popen | None = None
        self._exited: threading.Event | None = None
        self._start: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled by submitit: the run is all a job needs
        return {"run": self.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run"])

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        run, rank = self.run, env.global_rank
        if rank == 0:
            self._start = _start(run)
            write_state(run, job_id=env.job_id, host=socket.gethostname())
        child_env = dict(os.environ)
        child_env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        cmd = [sys.executable, "-m", "gpt2kit", *fit_args(run, ["--trainer.enable_progress_bar=false"])]
        log_file = run.dir / ("train.log" if rank == 0 else f"train.rank{rank}.log")
        with open(log_file, "a") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, preexec_fn=_ignore_requeue_signals
            )
            self._proc, self._exited = proc, threading.Event()
            # Waited for in a thread: the requeue signal's handler (checkpoint(), in this thread) must not
            # contend for Popen's wait lock, which a main thread blocked in wait() holds.
            threading.Thread(target=lambda: (proc.wait(), self._exited.set()), daemon=True).start()
            while not self._exited.wait(1.0):
                pass
        returncode = proc.returncode
        if rank != 0:
            if returncode != 0:
                raise RuntimeError(f"rank {rank} exited with status {returncode} (see {log_file})")
            return "rank done"
        assert self._start is not None
        if returncode == 0:
            _succeeded(run, self._start)
            return read_state(run)["status"]
        error = _last_error(log_file)
        _finish(run, self._start, FAILED, error)
        raise RuntimeError(error)  # the job ends FAILED; submitit does not requeue a failure

    def checkpoint(self) -> Any:
        """submitit's hook on preemption/time-out (the job's signal): stop training at the end of the
        step (SIGTERM: Lightning stops, :class:`~gpt2kit.ablate.RunRecord` saves ``last.ckpt``), record
        the run as requeued, and hand submitit the same job to requeue; it resumes from ``last.ckpt``."""
        import submitit

        proc, exited = self._proc, self._exited
        if proc is not None and exited is not None and not exited.is_set():
            proc.send_signal(signal.SIGTERM)
            if not exited.wait(60):  # lose the steps since the last periodic save, not the run
                proc.kill()
                exited.wait(10)
        if self._start is not None:
            _finish(self.run, self._start, QUEUED, "requeued")
            write_state(self.run, requeues=read_state(self.run).get("requeues", 0) + 1)
        log.info("ablate: %s stopped for requeueing", self.run.label)
        return submitit.helpers.DelayedSubmission(FitJob(self.run))
