"""LMEvalCallback during training: eval/<task>/<metric> in the logs (hellaswag's acc_norm among them), an
ablation ranked by one, a missing dataset refused before the first step, and when it evaluates."""

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
HELLASWAG = "eval/hellaswag/acc_norm"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _hellaswag_cache(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from hellaswag_cache import build_hellaswag_cache, use_datasets_cache

    build_hellaswag_cache(tmp_path / "datasets", tmp_path / "build")
    use_datasets_cache(monkeypatch, tmp_path / "datasets")


def test_callback_logs_task_metrics_and_ablation_ranks_by_them(tmp_path, monkeypatch):
    """An offline task and lm-eval's hellaswag (its dataset from the datasets cache) at every validation:
    their metrics in the same metrics.csv rows as val_loss, and the study ranked by
    eval/hellaswag/acc_norm (a name with slashes), high first."""
    _hellaswag_cache(tmp_path, monkeypatch)
    callback = {
        "class_path": "gpt2kit.evaluate.LMEvalCallback",
        "init_args": {"tasks": [TASK, "hellaswag"], "limit": 6, "batch_size": 6},
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
        rows = [r for r in _read(next(run.glob("logs/version_*/metrics.csv"))) if r.get(HELLASWAG)]
        steps = sorted({int(r["step"]) for r in rows})
        assert len(steps) >= 2, f"{run}: evaluated at {steps}, expected every validation"
        for r in rows:
            assert r.get("val_loss") and r.get(METRIC) and r.get("eval/hellaswag/acc"), r
            for value in (float(r[METRIC]), float(r[HELLASWAG])):  # accuracies over 6 questions
                assert min(abs(value - k / 6) for k in range(7)) < 1e-6
        finals[run.parent.name] = float(max(rows, key=lambda r: int(r["step"]))[HELLASWAG])
    report = (study.out_dir / "report.md").read_text()
    assert f"Ranked by final {HELLASWAG}" in report and "higher is better" in report
    # The report reads the logged metric from each run's logs, and ranks high first.
    results = collect(plan(study))
    assert {r.run.variant: r.final(HELLASWAG) for r in results} == finals
    for high in finals:  # whichever variant has the higher acc_norm is ranked first
        for r in results:
            r.val[HELLASWAG] = {4: 0.9 if r.run.variant == high else 0.1}
        rows, metric = summarize(study, results)
        assert metric == HELLASWAG and [row.variant for row in rows][0] == high


def test_hellaswag_not_cached_stops_training_before_a_step(tmp_path, monkeypatch, capsys):
    """No cached dataset and no network: one line at setup naming what to download and how; no step is
    trained and no checkpoint is written."""
    pytest.importorskip("lm_eval")
    from hellaswag_cache import use_datasets_cache

    from gpt2kit.commands import main

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


def test_when_the_callback_evaluates():
    """every_n_validations, every_n_steps, and a fit's last validation (the score a study ranks by)."""
    from types import SimpleNamespace

    from gpt2kit.evaluate import LMEvalCallback

    def due(callback, step, fn="fit", stop=False, max_steps=1000):
        callback._validations += 1
        trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), should_stop=stop, max_steps=max_steps)
        trainer.global_step = step
        return callback._due(trainer)

    by_validation = LMEvalCallback(tasks=[TASK], every_n_validations=3)
    assert [due(by_validation, s) for s in (100, 200, 300, 400, 500)] == [True, False, False, True, False]
    assert due(by_validation, 550, stop=True)  # the last validation of a fit (max_steps not reached)
    by_step = LMEvalCallback(tasks=[TASK], every_n_steps=250)  # validation every 100 steps
    assert [due(by_step, s) for s in (100, 200, 300, 400, 500, 600)] == [
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    assert due(by_step, 1000)  # max_steps reached
    assert due(LMEvalCallback(tasks=[TASK], every_n_validations=5), 0, fn="validate")
