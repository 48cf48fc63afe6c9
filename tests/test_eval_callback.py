"""LMEvalCallback during training: eval/<task>/<metric> in the logs, and an ablation ranked by one."""

import csv

import pytest
import yaml
from conftest import RECIPES, TINY, cwd

from gpt2kit.ablate import ablate, load_study
from gpt2kit.ablate.report import collect, summarize
from gpt2kit.ablate.study import plan

SHAKESPEARE = RECIPES / "pretrain" / "shakespeare-char.yaml"
TASK = "shakespeare_mc"
METRIC = f"eval/{TASK}/acc"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_callback_logs_task_metrics_and_ablation_ranks_by_them(tmp_path):
    callback = {
        "class_path": "gpt2kit.evaluate.LMEvalCallback",
        "init_args": {"tasks": [TASK], "limit": 6, "batch_size": 6},
    }
    spec = {
        "base": str(SHAKESPEARE),
        "out_dir": str(tmp_path / "out"),
        "seeds": [1],
        "metric": METRIC,
        "grid": {"model.arch.n_embd": [16, 32]},
        "overrides": {
            "model.arch.n_layer": 1,
            "model.arch.n_head": 2,
            "model.arch.block_size": 128,
            "trainer.max_steps": 4,
            "trainer.log_every_n_steps": 1,
            "trainer.val_check_interval": 2,
            "trainer.limit_val_batches": 1,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "trainer.callbacks": [callback],
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(path)
    ablate(study)
    finals = {}
    for run in sorted(study.out_dir.glob("*/seed1")):
        rows = [r for r in _read(next(run.glob("logs/version_*/metrics.csv"))) if r.get(METRIC)]
        steps = sorted({int(r["step"]) for r in rows})
        assert len(steps) >= 2, f"{run}: evaluated at {steps}, expected every validation"
        values = [float(r[METRIC]) for r in rows]
        assert all(
            min(abs(v - k / 6) for k in range(7)) < 1e-6 for v in values
        )  # an accuracy over 6 questions
        finals[run.parent.name] = float(max(rows, key=lambda r: int(r["step"]))[METRIC])
    report = (study.out_dir / "report.md").read_text()
    assert f"Ranked by final {METRIC}" in report and "higher is better" in report
    # The report reads the logged metric from each run's logs, and ranks high first.
    results = collect(plan(study))
    assert {r.run.variant: r.final(METRIC) for r in results} == finals
    for high in finals:  # whichever variant has the higher accuracy is ranked first
        for r in results:
            r.val[METRIC] = {4: 0.9 if r.run.variant == high else 0.1}
        rows, metric = summarize(study, results)
        assert metric == METRIC and [row.variant for row in rows][0] == high


HELLASWAG = "eval/hellaswag/acc_norm"


def _hellaswag_cache(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from hellaswag_cache import build_hellaswag_cache, use_datasets_cache

    build_hellaswag_cache(tmp_path / "datasets", tmp_path / "build")
    use_datasets_cache(monkeypatch, tmp_path / "datasets")


def test_hellaswag_beside_val_loss_and_an_ablation_ranks_by_acc_norm(tmp_path, monkeypatch):
    """lm-eval's hellaswag task (its dataset from the datasets cache) during training: acc_norm is logged in
    the same metrics.csv row as val_loss, and the study's report ranks by it (a name with slashes)."""
    _hellaswag_cache(tmp_path, monkeypatch)
    callback = {
        "class_path": "gpt2kit.evaluate.LMEvalCallback",
        "init_args": {"tasks": ["hellaswag"], "limit": None, "every_n_validations": 1, "batch_size": 8},
    }
    spec = {
        "base": str(SHAKESPEARE),
        "out_dir": str(tmp_path / "out"),
        "seeds": [1],
        "metric": HELLASWAG,
        "grid": {"model.arch.n_embd": [16, 32]},
        "overrides": {
            "model.arch.n_layer": 1,
            "model.arch.n_head": 2,
            "model.arch.block_size": 128,  # the longest hellaswag ending here is ~80 characters
            "trainer.max_steps": 2,
            "trainer.log_every_n_steps": 1,
            "trainer.val_check_interval": 2,
            "trainer.limit_val_batches": 1,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "trainer.callbacks": [callback],
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(path)
    ablate(study)
    finals = {}
    for run in sorted(study.out_dir.glob("*/seed1")):
        rows = [r for r in _read(next(run.glob("logs/version_*/metrics.csv"))) if r.get(HELLASWAG)]
        assert rows and all(r.get("val_loss") and r.get("eval/hellaswag/acc") for r in rows), rows
        value = float(rows[-1][HELLASWAG])
        assert min(abs(value - k / 20) for k in range(21)) < 1e-6  # acc_norm over the 20 items
        finals[run.parent.name] = value
    assert len(finals) == 2
    report = (study.out_dir / "report.md").read_text()
    assert f"Ranked by final {HELLASWAG}" in report and "higher is better" in report
    results = collect(plan(study))
    assert {r.run.variant: r.final(HELLASWAG) for r in results} == finals
    for high in finals:  # whichever variant has the higher acc_norm is ranked first
        for r in results:
            r.val[HELLASWAG] = {2: 0.9 if r.run.variant == high else 0.1}
        rows, metric = summarize(study, results)
        assert metric == HELLASWAG and [row.variant for row in rows][0] == high


def test_hellaswag_not_cached_stops_training_before_a_step(tmp_path, monkeypatch, capsys):
    """No cached dataset and no network: one line at setup naming what to download and how; no step is
    trained and no checkpoint is written."""
    pytest.importorskip("lm_eval")
    from hellaswag_cache import use_datasets_cache

    from gpt2kit.cli import main

    use_datasets_cache(monkeypatch, tmp_path / "empty")
    config = tmp_path / "callbacks.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                        },
                        {
                            "class_path": "gpt2kit.evaluate.LMEvalCallback",
                            "init_args": {"tasks": ["hellaswag"]},
                        },
                    ]
                }
            }
        )
    )
    with cwd(tmp_path), pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(SHAKESPEARE), "--config", str(config), *TINY])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "datasets.load_dataset('Rowan/hellaswag')" in err[0]
    assert not (tmp_path / "ckpt").exists()
    logged = [r for p in tmp_path.glob("runs/**/metrics.csv") for r in _read(p) if r.get("train_loss")]
    assert logged == []
