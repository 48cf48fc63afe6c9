"""The ablation report's statistics: Welch's t-test p-value and the step a variant reaches the baseline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from gpt2kit.ablate.report import Result, first_step_reaching, t_two_sided_p, welch_p, write_report
from gpt2kit.ablate.runner import DONE
from gpt2kit.ablate.study import Run, Study, Variant
from gpt2kit.errors import GPT2KitError


def test_t_distribution_against_closed_forms():
    # df = 1 is the Cauchy distribution: P(|T| >= t) = 1 - 2 atan(t) / pi
    for t in (0.3, 1.0, 4.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10)
    # df = 2: P(|T| >= t) = 1 - t / sqrt(t^2 + 2)
    for t in (0.5, 2.0, 9.0):
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)
    # a huge df is the normal distribution: 1.959964 is its two-sided 5% point
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, rel=1e-5)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def _welch_by_hand(a, b):
    """Welch's test written out for equal sizes and variances, where df is exact: n = 3, s^2 = 1 -> df 4."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    t = (ma - mb) / math.sqrt(1 / 3 + 1 / 3)
    # Student's t CDF with 4 degrees of freedom in closed form: F(t) = 1/2 + 3/4 x (1 - x^2 / 3), x = t / sqrt(4 + t^2)
    x = t / math.sqrt(4 + t * t)
    cdf = 0.5 + 0.75 * x * (1 - x * x / 3)
    return 2 * (1 - cdf) if t > 0 else 2 * cdf


@pytest.mark.parametrize("without_scipy", [False, True], ids=["scipy", "by-hand"])
def test_welch_p(monkeypatch, without_scipy):
    if without_scipy:
        monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` now raises ImportError
    else:
        pytest.importorskip("scipy")
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]  # variance 1 each: Welch's df is exactly 4
    assert welch_p(a, b) == pytest.approx(_welch_by_hand(a, b), rel=1e-9)
    assert welch_p([1.60, 1.61, 1.59], [1.90, 1.91, 1.89]) < 0.01  # a clear gap over 3 seeds
    assert welch_p([1.60, 1.70, 1.65], [1.62, 1.71, 1.64]) > 0.5  # noise
    assert welch_p([1.0], [2.0, 3.0]) is None  # one seed: no test
    assert welch_p([1.0, 1.0], [1.0, 1.0]) is None  # no spread: undefined


def test_welch_p_matches_scipy_on_unequal_variances():
    stats = pytest.importorskip("scipy.stats")
    a, b = [1.61, 1.58, 1.65, 1.60], [1.90, 1.70, 2.05]
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(expected, rel=1e-9)


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
