"""LMEvalCallback during training: eval/<task>/<metric> in the logs, and an ablation ranked by one."""

import csv

import yaml
from conftest import RECIPES

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
