"""``ablate --launcher slurm`` against a real SLURM cluster (scripts/local-slurm.sh up; SLURM_CONF).

Without a reachable cluster the tests that need one skip, saying why; with GPT2KIT_REQUIRE_SLURM=1 (CI)
they fail instead. Tiny models, a few steps, bounded waits.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import RECIPES

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.launcher import parse_time
from gpt2kit.ablate.study import plan
from gpt2kit.cli import main
from gpt2kit.errors import GPT2KitError

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


VALUES = ("variant", "seed", "status", "params", "steps", "tokens", "final_val_loss", "best_val_loss")


def test_study_through_slurm_equals_local(cluster, caplog):
    caplog.set_level(logging.INFO, logger="gpt2kit.ablate")
    spec = {"seeds": [1, 2], "variants": {"gpt2": {}, "rms": {"model.norm": "RMSNorm"}}}
    on_slurm = load_study(write_study(cluster, "slurm", **spec))
    submit_and_wait(on_slurm)
    local = load_study(write_study(cluster, "local", **spec))
    ablate(local, parallel=2)  # one thread per run, as each job has

    got, want = read_csv(on_slurm.out_dir / "results.csv"), read_csv(local.out_dir / "results.csv")
    assert [{k: r[k] for k in VALUES} for r in got] == [{k: r[k] for k in VALUES} for r in want]
    assert {r["status"] for r in got} == {"done"}
    for run in plan(on_slurm):  # each run's job id is recorded; the same files as a local run
        job = state(run.dir)["job_id"]
        assert job and state(run.dir)["job_ids"] == [job]
        assert (run.dir / "config.yaml").is_file() and (
            run.dir / "logs" / "version_0" / "metrics.csv"
        ).is_file()
    assert (on_slurm.out_dir / "report.md").is_file() and (on_slurm.out_dir / "plot.png").is_file()

    caplog.clear()  # done runs are never submitted again
    ablate(load_study(on_slurm.path), launcher="slurm")
    assert "ablate: nothing to submit" in caplog.messages


def test_signalled_job_is_requeued_and_resumes_to_the_same_weights(cluster, capsys):
    progress = cluster / "progress"
    slow = {"class_path": "slurm_helpers.Progress", "init_args": {"path": str(progress), "sleep_s": 0.5}}
    # No periodic last.ckpt within the run's 12 steps: it resumes from what the stop saved, or from nothing.
    rare = {
        "class_path": "gpt2kit.resume.LastCheckpoint",
        "init_args": {"dirpath": "x", "every_n_train_steps": 100},
    }
    overrides = {"trainer.callbacks": [slow, rare], "trainer.max_steps": 12, "trainer.val_check_interval": 6}
    path = write_study(cluster, "signalled", seeds=[1], variants={"gpt2": {}}, overrides=overrides)
    study = load_study(path)
    ablate(study, launcher="slurm")
    (run,) = plan(study)
    job = state(run.dir)["job_id"]

    deadline = time.monotonic() + WAIT_S
    while not (progress.is_file() and len(progress.read_text().splitlines()) >= 4):  # mid-training
        assert time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before a time-out
    # slurmctld holds a requeued job back for ~2 minutes (its BeginTime); release it at once, to keep the
    # test short: what is tested, the requeue and the resume, is unchanged.
    while True:
        assert time.monotonic() < deadline, "the job was not requeued"
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
        if out.stdout.split()[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            break
        time.sleep(0.5)
    submit_and_wait(load_study(path))

    record = state(run.dir)
    assert (record["status"], record["sessions"], record["requeues"]) == ("done", 2, 1)
    assert record["job_ids"] == [job]  # requeued by submitit: the same job, not a new submission
    # Every step trained once: stopped at the end of the step it was in, resumed at the next one.
    steps = [int(line.split()[0]) for line in progress.read_text().splitlines()]
    assert steps == list(range(12)), steps
    assert len(list((run.dir / "logs").glob("version_*"))) == 2  # two sessions, one Lightning log each

    plain = load_study(write_study(cluster, "plain", seeds=[1], variants={"gpt2": {}}, overrides=overrides))
    ablate(plain, parallel=2)  # uninterrupted, locally (a subprocess, one thread)
    assert_same_weights(run.dir, plan(plain)[0].dir)
    report = (study.out_dir / "report.md").read_text()
    assert "**running**" not in report and "**failed**" not in report
    assert read_csv(study.out_dir / "results.csv")[0]["steps"] == "12"


def test_crash_fails_with_its_line_others_finish_and_rerun_submits_nothing(cluster, caplog, capsys):
    caplog.set_level(logging.INFO, logger="gpt2kit.ablate")
    crash = {"trainer.callbacks": [{"class_path": "slurm_helpers.CrashAtStep", "init_args": {"step": 2}}]}
    path = write_study(cluster, "crashy", seeds=[1], variants={"gpt2": {}, "crash": crash})
    study = load_study(path)
    ablate(study, launcher="slurm")
    jobs = {r.variant: state(r.dir)["job_id"] for r in plan(study)}

    caplog.clear()  # again, while the jobs are queued or running: nothing new
    ablate(load_study(path), launcher="slurm")
    assert "ablate: nothing to submit" in caplog.messages
    assert {r.variant: state(r.dir)["job_ids"] for r in plan(study)} == {v: [j] for v, j in jobs.items()}

    submit_and_wait(study)
    rows = {r["variant"]: r for r in read_csv(study.out_dir / "results.csv")}
    assert rows["gpt2"]["status"] == "done" and rows["gpt2"]["steps"] == "6"
    assert rows["crash"]["status"] == "failed" and "boom at step 2" in rows["crash"]["error"]
    crashed = state(study.out_dir / "crash" / "seed1")
    assert crashed["sessions"] == 1 and "requeues" not in crashed  # failed once, not requeued
    capsys.readouterr()
    main(["ablate", "--config", str(path), "--launcher", "slurm", "--status"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    status = {line.split()[0]: line for line in lines}
    assert (
        "done" in status["gpt2"] and f"job {jobs['gpt2']}" in status["gpt2"] and "step 6/6" in status["gpt2"]
    )
    assert "failed" in status["crash"] and "boom at step 2" in status["crash"]


def test_two_task_ddp_under_slurm_equals_two_local_processes(cluster):
    ddp = {
        "trainer.strategy": "ddp",
        "trainer.devices": 2,
        "trainer.accelerator": "cpu",
        "data.init_args.batch_size": 6,
    }
    spec = {"seeds": [1], "variants": {"gpt2": {}}, "overrides": ddp}
    on_slurm = load_study(
        write_study(cluster, "ddp_slurm", launcher={"time": 30, "tasks_per_node": 2}, **spec)
    )
    submit_and_wait(on_slurm)
    local = load_study(write_study(cluster, "ddp_local", **spec))
    ablate(local, parallel=2)  # `python -m gpt2kit fit` in a subprocess; Lightning starts the second rank
    run_slurm, run_local = plan(on_slurm)[0].dir, plan(local)[0].dir
    assert state(run_slurm)["status"] == state(run_local)["status"] == "done"
    assert "SLURM" in (run_slurm / "train.log").read_text()  # ranks from Lightning's SLURM environment
    assert (run_slurm / "train.rank1.log").is_file()
    assert_same_weights(run_slurm, run_local)


# --- bad input, one line each ---------------------------------------------------------------------------------


def _one_line_error(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_no_slurm_reachable_says_how_to_point_at_one(tmp_path, monkeypatch, capsys):
    path = write_study(tmp_path, seeds=[1], variants={"gpt2": {}})
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    err = _one_line_error(capsys, ["ablate", "--config", str(path), "--launcher", "slurm"])
    assert "no SLURM configuration" in err and "SLURM_CONF" in err and "scripts/local-slurm.sh up" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo
    err = _one_line_error(capsys, ["ablate", "--config", str(path), "--launcher", "slurm"])
    assert "no SLURM commands here" in err and "SLURM_CONF" in err


@pytest.mark.parametrize(
    "launcher, expected",
    [
        ({"partitoin": "debug"}, "unknown key 'partitoin': did you mean 'partition'?"),
        ({"time": "soon"}, "time 'soon' is not a time limit"),
        ({"cpus_per_task": 0}, "cpus_per_task must be an integer ≥ 1"),
        ({"sbatch": {"time": "1:00"}}, "sbatch: time is set by gpt2kit or by the block's own keys"),
    ],
)  # fmt: skip
def test_bad_launcher_block_is_one_line(tmp_path, capsys, launcher, expected):
    path = write_study(tmp_path, seeds=[1], variants={"gpt2": {}}, launcher=launcher)
    err = _one_line_error(capsys, ["ablate", "--config", str(path), "--launcher", "slurm"])
    assert expected in err and "launcher" in err


@pytest.mark.parametrize(
    "launcher, expected",
    [
        ({"partition": "debgu"}, "partition 'debgu' is not on this cluster: did you mean 'debug'?"),
        ({"cpus_per_task": 4096}, "the cluster cannot run this request"),
        ({"mem_gb": 100000}, "the cluster cannot run this request"),
        ({"tasks_per_node": 2}, "Lightning runs one task per device"),
    ],
)  # fmt: skip
def test_request_the_cluster_cannot_meet_is_one_line(cluster, capsys, launcher, expected):
    path = write_study(cluster, seeds=[1], variants={"gpt2": {}}, launcher=launcher)
    err = _one_line_error(capsys, ["ablate", "--config", str(path), "--launcher", "slurm"])
    assert expected in err
    assert not list((cluster / "out").glob("*/*/seed1/run.json")) or all(
        "job_id" not in json.loads(p.read_text()) for p in (cluster / "out").glob("*/*/seed1/run.json")
    )  # nothing was submitted


def test_dry_run_prints_the_sbatch_script_without_a_cluster(tmp_path, capsys):
    path = write_study(
        tmp_path,
        seeds=[1, 2],
        variants={"gpt2": {}},
        launcher={"time": "1:30:00", "sbatch": {"account": "lab"}},
    )
    main(["ablate", "--config", str(path), "--launcher", "slurm", "--dry_run"])
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --time=90", "#SBATCH --account=lab", "#SBATCH --signal=USR2@90",
                 "#SBATCH --job-name=gpt2kit-study", "-m submitit.core._submit"):  # fmt: skip
        assert line in out


def test_time_limits_in_slurm_forms():
    assert [parse_time(v, "x") for v in (90, "90", "1:30:00", "2-00:00:00", "1-12", "5:30")] == [
        90, 90, 90, 2880, 2160, 6,
    ]  # fmt: skip
    with pytest.raises(GPT2KitError):
        parse_time(0, "x")


def test_slurm_flags_need_the_slurm_launcher(tmp_path, capsys):
    path = write_study(tmp_path, seeds=[1], variants={"gpt2": {}})
    err = _one_line_error(capsys, ["ablate", "--config", str(path), "--status"])
    assert "--status is for SLURM studies: add --launcher slurm" in err
