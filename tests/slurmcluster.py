"""A real one-node SLURM cluster for the tests (scripts/local-slurm.sh up; SLURM_CONF): the `cluster`
fixture, tiny study files and what the SLURM tests read back. Without a reachable cluster the tests that
need one skip, saying why; with GPT2KIT_REQUIRE_SLURM=1 (CI) they fail instead."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import RECIPES

from gpt2kit.ablate import ablate
from gpt2kit.ablate.study import plan

SHAKESPEARE = RECIPES / "pretrain" / "shakespeare-char.yaml"
WAIT_S = 240  # the longest any test waits for its jobs

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
    '''Writes the step reached to a file after each step, sleeping a little: a run slow enough to signal.'''

    def __init__(self, path: str, sleep_s: float = 0.0) -> None:
        self.path, self.sleep_s = Path(path), sleep_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {time.time()}\\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.sleep_s)


class CrashAtStep(L.Callback):
    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"boom at step {trainer.global_step}")
"""


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
    yield tmp_path
    jobs = {json.loads(p.read_text()).get("job_id") for p in tmp_path.glob("out/*/*/*/run.json")} - {None}
    if jobs:  # a test that failed or timed out leaves nothing running
        subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=30)


def submit_and_wait(study):
    """``ablate --launcher slurm --wait``, bounded: every run must have ended within WAIT_S."""
    ablate(study, launcher="slurm", wait=True, wait_timeout_s=WAIT_S)
    statuses = {r.label: state(r.dir).get("status") for r in plan(study)}
    assert all(s in ("done", "failed") for s in statuses.values()), f"not ended in {WAIT_S} s: {statuses}"


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
