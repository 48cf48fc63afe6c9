"""python -m gpt2kit ablate: a 2×2 grid of tiny runs, interrupted and resumed; the report; bad input."""

import csv
import logging
import statistics
import sys

import pytest
import torch
import yaml
from conftest import RECIPES
from slurmcluster import CRASH  # a callback whose step 2 raises, as a plugin module's source

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.report import COLUMNS, ranking_metric
from gpt2kit.ablate.study import Run, plan
from gpt2kit.commands import main

SHAKESPEARE = RECIPES / "pretrain" / "shakespeare-char.yaml"

TINY = {
    "model.arch.n_layer": 2,
    "model.arch.n_head": 2,
    "model.arch.n_embd": 32,
    "model.arch.block_size": 32,
    "trainer.max_steps": 3,
    "trainer.log_every_n_steps": 1,
    "trainer.val_check_interval": 3,
    "trainer.limit_val_batches": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}

# Ctrl-C in the middle of the n-th run of a study, once (the file remembers): a module of its own, so that runs in
# subprocesses (--parallel) can import it as well.
INTERRUPT = """
import json
import os
import signal
from pathlib import Path

import lightning as L


class InterruptOnce(L.Callback):
    def __init__(self, state: str, run: int = 4, step: int = 2, sig: str = "SIGINT") -> None:
        self.state, self.run, self.step, self.armed = Path(state), run, step, False
        self.sig = getattr(signal, sig)

    def on_fit_start(self, trainer, pl_module):
        seen = json.loads(self.state.read_text()) if self.state.exists() else {"fits": 0, "fired": False}
        if seen["fired"]:
            return
        seen["fits"] += 1
        self.armed = seen["fits"] == self.run and not seen["fired"]
        self.state.write_text(json.dumps(seen))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.armed and trainer.global_step >= self.step:
            seen = json.loads(self.state.read_text())
            self.state.write_text(json.dumps({**seen, "fired": True}))
            self.armed = False
            os.kill(os.getpid(), self.sig)  # Ctrl-C (or a kill): Lightning shuts down cleanly, then exits
"""


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_steps(version):
    """The steps a session trained, from its Lightning CSV log."""
    return sorted({int(r["step"]) for r in read_csv(version / "metrics.csv") if r.get("train_loss")})


def final_val_loss(run_dir):
    """The run's last logged val_loss: the last row with one in its newest Lightning session."""
    for version in sorted((run_dir / "logs").glob("version_*"), key=lambda p: -int(p.name[8:])):
        values = [float(r["val_loss"]) for r in read_csv(version / "metrics.csv") if r.get("val_loss")]
        if values:
            return values[-1]
    return None


def report_table(report):
    """The rows of report.md's ranking table: {variant: (rank, "mean ± std", "Δ")}."""
    rows, header = {}, None
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "variant" in cells and "Δ vs baseline" in cells:
            header = cells
        elif header and len(cells) == len(header) and cells[0].isdigit():
            col = dict(zip(header, cells, strict=True))  # the ranked metric is the fourth column
            rows[col["variant"].removeprefix("**").split("**")[0]] = (
                int(cells[0]),
                cells[3],
                col["Δ vs baseline"],
            )
    return rows


def check_report_against_logs(out, baseline, seeds):
    """Ranking, mean ± std and Δ in report.md (and results.csv) as computed here from the runs' own logs."""
    finals = {
        variant.name: [final_val_loss(variant / f"seed{s}") for s in seeds]
        for variant in out.iterdir()
        if variant.is_dir() and (variant / f"seed{seeds[0]}").is_dir()
    }
    assert len(finals) >= 2 and all(v is not None for vals in finals.values() for v in vals)
    for r in read_csv(out / "results.csv"):
        assert float(r["final_val_loss"]) == pytest.approx(finals[r["variant"]][seeds.index(int(r["seed"]))])
    mean = {v: statistics.fmean(vals) for v, vals in finals.items()}
    std = {v: statistics.stdev(vals) for v, vals in finals.items()}
    table = report_table((out / "report.md").read_text())
    assert set(table) == set(finals)
    ranked = sorted(mean, key=mean.get)  # lower loss first
    assert sorted(table, key=lambda v: table[v][0]) == ranked
    assert [table[v][0] for v in ranked] == list(range(1, len(ranked) + 1))
    for v in finals:
        assert table[v][1] == f"{mean[v]:.3f} ± {std[v]:.3f}"
        assert table[v][2] == ("0" if v == baseline else f"{mean[v] - mean[baseline]:+.3f}")


def check_target_against_logs(out, target, seeds):
    """The "reaches TARGET" cells as computed here from each run's own logs: per seed, the first validation
    at or below the target and the seconds logged there (``elapsed_s``, after the earlier sessions' fit time)."""
    lines = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = header.index(f"reaches {target:g}")
    cells = {}
    for line in lines[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        cells[row[1].replace(" (baseline)", "").replace("*", "")] = row[column]
    for variant in cells:
        reached = []
        for seed in seeds:
            offset, found = 0.0, None
            for version in sorted((out / variant / f"seed{seed}" / "logs").glob("version_*")):
                rows = read_csv(version / "metrics.csv")
                for r in rows:
                    if found is None and r.get("val_loss") and float(r["val_loss"]) <= target:
                        found = (int(r["step"]), offset + float(r["elapsed_s"]))
                offset += sum(float(r["fit_time_s"]) for r in rows if r.get("fit_time_s"))
            if found is not None:
                reached.append(found)
        if not reached:
            assert cells[variant] == "never"
            continue
        step = statistics.fmean(s for s, _ in reached)
        seconds = statistics.fmean(t for _, t in reached)
        expected = f"{step:.0f} ({seconds:.0f} s)"
        if len(reached) < len(seeds):
            expected += f", {len(reached)} of {len(seeds)} seeds"
        assert cells[variant] == expected


def write_study(tmp_path, name="study", **spec):
    path = tmp_path / f"{name}.yaml"
    spec = {"base": str(SHAKESPEARE), "out_dir": str(tmp_path / "out" / name), **spec}
    spec["overrides"] = {**TINY, **spec.get("overrides", {})}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_runs_reports_and_resumes(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gpt2kit.ablate")
    (tmp_path / "ablate_interrupt.py").write_text(INTERRUPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")  # for the --parallel runs
    interrupt = {
        "class_path": "ablate_interrupt.InterruptOnce",
        "init_args": {"state": str(tmp_path / "ctrl-c")},
    }
    path = write_study(
        tmp_path,
        seeds=[1, 2],
        grid={"model.position": ["LearnedPosition", "RotaryPosition"]},
        overrides={"trainer.callbacks": [interrupt]},
    )
    study = load_study(path)
    out = study.out_dir

    # First go: three runs finish, Ctrl-C in the fourth; a report of what is there.
    ablate(study)
    runs = {(r["variant"], int(r["seed"])): r for r in read_csv(out / "results.csv")}
    learned, rotary = "position=LearnedPosition", "position=RotaryPosition"
    assert [runs[v, s]["status"] for v in (learned, rotary) for s in (1, 2)] == ["done"] * 3 + ["running"]
    first = out / learned / "seed1" / "logs" / "version_0" / "metrics.csv"
    first_mtime = first.stat().st_mtime_ns
    interrupted = out / rotary / "seed2"
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()  # saved every step: resumable
    interrupted_at = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert interrupted_at == 2  # Ctrl-C before step 2's batch: steps 0 and 1 trained and saved
    assert train_steps(interrupted / "logs" / "version_0") == [0, 1]
    assert "- position=RotaryPosition (seed 2): **running**" in (out / "report.md").read_text()

    # Second go, in subprocesses (--parallel): the finished runs are skipped, the other one resumed.
    caplog.clear()
    ablate(load_study(path), parallel=2)
    assert sum("is done, skipped" in m for m in caplog.messages) == 3
    assert any(f"resuming {rotary} (seed 2) from" in m for m in caplog.messages)
    assert first.stat().st_mtime_ns == first_mtime and not (first.parent.parent / "version_1").exists()
    assert sorted(p.name for p in (interrupted / "logs").iterdir()) == ["version_0", "version_1"]
    # It continued from the checkpoint (a restart would log steps 0, 1, 2 again), and only it did.
    assert train_steps(interrupted / "logs" / "version_1") == [interrupted_at]
    assert "Trainer.fit` stopped: `max_steps=3` reached" in (interrupted / "train.log").read_text()

    # Four run folders, each with its resolved config and Lightning logs; a 4-row CSV; report and plot.
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed*"))
    assert dirs == [f"{v}/seed{s}" for v in (learned, rotary) for s in (1, 2)]
    for d in dirs:
        config = yaml.safe_load((out / d / "config.yaml").read_text())
        assert config["seed_everything"] == config["data"]["init_args"]["seed"] == int(d[-1])
        assert config["trainer"]["default_root_dir"] == str((out / d).resolve())
        assert (out / d / "checkpoints" / "last.ckpt").is_file()
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 4
    assert all(r["status"] == "done" and r["steps"] == "3" and r["tokens"] == str(3 * 12 * 32) for r in rows)
    assert all(float(r["final_val_loss"]) > 0 and float(r["final_val_bpb"]) > 0 for r in rows)
    assert all(float(r["tokens_per_sec"]) > 0 and float(r["wall_time_s"]) > 0 for r in rows)
    assert {r["params"] for r in rows if r["variant"] == learned} == {"27840"}  # + 32 × 32 learned positions
    assert {r["params"] for r in rows if r["variant"] == rotary} == {"26816"}
    report = (out / "report.md").read_text()
    assert f"**{learned}** (baseline)" in report and " ± " in report and "Runs not done" not in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_report_against_logs(out, baseline=learned, seeds=(1, 2))

    # A target between the runs' final losses: the step and training time each variant reached it at,
    # from the logs (the resumed run's time counts its first session), and the one-sided p against it.
    finals = sorted(float(r["final_val_loss"]) for r in rows)
    study = load_study(path)
    study.target = (finals[1] + finals[2]) / 2  # two runs reach it; with 2 seeds per variant, some partly
    ablate(study, report_only=True)
    assert "modded-nanogpt's rule for a record" in (out / "report.md").read_text()
    check_target_against_logs(out, study.target, seeds=(1, 2))
    study.target = finals[-1]  # every run reaches it, the resumed one too
    ablate(study, report_only=True)
    check_target_against_logs(out, study.target, seeds=(1, 2))
    # RunRecord logs the training time in the validation's row, on this session's clock
    resumed = read_csv(interrupted / "logs" / "version_1" / "metrics.csv")
    (val,) = [r for r in resumed if r.get("val_loss")]
    (end,) = [float(r["fit_time_s"]) for r in resumed if r.get("fit_time_s")]
    assert val["step"] == "2" and 0 < float(val["elapsed_s"]) <= end

    # The same study with another budget does not mix with these runs.
    changed = write_study(tmp_path, seeds=[1, 2], grid={"model.position": ["LearnedPosition"]},
                          overrides={"trainer.callbacks": [interrupt], "trainer.max_steps": 4})  # fmt: skip
    with pytest.raises(Exception, match=r"was run with another config \(trainer.max_steps: 3 → 4\)"):
        ablate(load_study(changed))


def test_variant_that_does_not_parse_is_reported_and_the_others_run(tmp_path):
    path = write_study(
        tmp_path,
        seeds=[7],
        variants={"gpt2": {}, "broken": {"model.attention": "NoSuchAttention"}},
    )
    ablate(load_study(path))
    out = tmp_path / "out" / "study"
    rows = {r["variant"]: r for r in read_csv(out / "results.csv")}
    assert rows["gpt2"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert "unknown attention 'NoSuchAttention'" in rows["broken"]["error"]
    report = (out / "report.md").read_text()
    assert "- broken (seed 7): **failed**: model.attention: unknown attention 'NoSuchAttention'" in report


def test_variant_that_crashes_mid_training_is_failed_and_the_others_finish(tmp_path, monkeypatch):
    (tmp_path / "ablate_crash.py").write_text(CRASH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")  # for the --parallel runs
    crash = {"trainer.callbacks": [{"class_path": "ablate_crash.CrashAtStep", "init_args": {"step": 2}}]}
    path = write_study(
        tmp_path, seeds=[1], variants={"gpt2": {}, "crash": crash, "rms": {"model.norm": "RMSNorm"}}
    )
    ablate(load_study(path))
    out = tmp_path / "out" / "study"
    rows = {r["variant"]: r for r in read_csv(out / "results.csv")}
    assert rows["crash"]["status"] == "failed" and "boom at step 2" in rows["crash"]["error"]
    assert train_steps(out / "crash" / "seed1" / "logs" / "version_0") == [0, 1]  # it did train, then broke
    assert rows["gpt2"]["status"] == rows["rms"]["status"] == "done"
    assert rows["gpt2"]["steps"] == rows["rms"]["steps"] == "3"
    report = (out / "report.md").read_text()
    assert "- crash (seed 1): **failed**: " in report and "boom at step 2" in report
    assert set(report_table(report)) == {"gpt2", "rms"}  # ranked: the ones that finished (crash: "–")
    assert "| – | crash |" in report


def test_run_stopped_by_sigterm_is_resumed_not_done(tmp_path, monkeypatch, caplog):
    """A kill (SIGTERM: a scheduler, a shutdown) makes Lightning save and return cleanly, exit status 0,
    before max_steps: the run must stay resumable, not be taken for a finished one."""
    caplog.set_level(logging.INFO, logger="gpt2kit.ablate")
    (tmp_path / "ablate_interrupt.py").write_text(INTERRUPT)
    monkeypatch.syspath_prepend(str(tmp_path))  # the study is resolved here, the runs in subprocesses
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    kill = {
        "class_path": "ablate_interrupt.InterruptOnce",
        "init_args": {"state": str(tmp_path / "killed"), "run": 1, "sig": "SIGTERM"},
    }
    overrides = {"trainer.callbacks": [kill], "trainer.max_steps": 6}
    path = write_study(tmp_path, seeds=[1], variants={"gpt2": {}}, overrides=overrides)
    study = load_study(path)
    run = study.out_dir / "gpt2" / "seed1"
    ablate(study, parallel=2)
    state = yaml.safe_load((run / "run.json").read_text())
    # Lightning finishes the step it got the signal in (step 2, the third), then saves and returns.
    assert (state["status"], state["error"]) == ("running", "stopped at step 3 of 6")
    assert any(
        "gpt2 (seed 1) stopped at step 3 of 6; run the same command again" in m for m in caplog.messages
    )
    assert "**running**" in (study.out_dir / "report.md").read_text()

    ablate(load_study(path), parallel=2)  # the same command resumes it
    state = yaml.safe_load((run / "run.json").read_text())
    assert (state["status"], state["error"], state["sessions"]) == ("done", None, 2)
    assert train_steps(run / "logs" / "version_1") == [3, 4, 5]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"grid": {"model.postion": ["RotaryPosition"]}},
         "grid: 'model.postion' is not a config key: did you mean 'model.position'?"),
        ({"grid": {"model.attention.window": [4, 8]}},
         "grid: 'model.attention.window' is not a config key: CausalSelfAttention (model.attention) has no option 'window'"),
        ({"grid": {}}, "the grid is empty"),
        ({"grid": {"model.optim.lr": []}}, "grid key model.optim.lr has an empty list"),
        ({"variants": {"a": {}}, "baseline": "b"}, "baseline 'b' is not a variant"),
        ({"grdi": {"model.optim.lr": [1]}}, "unknown key 'grdi': did you mean 'grid'?"),
        ({"grid": {"model.optim.lr": [1e-3]}, "plugins": ["no_such_plugin_xyz"]},
         "plugin module 'no_such_plugin_xyz' was not found"),
        ({"grid": {"model.optim.lr": [1e-3]}, "overrides": {"trainer.max_stepz": 3}},
         "overrides: 'trainer.max_stepz' is not a config key: did you mean 'trainer.max_steps'?"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line(tmp_path, capsys, spec, expected):
    path = write_study(tmp_path, **spec)
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--config", str(path)])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists()  # nothing ran


def test_tokenizer_grid_is_ranked_by_bits_per_byte(tmp_path):
    path = write_study(
        tmp_path,
        grid={"data.init_args.tokenizer": ["CharTokenizer", "ByteLevelBPETokenizer"]},
    )
    study = load_study(path)
    assert [v.name for v in study.variants] == ["tokenizer=CharTokenizer", "tokenizer=ByteLevelBPETokenizer"]

    def run(tokenizer):
        return Run("v", 1, tmp_path, config={"data": {"init_args": {"tokenizer": tokenizer}}})

    assert (
        ranking_metric(study, [run("CharTokenizer"), run({"class_path": "ByteLevelBPETokenizer"})])
        == "val_bpb"
    )
    assert ranking_metric(study, [run("CharTokenizer"), run("CharTokenizer")]) == "val_loss"


def test_dry_run_lists_runs_without_training(tmp_path, capsys):
    path = write_study(tmp_path, seeds=[1, 2, 3], variants={"a": {}, "b": {"model.norm": "RMSNorm"}})
    main(["ablate", "--config", str(path), "--dry_run"])
    out = capsys.readouterr().out
    assert "--model.norm=RMSNorm" in out and "6 runs: 2 variants × 3 seeds" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["position-encoding", "attention", "tokenizer"])
def test_study_recipes_parse(name):
    study = load_study(RECIPES / "ablations" / f"{name}.yaml")
    runs = plan(study)  # every run's config, through the fit parser
    assert runs and not [r.error for r in runs if r.error]
    assert len(runs) == len(study.variants) * len(study.seeds) and len(study.seeds) >= 2


def test_a_class_renamed_to_its_module_path_is_the_same_run(tmp_path):
    """A re-run after an upgrade that spells a class by another path (the package's re-export, the
    module's own path) continues the runs; another class is still refused."""
    from gpt2kit.ablate.runner import check_unchanged, write_state

    def run(tokenizer):
        identity = {"data": {"init_args": {"tokenizer": {"class_path": tokenizer}}}}
        return Run("v", 1, tmp_path / "v", identity=identity)

    write_state(
        run("gpt2kit.tokenizers.CharTokenizer"), identity=run("gpt2kit.tokenizers.CharTokenizer").identity
    )
    check_unchanged([run("gpt2kit.tokenizers.char.CharTokenizer")])  # the same class
    with pytest.raises(Exception, match=r"was run with another config \(data.init_args.tokenizer.class_path"):
        check_unchanged([run("gpt2kit.tokenizers.GPT2Tokenizer")])
