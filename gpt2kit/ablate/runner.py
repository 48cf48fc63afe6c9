"""Running a study's runs: one after another in this process, or several at once in subprocesses.

Each run folder holds ``config.yaml`` (what ``python -m gpt2kit fit --config`` runs), the Lightning logs
and checkpoints, and ``run.json``: its state (``running``, ``done``, ``failed``), wall time, sessions and
the config it was started with. A re-run skips ``done`` runs and resumes the others from their
``last.ckpt``; a run whose study changed under it (another budget, say) is refused, not mixed in.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gpt2kit.ablate.study import Run, _get, end_step, fit_args
from gpt2kit.errors import GPT2KitError, user_error
from gpt2kit.spec import resolve_class

log = logging.getLogger("gpt2kit.ablate")

DONE, RUNNING, FAILED = "done", "running", "failed"


def read_state(run: Run) -> dict[str, Any]:
    path = run.dir / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_state(run: Run, **changes: Any) -> dict[str, Any]:
    state = {**read_state(run), **changes}
    run.dir.mkdir(parents=True, exist_ok=True)
    tmp = run.dir / ".run.json.partial"
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, run.dir / "run.json")
    return state


def _same_class(old: str, new: str) -> bool:
    """Two class paths that name one class: a class re-exported by its package and found since by its
    module's path (``gpt2kit.tokenizers.CharTokenizer`` and ``gpt2kit.tokenizers.char.CharTokenizer``)."""
    try:
        return resolve_class(old, object) is resolve_class(new, object)
    except GPT2KitError:  # a class that is gone (a plugin not installed): the paths differ
        return False


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    if (
        prefix.endswith("class_path.")
        and isinstance(old, str)
        and isinstance(new, str)
        and _same_class(old, new)
    ):
        return []
    return [f"{prefix[:-1]}: {old!r} → {new!r}"]


def check_unchanged(runs: Sequence[Run]) -> None:
    """Refuse to continue runs that were started from another config (the study file changed)."""
    changed = []
    for run in runs:
        state = read_state(run)
        if run.identity is None or state.get("identity") is None:
            continue
        diffs = _differences(state["identity"], run.identity)
        if diffs:
            changed.append((run, diffs))
    if changed:
        run, diffs = changed[0]
        more = f" (and {len(changed) - 1} more run(s))" if len(changed) > 1 else ""
        raise GPT2KitError(
            f"{run.dir} was run with another config ({'; '.join(diffs[:3])}){more}: results from different "
            "settings would be compared as equals; delete those run folders to redo them, or give the study "
            "another out_dir"
        )


def prepare_run(run: Run) -> None:
    """Write the run's config.yaml and its initial state (a run that exists keeps its state)."""
    assert run.config is not None
    run.dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {run.label}: written by `python -m gpt2kit ablate`; rerun this run alone with\n"
        f"#   python -m gpt2kit fit --config {run.config_path}\n"
    )
    run.config_path.write_text(header + yaml.safe_dump(run.config, sort_keys=False))
    state = read_state(run)
    if not state:
        write_state(run, variant=run.variant, seed=run.seed, status="pending", wall_time_s=0.0, sessions=0,
                    identity=run.identity)  # fmt: skip
    elif state.get("identity") is None:  # a variant that did not parse before, fixed since
        write_state(run, identity=run.identity)


def run_all(runs: Sequence[Run], parallel: int = 1) -> bool:
    """Run every run that is not done; returns False if interrupted (Ctrl-C), True otherwise."""
    check_unchanged(runs)
    todo = []
    for run in runs:
        if run.config is None:
            write_state(run, variant=run.variant, seed=run.seed, status=FAILED, error=run.error)
            continue  # ablate() said so, once per variant
        prepare_run(run)
        if read_state(run).get("status") == DONE:
            log.info("ablate: %s is done, skipped", run.label)
            continue
        todo.append(run)
    if not todo:
        return True
    if parallel <= 1:
        return _sequential(todo)
    return _parallel(todo, parallel)


def _start(run: Run) -> float:
    if run.last_checkpoint.is_file():
        log.info("ablate: resuming %s from %s", run.label, run.last_checkpoint)
    else:
        log.info("ablate: starting %s in %s", run.label, run.dir)
    state = read_state(run)
    write_state(run, status=RUNNING, sessions=state.get("sessions", 0) + 1, error=None)
    return time.perf_counter()


def _stopped_short(run: Run) -> str | None:
    """Why a run that exited cleanly is not done: a SIGTERM (a scheduler, a ``kill``) makes Lightning save
    and return normally, before ``max_steps``. None when it reached the end, or when that cannot be told
    (no ``max_steps``, nothing logged)."""
    max_steps = _get(run.config or {}, "trainer.max_steps")
    step = end_step(run)
    if not isinstance(max_steps, int) or max_steps <= 0 or step is None or step >= max_steps:
        return None
    return f"stopped at step {step} of {max_steps}"


def _succeeded(run: Run, start: float) -> None:
    """A run that exited cleanly: done, or, if it stopped short of the end, left to resume."""
    short = _stopped_short(run)
    if short is None:
        _finish(run, start, DONE)
    else:
        _finish(run, start, RUNNING, short)
        log.warning("ablate: %s %s; run the same command again to resume it", run.label, short)


def _finish(run: Run, start: float, status: str, error: str | None = None) -> None:
    wall = read_state(run).get("wall_time_s", 0.0) + time.perf_counter() - start
    write_state(run, status=status, wall_time_s=round(wall, 2), error=error)
    if status == DONE:
        log.info("ablate: %s done in %.1f s", run.label, wall)
    elif status == FAILED:
        log.warning("ablate: %s failed: %s", run.label, error)


def _sequential(todo: Sequence[Run]) -> bool:
    """In this process: no interpreter start per run, and a traceback in the run's error.log on failure."""
    from gpt2kit.parsing import program_args
    from gpt2kit.training.cli import lightning_main

    for run in todo:
        interrupted = []

        def on_sigint(signum: int, frame: Any, flag: list = interrupted) -> None:
            flag.append(True)
            raise KeyboardInterrupt

        previous = signal.getsignal(signal.SIGINT)
        in_main = _main_thread()
        if in_main:
            signal.signal(signal.SIGINT, on_sigint)
        start = _start(run)
        try:
            with program_args():
                lightning_main(fit_args(run))
        except (KeyboardInterrupt, SystemExit) as exc:
            if interrupted or isinstance(exc, KeyboardInterrupt):  # Lightning turns Ctrl-C into exit(1)
                _finish(run, start, RUNNING)
                log.warning("ablate: interrupted during %s; run the same command again to resume", run.label)
                return False
            _finish(run, start, FAILED, f"exited with status {exc.code} (see the messages above)")
        except Exception as exc:
            if user_error(exc) is not None:  # a mistake in the config, said in one line
                _finish(run, start, FAILED, str(user_error(exc)))
            else:  # a bug, perhaps in a plugin: keep the traceback
                (run.dir / "error.log").write_text(traceback.format_exc())
                _finish(run, start, FAILED, f"{_one_line(exc)} (traceback in {run.dir / 'error.log'})")
        else:
            _succeeded(run, start)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
    return True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _one_line(exc: BaseException) -> str:
    cause = user_error(exc)
    if cause is not None:
        return str(cause)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _child_env(parallel: int, slot: int) -> dict[str, str]:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of each run taking all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    if "CUDA_VISIBLE_DEVICES" not in env:
        gpus = _gpu_count()
        if gpus > 1:  # one GPU per slot, round robin
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _last_error(log_file: Path) -> str:
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    line = errors[-1].removeprefix("error:").strip() if errors else (lines[-1] if lines else "no output")
    return f"{line} (output in {log_file})"


def _parallel(todo: Sequence[Run], parallel: int) -> bool:
    """``parallel`` subprocesses at a time, each run's output in its ``train.log``."""
    pending = deque(todo)
    active: dict[int, tuple[Run, subprocess.Popen, float, Any]] = {}
    try:
        while pending or active:
            for slot in range(parallel):
                if slot not in active and pending:
                    run = pending.popleft()
                    out = open(run.dir / "train.log", "a")  # noqa: SIM115  closed when the run ends
                    cmd = [
                        sys.executable,
                        "-m",
                        "gpt2kit",
                        *fit_args(run, ["--trainer.enable_progress_bar=false"]),
                    ]
                    start = _start(run)
                    proc = subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env(parallel, slot)
                    )
                    active[slot] = (run, proc, start, out)
            time.sleep(0.2)
            for slot, (run, proc, start, out) in list(active.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del active[slot]
                if proc.returncode == 0:
                    _succeeded(run, start)
                else:
                    _finish(run, start, FAILED, _last_error(run.dir / "train.log"))
    except KeyboardInterrupt:
        # The runs got the Ctrl-C too (same process group); give them a moment to stop cleanly.
        for run, proc, start, out in active.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()
            _finish(run, start, RUNNING)
        log.warning("ablate: interrupted; run the same command again to resume the unfinished runs")
        return False
    return True
