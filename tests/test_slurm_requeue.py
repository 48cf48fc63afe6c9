"""SLURM jobs that are signalled, crash, or span two tasks: requeued and resumed to the same weights, failed
with their error line, DDP across tasks equal to local DDP. Split from test_slurm.py so that xdist runs the
two files on two workers. Tiny models, a few steps, bounded waits (tests/slurmcluster.py)."""

from __future__ import annotations

import logging
import subprocess
import time

from slurmcluster import (
    WAIT_S,
    assert_same_weights,
    read_csv,
    state,
    submit_and_wait,
    write_study,
)

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.study import plan
from gpt2kit.cli import main


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
