"""From the runs' Lightning logs to ``results.csv``, ``report.md`` and ``plot.png``.

Everything is read from what the runs' ``CSVLogger`` wrote (``logs/version_*/metrics.csv`` and
``hparams.yaml``; a resumed run adds a version, which continues the previous one from the step it
resumed at) and from each run's ``run.json`` (status, wall time).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2kit.ablate.runner import DONE, FAILED, read_state
from gpt2kit.ablate.study import (
    Run,
    Study,
    _get,
    log_versions,
    override_args,
    read_metrics,
    read_metrics_csv,
)

log = logging.getLogger("gpt2kit.ablate")

COLUMNS = [
    "variant", "seed", "status", "params", "steps", "tokens", "final_val_loss", "best_val_loss",
    "final_val_bpb", "best_val_bpb", "tokens_per_sec", "wall_time_s", "run_dir", "error",
]  # fmt: skip


@dataclass
class Result:
    """One run's outcome, read back from its logs."""

    run: Run
    status: str
    error: str | None = None
    params: int | None = None
    steps: int | None = None
    tokens: int | None = None
    val: dict[str, dict[int, float]] = field(default_factory=dict)
    """``{"val_loss": {step: value}, "val_bpb": {...}}``."""
    tokens_per_sec: float | None = None
    wall_time_s: float | None = None
    elapsed: dict[int, float] = field(default_factory=dict)
    """``{step: seconds}``: the training time at each validation (:func:`elapsed_curve`)."""

    def final(self, metric: str) -> float | None:
        curve = self.val.get(metric) or {}
        return curve[max(curve)] if curve else None

    def best(self, metric: str) -> float | None:
        curve = self.val.get(metric) or {}
        return (max if higher_is_better(metric) else min)(curve.values()) if curve else None

    def reached(self, metric: str, target: float) -> tuple[int, float | None] | None:
        """The first logged step at which ``metric`` is as good as ``target`` (at or below it, at or above
        it where higher is better) and the training time then (None if not logged); None if never."""
        sign = -1.0 if higher_is_better(metric) else 1.0
        curve = self.val.get(metric) or {}
        step = next((s for s in sorted(curve) if sign * curve[s] <= sign * target), None)
        return None if step is None else (step, self.elapsed.get(step))

    def row(self) -> dict[str, Any]:
        return {
            "variant": self.run.variant,
            "seed": self.run.seed,
            "status": self.status,
            "params": self.params,
            "steps": self.steps,
            "tokens": self.tokens,
            "final_val_loss": self.final("val_loss"),
            "best_val_loss": self.best("val_loss"),
            "final_val_bpb": self.final("val_bpb"),
            "best_val_bpb": self.best("val_bpb"),
            "tokens_per_sec": None if self.tokens_per_sec is None else round(self.tokens_per_sec, 1),
            "wall_time_s": self.wall_time_s,
            "run_dir": str(self.run.dir),
            "error": self.error,
        }


def fit_time(run: Run) -> float | None:
    """Seconds of training, every session's (as :class:`~gpt2kit.ablate.RunRecord` logged them)."""
    times = [
        r["fit_time_s"]
        for v in log_versions(run)
        for r in read_metrics_csv(v / "metrics.csv")
        if "fit_time_s" in r
    ]
    return round(sum(times), 2) if times else None


def elapsed_curve(run: Run) -> dict[int, float]:
    """``{step: seconds}`` from the start of training to each validation, as :class:`~gpt2kit.ablate.RunRecord`
    logged them (``elapsed_s``); a resumed session's times continue from its earlier sessions' ``fit_time_s``
    added up (the time :func:`fit_time` reports), and replace their times from the step it resumed at."""
    curve: dict[int, float] = {}
    offset = 0.0
    for version in log_versions(run):
        rows = read_metrics_csv(version / "metrics.csv")
        if not rows:
            continue
        first = min(r["step"] for r in rows)
        curve = {s: t for s, t in curve.items() if s < first}
        curve.update({int(r["step"]): offset + r["elapsed_s"] for r in rows if "elapsed_s" in r})
        offset += sum(r["fit_time_s"] for r in rows if "fit_time_s" in r)
    return curve


def _params(run: Run) -> int | None:
    for version in reversed(log_versions(run)):
        path = version / "hparams.yaml"
        if path.is_file():
            try:
                hparams = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
            if "num_params" in hparams:
                return int(hparams["num_params"])
    return None


def token_budget(config: dict[str, Any] | None) -> int | None:
    """Training tokens per device: max_steps × batch_size × block_size × accumulate_grad_batches."""
    if config is None:
        return None
    steps = _get(config, "trainer.max_steps")
    batch = _get(config, "data.init_args.batch_size")
    block = _get(config, "model.arch.block_size")
    accumulate = _get(config, "trainer.accumulate_grad_batches") or 1
    if not all(isinstance(x, int) and x > 0 for x in (steps, batch, block, accumulate)):
        return None
    return steps * batch * block * accumulate


def collect(runs: Sequence[Run]) -> list[Result]:
    results = []
    for run in runs:
        state = read_state(run)
        status = state.get("status", "pending") if run.config is not None else FAILED
        result = Result(
            run, status, error=state.get("error") or run.error, wall_time_s=state.get("wall_time_s")
        )
        rows = read_metrics(run)
        logged = {k for r in rows for k in r if k in ("val_loss", "val_bpb") or k.startswith("eval/")}
        for metric in sorted(logged):  # the validation losses and any downstream metric (LMEvalCallback)
            curve = {int(r["step"]): r[metric] for r in rows if metric in r}
            if curve:
                result.val[metric] = curve
        result.wall_time_s = fit_time(run) or result.wall_time_s  # else the runner's clock
        result.elapsed = elapsed_curve(run)
        speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
        result.tokens_per_sec = statistics.median(speeds) if speeds else None
        trained = [r["step"] for r in rows if "train_loss" in r]
        result.steps = int(max(trained)) + 1 if trained else None  # steps count from 0 in the logs
        result.params = _params(run)
        result.tokens = token_budget(run.config)
        results.append(result)
    return results


def write_csv(results: Sequence[Result], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow({k: "" if v is None else v for k, v in r.row().items()})


# --- the report ------------------------------------------------------------------------------------------------


def _varies(runs: Sequence[Run], key: str) -> bool:
    values = {repr(_get(r.config, key)) for r in runs if r.config is not None}
    return len(values) > 1


def ranking_metric(study: Study, runs: Sequence[Run]) -> str:
    """Bits per byte when the tokenizer varies (a loss per token is then not comparable), else val loss."""
    if study.metric is not None:
        return study.metric
    return "val_bpb" if _varies(runs, "data.init_args.tokenizer") else "val_loss"


def higher_is_better(metric: str) -> bool:
    """Accuracy-like logged metrics (eval/<task>/acc) rank high first; losses, perplexities, bits low first."""
    lower = ("loss", "bpb", "perplexity", "bits_per_byte", "ppl")
    return metric.startswith("eval/") and not metric.rsplit("/", 1)[-1].endswith(lower)


def _stats(values: Sequence[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _pm(stats: tuple[float, float] | None, digits: int = 3, n: int = 1) -> str:
    if stats is None:
        return "–"
    mean, std = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --- statistics: Welch's t-test, a one-sided test against a target, the step a variant reaches a value -------

SIGNIFICANT = 0.01
"""A variant's p-value below this is marked (modded-nanogpt's bar for a record)."""


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if math.isfinite(v)]


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) that ``a`` and ``b`` have the same mean.

    None with fewer than two values on a side, or no spread at all (the test is then undefined).
    """
    from scipy import stats  # imported here: every command line imports the ablate package

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2 or statistics.variance(a) + statistics.variance(b) == 0.0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def target_p(values: Sequence[float], target: float, higher_better: bool = False) -> float | None:
    """One-sided p-value of the t-test that the mean of ``values`` beats ``target``: is below it (above it
    when higher is better). modded-nanogpt's rule for a record: p < 0.01 over the runs' final values.

    None with fewer than two values or no spread (the test is then undefined).
    """
    from scipy import stats

    values = _finite(values)
    if len(values) < 2 or statistics.variance(values) == 0.0:
        return None
    alternative = "greater" if higher_better else "less"
    return float(stats.ttest_1samp(values, target, alternative=alternative).pvalue)


def _p_cell(p: float | None) -> str:
    return "–" if p is None else (f"**{p:.2g}**" if p < SIGNIFICANT else f"{p:.2g}")


def _mean_curve(results: Sequence[Result], metric: str) -> dict[int, float]:
    """The mean over runs at each step that every run logged."""
    curves = [r.val.get(metric) or {} for r in results]
    if not curves or not all(curves):
        return {}
    steps = set(curves[0]).intersection(*curves[1:])
    return {s: statistics.fmean(c[s] for c in curves) for s in sorted(steps)}


def first_step_reaching(results: Sequence[Result], metric: str, target: float | None) -> int | None:
    """The first logged step at which the mean over seeds is as good as ``target`` (at or below it, or at or
    above it for a metric where higher is better); None if never."""
    if target is None:
        return None
    sign = -1.0 if higher_is_better(metric) else 1.0
    return next((s for s, v in _mean_curve(results, metric).items() if sign * v <= sign * target), None)


@dataclass
class Row:
    variant: str
    results: list[Result]

    def done(self) -> list[Result]:
        return [r for r in self.results if r.status == DONE]

    def stats(self, what: str, metric: str) -> tuple[float, float] | None:
        pick = {"final": Result.final, "best": Result.best}[what]
        return _stats([pick(r, metric) for r in self.done()])


def summarize(study: Study, results: Sequence[Result]) -> tuple[list[Row], str]:
    """One row per variant, ranked by the mean final value of the ranking metric (failed variants last)."""
    runs = [r.run for r in results]
    metric = ranking_metric(study, runs)
    rows = [Row(v.name, [r for r in results if r.run.variant == v.name]) for v in study.variants]

    def key(row: Row) -> tuple[int, float]:
        s = row.stats("final", metric)
        return (0, -s[0] if higher_is_better(metric) else s[0]) if s is not None else (1, 0.0)

    return sorted(rows, key=key), metric


def _versus(row: Row, other: Row, metric: str) -> tuple[str, str]:
    """Δ of the mean final ``metric`` from ``other``'s, and Welch's p against it, as table cells."""
    if row is other:
        return "0", "–"
    mine, theirs = row.stats("final", metric), other.stats("final", metric)
    delta = "–" if mine is None or theirs is None else f"{mine[0] - theirs[0]:+.3f}"
    p = welch_p(
        [v for r in row.done() if (v := r.final(metric)) is not None],
        [v for r in other.done() if (v := r.final(metric)) is not None],
    )
    return delta, _p_cell(p)


def _reaches(row: Row, metric: str, target: float) -> str:
    """The mean over seeds of the step (and training time) at which each run first reached ``target``:
    ``499 (2.1 min)``; ``… , 2 of 3 seeds`` when some never did; ``never`` when none did."""
    done = row.done()
    if not done:
        return "–"
    reached = [x for r in done if (x := r.reached(metric, target)) is not None]
    if not reached:
        return "never"
    cell = f"{statistics.fmean(s for s, _ in reached):.0f}"
    times = [t for _, t in reached if t is not None]
    if len(times) == len(reached):
        cell += f" ({_duration(statistics.fmean(times))})"
    return cell + (f", {len(reached)} of {len(done)} seeds" if len(reached) < len(done) else "")


def _target_label(metric: str, target: float) -> str:
    return f"{'>' if higher_is_better(metric) else '<'} {target:g}"


def write_report(study: Study, results: Sequence[Result], path: Path, plot: str | None) -> None:
    rows, metric = summarize(study, results)
    runs = [r.run for r in results]
    other = "val_loss" if metric == "val_bpb" else "val_bpb"
    names = {metric: metric, "val_loss": "val loss", "val_bpb": "val bpb"}
    unit = {"val_bpb": "bits per byte of text", "val_loss": "nats per token"}.get(metric, "a logged metric")
    better = "higher is better" if higher_is_better(metric) else "lower is better"
    base = next(row for row in rows if row.variant == study.baseline)
    base_stats = base.stats("final", metric)
    n_seeds = len(study.seeds)
    lines = [
        f"# Ablation: {study.name}",
        "",
        f"`python -m gpt2kit ablate --config {study.path}`: base recipe `{study.base.name}`, "
        f"{len(study.variants)} variants × {n_seeds} seed{'s' if n_seeds > 1 else ''} "
        f"({', '.join(map(str, study.seeds))}); {_held_equal(runs)}.",
        "",
        f"Ranked by final {names[metric]} ({unit}; {better}), mean ± std over seeds; Δ is the difference "
        "of the means from the baseline; wall time is the training time of one run (fit start to end). p is "
        f"Welch's t-test of the variant's final {names[metric]} against the baseline's over seeds (two-sided; "
        f'**bold** when p < {SIGNIFICANT}); "reaches baseline" is the first validation step at which the '
        f"variant's mean over seeds is at least as good as the baseline's final {names[metric]}.",
        "",
    ]
    ref = next((row for row in rows if row.variant == study.reference), None)
    if ref is not None:  # the paragraph above says it
        lines[-2] += f" Δ and p vs {ref.variant}: the same against the reference variant, {ref.variant}."
    target = study.target
    if target is not None:
        lines[-2] += (
            f' "reaches {target:g}": the step at which a run\'s {names[metric]} first reaches the target '
            f"{target:g}, and the training time until then, mean over seeds (with how many seeds reached it, "
            f'when not all did); "p ({_target_label(metric, target)})": the one-sided t-test of the variant\'s '
            f"final {names[metric]} over seeds against the target (**bold** when p < {SIGNIFICANT}: "
            "modded-nanogpt's rule for a record)."
        )
    header = ["", "variant", "params", f"{names[metric]}", "Δ vs baseline", "p (Welch)", "reaches baseline",
              *([f"Δ vs {ref.variant}", f"p vs {ref.variant}"] if ref else []),
              *([f"reaches {target:g}", f"p ({_target_label(metric, target)})"] if target is not None else []),
              f"best {names[metric]}", names[other], "tokens/s", "wall time", "runs"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows, 1):
        done = row.done()
        final = row.stats("final", metric)
        params = {r.params for r in done if r.params is not None}
        speed = _stats([r.tokens_per_sec for r in done])
        wall = _stats([r.wall_time_s for r in done])
        delta, p_text = _versus(row, base, metric)
        versus = list(_versus(row, ref, metric)) if ref is not None else []
        if target is not None:
            finals = [v for r in done if (v := r.final(metric)) is not None]
            p = target_p(finals, target, higher_is_better(metric))
            versus += [_reaches(row, metric, target), _p_cell(p)]
        reach = first_step_reaching(done, metric, base_stats[0] if base_stats else None)
        name = f"**{row.variant}** (baseline)" if row is base else row.variant
        failed = len(row.results) - len(done)
        count = f"{len(done)}/{len(row.results)}" + (f" ({failed} not done)" if failed else "")
        lines.append(
            "| " + " | ".join([
                str(i) if final is not None else "–", name, _count(max(params)) if params else "–",
                _pm(final, n=len(done)), delta, p_text, "never" if reach is None else str(reach), *versus,
                _pm(row.stats("best", metric), n=len(done)),
                _pm(row.stats("final", other), n=len(done)), _count(speed[0]) if speed else "–",
                _duration(wall[0]) if wall else "–", count,
            ]) + " |"
        )  # fmt: skip
    lines += ["", "Variants (dotted overrides on top of the base recipe and the study's own):", ""]
    for v in study.variants:
        lines.append(
            f"- {v.name}: " + (" ".join(f"`{a}`" for a in override_args(v.overrides)) or "the base recipe")
        )
    lines += [""]
    notes = _footing(study, runs, results, metric)
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    problems: dict[tuple[str, str, str], list[int]] = {}
    for r in results:
        if r.status != DONE:
            problems.setdefault((r.run.variant, r.status, r.error or ""), []).append(r.run.seed)
    if problems:
        lines += ["Runs not done:", ""]
        for (variant, status, error), seeds in problems.items():
            which = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            lines.append(f"- {variant} ({which}): **{status}**" + (f": {error}" if error else ""))
        lines += [""]
    if plot:
        lines += [f"![{names[metric]} per variant]({plot})", ""]
    lines += [
        "Per run: `results.csv` here; each run's config, logs and checkpoints in its folder "
        f"(`{study.out_dir}/VARIANT/seedN/`).",
        "",
    ]
    path.write_text("\n".join(lines))


def _held_equal(runs: Sequence[Run]) -> str:
    """``tinyshakespeare, 600 steps × 12 × 64 = 460,800 training tokens per run`` (what every run shares)."""
    configs = [r.config for r in runs if r.config is not None]
    if not configs:
        return "no run parsed"
    parts = []
    if not _varies(runs, "data.init_args.source") and _get(configs[0], "data.init_args.source"):
        parts.append(f"data `{_get(configs[0], 'data.init_args.source')}`")
    budgets = {token_budget(c) for c in configs}
    if len(budgets) == 1 and None not in budgets:
        c = configs[0]
        steps, batch, block = (
            _get(c, k) for k in ("trainer.max_steps", "data.init_args.batch_size", "model.arch.block_size")
        )
        accumulate = _get(c, "trainer.accumulate_grad_batches") or 1
        acc = f" × {accumulate}" if accumulate > 1 else ""
        parts.append(
            f"{steps} steps × batch {batch}{acc} × block {block} = {budgets.pop():,} training tokens per run"
        )
    else:
        parts.append("token budgets that differ")
    return ", ".join(parts)


def _footing(study: Study, runs: Sequence[Run], results: Sequence[Result], metric: str) -> list[str]:
    """What was held equal, and a warning for anything that was not."""
    notes = []
    data = [r for r in runs if r.config is not None]
    if _varies(data, "data.init_args.tokenizer"):
        notes.append(
            "The tokenizer varies: the ranking is by bits per byte, since a loss per "
            "token is not comparable across vocabularies. Every run trains on the same number of tokens, "
            "which is a different number of bytes of text per tokenizer."
        )
    if any(
        _varies(data, k) for k in ("data.init_args.source", "data.class_path", "data.init_args.val_fraction")
    ):
        notes.append("**Warning: the data differs between variants** (source, split or data module).")
    if len({r.tokens for r in results if r.tokens is not None}) > 1:
        notes.append("**Warning: the token budget differs between variants** (steps, batch or block size).")
    if metric == "val_bpb" and not any(r.val.get("val_bpb") for r in results):
        notes.append("**No run logged val_bpb**: its data module does not report bytes per token.")
    return notes


# --- the plot ----------------------------------------------------------------------------------------------------


def write_plot(study: Study, results: Sequence[Result], path: Path) -> bool:
    """Validation curve per variant (the mean over seeds), the seeds' range shaded. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("ablate: matplotlib is not installed, so no plot.png: pip install 'gpt2kit[plot]'")
        return False
    rows, metric = summarize(study, results)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for row in rows:
        curves = [r.val.get(metric, {}) for r in row.results if r.val.get(metric)]
        if not curves:
            continue
        steps = sorted(set().union(*curves))
        values = [[c[s] for c in curves if s in c] for s in steps]
        mean = [statistics.fmean(v) for v in values]
        baseline = row.variant == study.baseline
        label = f"{row.variant} (baseline)" if baseline else row.variant
        (line,) = ax.plot(steps, mean, label=label, linewidth=2.2 if baseline else 1.4,
                          linestyle="--" if baseline else "-", marker="o" if len(steps) < 12 else None)  # fmt: skip
        if len(curves) > 1:
            ax.fill_between(
                steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.18
            )
    ax.set_xlabel("step")
    ax.set_ylabel(
        {"val_loss": "validation loss (nats/token)", "val_bpb": "validation bits per byte"}.get(
            metric, metric
        )
    )
    ax.set_title(f"{study.name}: mean over {len(study.seeds)} seed(s), range shaded")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _zoom(ax, rows, metric)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the same runs give the same file
    plt.close(fig)
    return True


def _zoom(ax: Any, rows: Sequence[Row], metric: str) -> None:
    """Keep the first validation (an untrained model, far above the rest) from flattening the curves."""
    finals = [v for row in rows for r in row.results for v in [r.final(metric)] if v is not None]
    starts = [c[min(c)] for row in rows for r in row.results for c in [r.val.get(metric) or {}] if len(c) > 2]
    if finals and starts:
        low, high = min(finals), max(finals)
        top = high + 2.5 * max(high - low, 0.05 * high)
        if max(starts) > top:
            ax.set_ylim(low - 0.1 * (top - low), top)
