"""``ablate --launcher slurm`` against a real SLURM cluster: a study through SLURM equals the same study run
locally, and bad input is one line. Tiny models, a few steps, bounded waits (tests/slurmcluster.py)."""

from __future__ import annotations

import json
import logging

import pytest
from slurmcluster import (
    read_csv,
    run_here,
    state,
    submit_and_wait,
    write_study,
)

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.launcher import parse_time
from gpt2kit.ablate.study import plan
from gpt2kit.commands import main
from gpt2kit.errors import GPT2KitError

VALUES = ("variant", "seed", "status", "params", "steps", "tokens", "final_val_loss", "best_val_loss")


def test_study_through_slurm_equals_local(cluster, caplog):
    caplog.set_level(logging.INFO, logger="gpt2kit.ablate")
    spec = {"seeds": [1, 2], "variants": {"gpt2": {}, "rms": {"model.norm": "RMSNorm"}}}
    on_slurm = load_study(write_study(cluster, "slurm", **spec))
    ablate(on_slurm, launcher="slurm")  # submitted; the local runs train while SLURM runs the jobs
    local = load_study(write_study(cluster, "local", **spec))
    run_here(local)
    submit_and_wait(load_study(on_slurm.path))  # submits nothing (queued, running or done): waits, reports

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
    summary = [m for m in caplog.messages if "runs done" in m]
    assert summary and summary[-1].startswith("ablate: 4 of 4 runs done; report:"), (
        summary
    )  # no "others" left


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
