"""A real one-node SLURM cluster for the tests (scripts/local-slurm.sh up; SLURM_CONF): the `cluster`
fixture, tiny study files and what the SLURM tests read back. Without a reachable cluster the tests that
need one skip, saying why; with GPT2KIT_REQUIRE_SLURM=1 (CI) they fail instead."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import RECIPES

from gpt2kit.ablate import ablate, slurm
from gpt2kit.ablate.study import plan

SHAKESPEARE = RECIPES / "pretrain" / "shakespeare-char.yaml"
WAIT_S = 240  # the longest any test waits for its jobs
POLL_S = 0.5  # how often the tests look at SLURM's queue (ablate --wait's own 5 s would idle ~2.5 s a wait)

TINY = {
    "model.arch.n_layer": 2,
    "model.arch.n_head": 2,
    "model.arch.n_embd": 32,
    "model.arch.block_size": 32,
    "trainer.max_steps": 6,
    "trainer.log_every_n_steps": 1,
    "trainer.val_check_interval": 3,
    "trainer.limit_val_batches": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}

# Callbacks the runs import (from tmp_path, on PYTHONPATH, which sbatch passes on to the jobs).
HELPERS = """
import time
from pathlib import Path

import lightning as L


class Progress(L.Callback):
    '''Writes the step reached to a file at the start of each step. With ``hold_at``, the first time a step
    ends there it waits (at most ``hold_s``) for a SIGTERM before going on: a run surely in the middle of
    training when the test signals it, with no sleep in the other steps. Not again in the resumed session.'''

    def __init__(self, path: str, hold_at: int = -1, hold_s: float = 120.0) -> None:
        self.path, self.hold_at, self.hold_s = Path(path), hold_at, hold_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {time.time()}\\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        held = self.path.with_name(self.path.name + ".held")
        if trainer.global_step != self.hold_at or held.exists():
            return
        held.touch()
        deadline = time.monotonic() + self.hold_s
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)

"""

CRASH = """
import lightning as L


class CrashAtStep(L.Callback):
    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"boom at step {trainer.global_step}")
"""
"""A bug that shows only during training (in a plugin, say): step ``step`` raises (also tests/test_ablate.py)."""
HELPERS += CRASH


def _cluster() -> str | None:
    """Why no cluster is reachable (None: one is)."""
    if shutil.which("sinfo") is None:
        return "no SLURM commands (apt-get install slurm-wlm munge; scripts/local-slurm.sh up)"
    conf = os.environ.get("SLURM_CONF")
    if not conf or not os.path.isfile(conf):
        return "SLURM_CONF is not set to a slurm.conf (scripts/local-slurm.sh up prints it)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if out.returncode != 0 or not out.stdout.strip():
        return f"no SLURM controller reachable: {out.stderr.strip()[-200:]}"
    down = ("down", "drain", "fail", "unk", "maint", "inval", "futur", "powered")
    if all(s.strip().startswith(down) for s in out.stdout.splitlines()):
        return f"no node up (sinfo: {out.stdout.strip()})"
    return None


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    why = _cluster()
    if why is not None:
        if os.environ.get("GPT2KIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"GPT2KIT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    (tmp_path / "slurm_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")  # the jobs inherit it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread in the jobs and in the local runs alike
    monkeypatch.setattr(slurm, "wait", functools.partial(slurm.wait, poll_s=POLL_S))
    yield tmp_path
    jobs = {json.loads(p.read_text()).get("job_id") for p in tmp_path.glob("out/*/*/*/run.json")} - {None}
    if (tmp_path / "sbatch-jobs").is_file():
        jobs |= set((tmp_path / "sbatch-jobs").read_text().split())
    if jobs:  # a test that failed or timed out leaves nothing running
        subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=30)


def submit_and_wait(study):
    """``ablate --launcher slurm --wait``, bounded: every run must have ended within WAIT_S."""
    ablate(study, launcher="slurm", wait=True, wait_timeout_s=WAIT_S)
    statuses = {r.label: state(r.dir).get("status") for r in plan(study)}
    assert all(s in ("done", "failed") for s in statuses.values()), f"not ended in {WAIT_S} s: {statuses}"


def run_here(study):
    """The study run locally the way ``ablate`` runs it by default: in this process, one run after the
    other (no interpreter and Lightning start per run), on one thread as each SLURM job has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ablate(study)
    finally:
        torch.set_num_threads(threads)


def sbatch(script, args, cwd) -> str:
    """``sbatch SCRIPT ARGS`` (output in CWD/slurm-JOB.out): the job id."""
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={cwd}/slurm-%j.out", str(script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    with open(cwd / "sbatch-jobs", "a") as f:  # for the cluster fixture to cancel
        f.write(job + "\n")
    return job


def wait_job(job) -> int:
    """The exit status of a batch job (128 + N: killed by signal N), polled every POLL_S (``sbatch --wait``
    polls after 2, 8, then every 32 s: ~20 s idle for a job of seconds), bounded by WAIT_S (then cancelled)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30
        )
        state = re.search(r"\bJobState=(\S+)", out.stdout)
        assert state, f"scontrol knows no job {job}: {out.stderr.strip()}"
        if state[1] not in slurm.ALIVE:
            code, sig = map(int, re.search(r"\bExitCode=(\d+):(\d+)", out.stdout).groups())
            return code or (128 + sig if sig else 0)
        time.sleep(POLL_S)
    subprocess.run(["scancel", job], capture_output=True, timeout=30)
    raise AssertionError(f"job {job} did not end in {WAIT_S} s")


def write_study(tmp_path, name="study", **spec):
    path = tmp_path / f"{name}.yaml"
    spec = {"base": str(SHAKESPEARE), "out_dir": str(tmp_path / "out" / name), **spec}
    spec["overrides"] = {**TINY, **spec.get("overrides", {})}
    spec.setdefault("launcher", {"time": 30})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def state(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"]


def assert_same_weights(a, b):
    (wa, step_a), (wb, step_b) = weights(a), weights(b)
    assert step_a == step_b
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
