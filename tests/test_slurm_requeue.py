"""SLURM jobs that are signalled, crash, or span two tasks: requeued and resumed to the same weights, failed
with their error line, DDP across tasks equal to local DDP. Split from test_slurm.py so that xdist runs the
two files on two workers. Tiny models, a few steps, bounded waits (tests/slurmcluster.py)."""

from __future__ import annotations

import logging
import re
import subprocess
import time

import yaml
from conftest import REPO
from slurmcluster import (
    WAIT_S,
    assert_same_weights,
    read_csv,
    run_here,
    sbatch,
    state,
    submit_and_wait,
    wait_job,
    weights,
    write_study,
)

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.study import place, plan
from gpt2kit.commands import main


def test_signalled_job_is_requeued_and_resumes_to_the_same_weights(cluster, capsys):
    progress = cluster / "progress"
    # Held at the end of step 3 (global step 4) until the signal comes: surely mid-training when signalled.
    held = {"class_path": "slurm_helpers.Progress", "init_args": {"path": str(progress), "hold_at": 4}}
    # No periodic last.ckpt within the run's 12 steps: it resumes from what the stop saved, or from nothing.
    rare = {
        "class_path": "gpt2kit.training.resume.LastCheckpoint",
        "init_args": {"dirpath": "x", "every_n_train_steps": 100},
    }
    overrides = {"trainer.callbacks": [held, rare], "trainer.max_steps": 12, "trainer.val_check_interval": 6}
    path = write_study(cluster, "signalled", seeds=[1], variants={"gpt2": {}}, overrides=overrides)
    study = load_study(path)
    ablate(study, launcher="slurm")
    (run,) = plan(study)
    job = state(run.dir)["job_id"]

    deadline = time.monotonic() + WAIT_S
    while not (progress.is_file() and len(progress.read_text().splitlines()) >= 4):  # mid-training
        assert time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before a time-out
    # slurmctld holds a requeued job back for ~2 minutes (its BeginTime); release it at once, to keep the
    # test short: what is tested, the requeue and the resume, is unchanged.
    while True:
        assert time.monotonic() < deadline, "the job was not requeued"
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
        if out.stdout.split()[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            break
        time.sleep(0.2)
    # The same run uninterrupted, here (no hold: it is never signalled), while SLURM runs the second session.
    unheld = {**held, "init_args": {"path": str(cluster / "progress-plain")}}
    plain_overrides = {**overrides, "trainer.callbacks": [unheld, rare]}
    plain = load_study(
        write_study(cluster, "plain", seeds=[1], variants={"gpt2": {}}, overrides=plain_overrides)
    )
    run_here(plain)
    submit_and_wait(load_study(path))

    record = state(run.dir)
    assert (record["status"], record["sessions"], record["requeues"]) == ("done", 2, 1)
    assert record["job_ids"] == [job]  # requeued by submitit: the same job, not a new submission
    # Every step trained once: stopped at the end of the step it was in, resumed at the next one.
    steps = [int(line.split()[0]) for line in progress.read_text().splitlines()]
    assert steps == list(range(12)), steps
    assert len(list((run.dir / "logs").glob("version_*"))) == 2  # two sessions, one Lightning log each

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


def docs_sbatch_script(recipe) -> str:
    """docs/scale.md's 2-task CPU sbatch script, ``RECIPE.yaml`` replaced by ``recipe``."""
    text = (REPO / "docs" / "scale.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    script = [b for b in blocks if "#SBATCH" in b and "--trainer.accelerator cpu" in b]
    assert len(script) == 1, "docs/scale.md has no (or several) CPU sbatch scripts"
    assert "RECIPE.yaml" in script[0]
    return script[0].replace("RECIPE.yaml", str(recipe))


def test_two_task_ddp_under_slurm_equals_two_local_processes(cluster):
    """One local 2-process DDP run, and the same run under SLURM twice: through the ablation launcher
    (``tasks_per_node: 2``), and through docs/scale.md's sbatch script for ``fit``."""
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
    ablate(on_slurm, launcher="slurm")
    local = load_study(write_study(cluster, "ddp_local", **spec))

    # The docs' script: a user's recipe (the local run's, writing into its own folder) with a step count
    # the script's extra arguments ("$@") bring down to the run's. Queued behind the first job (each takes
    # both CPUs of the node), while the local run trains.
    run_sbatch = cluster / "out" / "sbatch"
    recipe = place(plan(local)[0].identity, run_sbatch)
    steps = recipe["trainer"]["max_steps"]
    recipe["trainer"]["max_steps"] = 100 * steps  # not reached if "$@" is passed on
    (cluster / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (cluster / "fit-cpu.sh").write_text(docs_sbatch_script(cluster / "recipe.yaml"))
    job = sbatch(cluster / "fit-cpu.sh", ["--trainer.max_steps", str(steps)], cluster)

    ablate(local, parallel=2)  # `python -m gpt2kit fit` in a subprocess; Lightning starts the second rank
    submit_and_wait(load_study(on_slurm.path))
    run_slurm, run_local = plan(on_slurm)[0].dir, plan(local)[0].dir
    assert state(run_slurm)["status"] == state(run_local)["status"] == "done"
    assert "SLURM" in (run_slurm / "train.log").read_text()  # ranks from Lightning's SLURM environment
    assert (run_slurm / "train.rank1.log").is_file()
    assert_same_weights(run_slurm, run_local)

    rc = wait_job(job)
    output = (cluster / f"slurm-{job}.out").read_text() if (cluster / f"slurm-{job}.out").is_file() else ""
    assert rc == 0, f"sbatch job {job} exited {rc}: {output[-2000:]}"
    assert "SLURM" in output  # Lightning took the ranks from SLURM's environment
    assert weights(run_sbatch)[1] == steps, "the script's extra arguments did not reach fit"
    assert_same_weights(run_sbatch, run_local)


# --- bad input, one line each ---------------------------------------------------------------------------------
