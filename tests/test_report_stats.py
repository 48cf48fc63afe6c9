"""The ablation report's statistics: Welch's t-test p-value, the one-sided test against a target, the step
a variant reaches the baseline or the target; the committed speedrun report reproduced."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from gpt2kit.ablate.report import (
    Result,
    elapsed_curve,
    first_step_reaching,
    target_p,
    welch_p,
    write_report,
)
from gpt2kit.ablate.runner import DONE
from gpt2kit.ablate.study import Run, Study, Variant
from gpt2kit.errors import GPT2KitError


def _welch_by_hand(a, b):
    """Welch's test written out for equal sizes and variances, where df is exact: n = 3, s^2 = 1 -> df 4."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    t = (ma - mb) / math.sqrt(1 / 3 + 1 / 3)
    # Student's t CDF with 4 degrees of freedom in closed form: F(t) = 1/2 + 3/4 x (1 - x^2 / 3), x = t / sqrt(4 + t^2)
    x = t / math.sqrt(4 + t * t)
    cdf = 0.5 + 0.75 * x * (1 - x * x / 3)
    return 2 * (1 - cdf) if t > 0 else 2 * cdf


def test_welch_p():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]  # variance 1 each: Welch's df is exactly 4
    assert welch_p(a, b) == pytest.approx(_welch_by_hand(a, b), rel=1e-9)
    assert welch_p([1.60, 1.61, 1.59], [1.90, 1.91, 1.89]) < 0.01  # a clear gap over 3 seeds
    assert welch_p([1.60, 1.70, 1.65], [1.62, 1.71, 1.64]) > 0.5  # noise
    assert welch_p([1.0], [2.0, 3.0]) is None  # one seed: no test
    assert welch_p([1.0, 1.0], [1.0, 1.0]) is None  # no spread: undefined


def test_target_p_is_the_one_sided_t_test():
    # n = 3 with s = 1: t = (mean - target) * sqrt(3), df = 2, whose CDF is F(t) = 1/2 + t / (2 sqrt(t^2 + 2))
    values = [1.0, 2.0, 3.0]
    for target in (1.2, 2.5, 4.0):
        t = (2.0 - target) * math.sqrt(3)
        below = 0.5 + t / (2 * math.sqrt(t * t + 2))  # P(T <= t): the evidence that the mean is below target
        assert target_p(values, target) == pytest.approx(below, rel=1e-9)
        assert target_p(values, target, higher_better=True) == pytest.approx(1 - below, rel=1e-9)
    assert target_p([1.590, 1.593, 1.596], 1.898) < 0.01  # far below the target over 3 seeds: a record
    assert target_p([1.890, 1.905, 1.898], 1.898) > 0.4  # at the target: no claim
    assert target_p([1.5], 1.898) is None  # one seed: no test
    assert target_p([1.5, 1.5], 1.898) is None  # no spread: undefined


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    path.mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_elapsed_curve_continues_a_resumed_run(tmp_path):
    run = Run("v", 1, tmp_path / "v" / "seed1")
    logs = run.dir / "logs"
    # session 0: validations at 99 and 199, stopped at step 250 after 30 s; the last checkpoint was at 200
    _write_metrics(logs / "version_0", [
        {"step": 99, "val_loss": 2.5, "elapsed_s": 10.0}, {"step": 199, "val_loss": 2.2, "elapsed_s": 21.0},
        {"step": 250, "fit_time_s": 30.0},
    ])  # fmt: skip
    # session 1 resumed at 200: its own clock starts at 0, after the 30 s already spent
    _write_metrics(logs / "version_1", [
        {"step": 200, "train_loss": 2.2}, {"step": 299, "val_loss": 2.0, "elapsed_s": 12.0},
        {"step": 299, "fit_time_s": 14.0},
    ])  # fmt: skip
    assert elapsed_curve(run) == {99: 10.0, 199: 21.0, 299: 42.0}
    result = Result(run, DONE, val={"val_loss": {99: 2.5, 199: 2.2, 299: 2.0}}, elapsed=elapsed_curve(run))
    assert result.reached("val_loss", 2.2) == (199, 21.0)  # at or below
    assert result.reached("val_loss", 2.1) == (299, 42.0)
    assert result.reached("val_loss", 1.9) is None
    assert Result(run, DONE, val={"val_loss": {99: 2.0}}).reached("val_loss", 2.1) == (99, None)  # no time


def _result(variant: str, seed: int, curve: dict[int, float]) -> Result:
    return Result(Run(variant, seed, Path(f"/nowhere/{variant}/seed{seed}")), DONE, val={"val_loss": curve})


def test_first_step_reaching_uses_the_mean_over_seeds():
    runs = [_result("v", 1, {0: 4.0, 250: 2.0, 500: 1.80}), _result("v", 2, {0: 4.0, 250: 1.9, 500: 1.84})]
    assert first_step_reaching(runs, "val_loss", 1.95) == 250  # mean 1.95 at 250
    assert first_step_reaching(runs, "val_loss", 1.90) == 500
    assert first_step_reaching(runs, "val_loss", 1.5) is None


def test_report_has_the_p_value_and_reaches_baseline_columns(tmp_path):
    study = Study(
        name="s", path=tmp_path / "s.yaml", base=tmp_path / "base.yaml", out_dir=tmp_path, seeds=[1, 2, 3],
        overrides={}, variants=[Variant("base", {}), Variant("fast", {}), Variant("same", {})], baseline="base",
    )  # fmt: skip
    finals = {"base": [1.90, 1.91, 1.89], "fast": [1.60, 1.62, 1.61], "same": [1.92, 1.90, 1.91]}
    results = [
        _result(v, s, {0: 4.2, 250: f + 0.4 if v != "fast" else 1.85, 500: f})
        for v, fs in finals.items()
        for s, f in zip([1, 2, 3], fs, strict=True)
    ]
    write_report(study, results, tmp_path / "report.md", None)
    rows = {
        cells[1].strip("* ").replace(" (baseline)", "").replace("*", ""): cells
        for line in (tmp_path / "report.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("|  | variant")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    header = next(line for line in (tmp_path / "report.md").read_text().splitlines() if "| variant" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    p_col, reach_col = columns.index("p (Welch)"), columns.index("reaches baseline")
    p_fast = welch_p(finals["fast"], finals["base"])
    assert p_fast < 0.01 and rows["fast"][p_col] == f"**{p_fast:.2g}**"  # marked significant
    assert rows["same"][p_col] == f"{welch_p(finals['same'], finals['base']):.2g}"  # not marked
    assert rows["base"][p_col] == "–"
    assert rows["fast"][reach_col] == "250"  # 1.85 <= the baseline's final mean 1.90 already at step 250
    assert rows["base"][reach_col] == "500"
    assert rows["same"][reach_col] == "never"  # its mean, 1.91 at best, stays above 1.90
    assert "vs same" not in header  # no reference variant: no extra columns

    # With a reference variant (the full recipe of a remove-one-at-a-time study): Δ and p against it too.
    study.reference = "same"
    write_report(study, results, tmp_path / "report.md", None)
    lines = (tmp_path / "report.md").read_text().splitlines()
    columns = [c.strip() for c in next(x for x in lines if "| variant" in x).strip("|").split("|")]
    rows = {
        cells[1].strip("* ").replace(" (baseline)", "").replace("*", ""): cells
        for line in lines
        if line.startswith("| ") and not line.startswith("|  | variant")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    d_col, p_col = columns.index("Δ vs same"), columns.index("p vs same")
    mean = {v: sum(fs) / 3 for v, fs in finals.items()}
    assert rows["fast"][d_col] == f"{mean['fast'] - mean['same']:+.3f}"
    assert rows["fast"][p_col] == f"**{welch_p(finals['fast'], finals['same']):.2g}**"
    assert rows["base"][p_col] == f"{welch_p(finals['base'], finals['same']):.2g}"
    assert (rows["same"][d_col], rows["same"][p_col]) == ("0", "–")


def test_reference_must_be_another_variant(tmp_path):
    from gpt2kit.ablate.study import load_study

    base = tmp_path / "base.yaml"
    base.write_text("model: {}\n")
    for reference, message in [("ful", "reference 'ful' is not a variant: did you mean 'full'?"),
                               ("base", "reference 'base' is the baseline")]:  # fmt: skip
        study = tmp_path / "s.yaml"
        study.write_text(f"base: base.yaml\nvariants: {{base: {{}}, full: {{}}}}\nreference: {reference}\n")
        with pytest.raises(GPT2KitError, match=message):
            load_study(study)


def _table(report: str) -> tuple[list[str], dict[str, list[str]]]:
    """report.md's ranking table: its header, and the cells of each variant's row."""
    lines = [x for x in report.splitlines() if x.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[1].replace(" (baseline)", "").replace("*", "")] = cells
    return header, rows


def test_report_with_a_target(tmp_path):
    study = Study(
        name="s", path=tmp_path / "s.yaml", base=tmp_path / "base.yaml", out_dir=tmp_path, seeds=[1, 2, 3],
        overrides={}, variants=[Variant("base", {}), Variant("fast", {}), Variant("slow", {})], baseline="base",
        target=1.80,
    )  # fmt: skip
    curves = {  # variant: per seed {step: val_loss}; the training time is 0.5 s per step
        "base": [{249: 2.2, 499: 1.90}, {249: 2.2, 499: 1.91}, {249: 2.2, 499: 1.89}],
        "fast": [{249: 1.79, 499: 1.60}, {249: 1.81, 499: 1.62}, {249: 1.82, 499: 1.61}],
        "slow": [{249: 2.0, 499: 1.79}, {249: 2.0, 499: 1.85}, {249: 2.0, 499: 1.83}],
    }
    results = [
        Result(
            Run(v, seed, tmp_path / v / f"seed{seed}"),
            DONE,
            val={"val_loss": c},
            elapsed={249: 125.0, 499: 250.0},
        )
        for v, cs in curves.items()
        for seed, c in zip([1, 2, 3], cs, strict=True)
    ]
    write_report(study, results, tmp_path / "report.md", None)
    report = (tmp_path / "report.md").read_text()
    header, rows = _table(report)
    reach, p = header.index("reaches 1.8"), header.index("p (< 1.8)")
    assert rows["fast"][reach] == "416 (3.5 min)"  # seeds at 249, 499, 499: a mean of 415.67 steps, 208.3 s
    assert rows["slow"][reach] == "499 (4.2 min), 1 of 3 seeds"
    assert rows["base"][reach] == "never"
    finals = {v: [c[499] for c in cs] for v, cs in curves.items()}
    p_fast, p_slow = target_p(finals["fast"], 1.80), target_p(finals["slow"], 1.80)
    assert p_fast < 0.01 and rows["fast"][p] == f"**{p_fast:.2g}**"  # beats the target: bold
    assert p_slow > 0.5 and rows["slow"][p] == f"{p_slow:.2g}"
    assert "modded-nanogpt's rule for a record" in report

    study.target = None  # no target: no such columns
    write_report(study, results, tmp_path / "report.md", None)
    assert not any(
        c.startswith(("reaches 1", "p (<")) for c in _table((tmp_path / "report.md").read_text())[0]
    )


def test_the_committed_speedrun_report_is_reproduced(tmp_path):
    """docs/ablations/speedrun/report.md's means, Δ and p-values from its results.csv, by today's code."""
    from gpt2kit.ablate.study import load_study

    root = Path(__file__).resolve().parents[1]
    folder = root / "docs" / "ablations" / "speedrun"
    study = load_study(root / "recipes" / "ablations" / "speedrun.yaml")
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 33 and {r["status"] for r in rows} == {"done"}
    results = [
        Result(
            Run(r["variant"], int(r["seed"]), Path(r["run_dir"])),
            r["status"],
            params=int(r["params"]),
            val={
                "val_loss": {1999: float(r["final_val_loss"])},
                "val_bpb": {1999: float(r["final_val_bpb"])},
            },
        )  # fmt: skip
        for r in rows
    ]
    write_report(study, results, tmp_path / "report.md", None)
    header, made = _table((tmp_path / "report.md").read_text())
    committed_header, committed = _table((folder / "report.md").read_text())
    assert set(made) == set(committed) and len(committed) == 11
    columns = ["variant", "val loss", "Δ vs baseline", "p (Welch)", "Δ vs modern", "p vs modern", "val bpb"]
    for variant, cells in committed.items():
        for column in columns:
            assert made[variant][header.index(column)] == cells[committed_header.index(column)], (
                variant,
                column,
            )
    # the ranks too (the order of the rows)
    assert [made[v][0] for v in committed] == [committed[v][0] for v in committed]


def test_target_must_be_a_number(tmp_path):
    from gpt2kit.ablate.study import load_study

    (tmp_path / "base.yaml").write_text("model: {}\n")
    study = tmp_path / "s.yaml"
    for target in ("fast", "true", "[1.9]", ".nan"):
        study.write_text(f"base: base.yaml\nvariants: {{base: {{}}}}\ntarget: {target}\n")
        with pytest.raises(GPT2KitError, match=r"target must be a number, a value of the metric to reach"):
            load_study(study)
    study.write_text("base: base.yaml\nvariants: {base: {}}\ntarget: 1.898\n")
    assert load_study(study).target == 1.898
