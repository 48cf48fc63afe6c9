"""The study file: a base recipe, the overrides shared by every run, the variants to compare, the seeds.

::

    base: ../pretrain/shakespeare-char.yaml   # a fit recipe, relative to this file
    seeds: [1337, 1, 2]
    overrides:                                # every run: the budget and the size (dotted keys, as on the CLI)
      trainer.max_steps: 300
    variants:                                 # named variants, each a set of dotted overrides ...
      learned: {}
      rope: {model.position: RotaryPosition}
    grid:                                     # ... and/or every combination of these values
      model.optim.lr: [1.0e-3, 3.0e-3]
    baseline: learned
    launcher: {partition: gpu, time: "02:00:00", gpus_per_node: 1}   # for --launcher slurm (ablate/launcher.py)

Every run is resolved here, through the same parser as ``fit``, into a complete config: a bad key or
value is found before anything trains. The config keeps the recipe's settings except where a run must
differ from its neighbours: its folder (``trainer.default_root_dir``, checkpoint ``dirpath``), its
logger (a ``CSVLogger`` in that folder, which the report reads), and a ``last.ckpt`` to resume from.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2kit.ablate.launcher import LauncherOptions, parse_launcher
from gpt2kit.errors import GPT2KitError, user_error
from gpt2kit.spec import describe

KEYS = (
    "name", "base", "out_dir", "seeds", "overrides", "variants", "grid", "baseline", "reference", "plugins",
    "metric", "target", "launcher",
)  # fmt: skip
SEED_KEYS = ("seed_everything", "data.init_args.seed")
"""Where a run's seed goes: the global seed (initialisation, dropout) and the data's (window order)."""
CHECKPOINTS = "checkpoints"
LOGS = "logs"


@dataclass
class Variant:
    """One point of the comparison: a name and its dotted overrides (applied after the study's own)."""

    name: str
    overrides: dict[str, Any]
    grid_keys: tuple[str, ...] = ()
    """The keys among ``overrides`` that come from the grid."""


@dataclass
class Run:
    """One training run: a variant with one seed, in its own folder."""

    variant: str
    seed: int
    dir: Path
    config: dict[str, Any] | None = None
    """The resolved ``fit`` config written to ``dir/config.yaml``; None when the variant did not parse."""
    identity: dict[str, Any] | None = None
    """The config before the run's own paths went in: what must match for a re-run to reuse the run."""
    error: str | None = None
    """Why the variant's config did not parse (the run is then reported failed, never started)."""

    @property
    def label(self) -> str:
        return f"{self.variant} (seed {self.seed})"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / CHECKPOINTS / "last.ckpt"


@dataclass
class Study:
    """A parsed study file."""

    name: str
    path: Path
    base: Path
    out_dir: Path
    seeds: list[int]
    overrides: dict[str, Any]
    variants: list[Variant]
    baseline: str
    plugins: list[str] = field(default_factory=list)
    metric: str | None = None
    """``val_loss``, ``val_bpb`` or a logged ``eval/<task>/<metric>`` to rank by; None: bits per byte when
    the tokenizer varies, else loss."""
    target: float | None = None
    """A value of the metric to reach (e.g. nanoGPT's 1.898 val loss): the report gives the step and time
    at which each variant first reaches it, and a one-sided t-test p-value that its mean final value
    beats it (modded-nanogpt's rule for a record: p < 0.01)."""
    reference: str | None = None
    """A second variant every other is compared with (Δ and p): in a study that removes one ingredient
    at a time from a full recipe, the full recipe."""
    launcher: LauncherOptions = field(default_factory=LauncherOptions)
    """What each run asks a cluster for under ``ablate --launcher slurm`` (the ``launcher:`` block)."""


def _one_of(value: Any, kind: type | tuple[type, ...], what: str, example: str) -> Any:
    if not isinstance(value, kind):
        raise GPT2KitError(f"{what} must be {example}, got {value!r}")
    return value


def _dotted(mapping: Any, what: str) -> dict[str, Any]:
    mapping = {} if mapping is None else _one_of(mapping, dict, what, "a mapping of dotted keys to values")
    for key in mapping:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise GPT2KitError(f"{what}: {key!r} is not a dotted config key (e.g. model.arch.n_layer)")
    return dict(mapping)


def load_study(path: str | Path, out_dir: str | Path | None = None) -> Study:
    """Read and check a study file (one-line errors); ``out_dir`` overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise GPT2KitError(f"study file '{path}' does not exist (see recipes/ablations/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise GPT2KitError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    _one_of(raw, dict, f"{path}", "a mapping with base:, variants: and/or grid:")
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise GPT2KitError(f"{path}: unknown key '{key}': {hint}a study has {', '.join(KEYS)}")
    if "base" not in raw:
        raise GPT2KitError(
            f"{path}: no base recipe: add `base: ../pretrain/shakespeare-char.yaml` (relative to it)"
        )
    base = (path.parent / _one_of(raw["base"], str, "base", "a recipe path")).resolve()
    if not base.is_file():
        raise GPT2KitError(f"{path}: base recipe '{raw['base']}' does not exist (looked for {base})")
    name = str(raw.get("name") or path.stem)
    seeds = raw.get("seeds", [1337])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise GPT2KitError(f"{path}: seeds must be a non-empty list of integers, got {raw.get('seeds')!r}")
    if len(set(seeds)) != len(seeds):
        raise GPT2KitError(f"{path}: seeds {seeds} repeat a seed: each run needs its own")
    variants = _variants(raw, path)
    names = [v.name for v in variants]
    baseline = _variant_name(raw.get("baseline") or names[0], names, "baseline", path)
    reference = raw.get("reference")
    if reference is not None:
        reference = _variant_name(reference, names, "reference", path)
        if reference == baseline:
            raise GPT2KitError(
                f"{path}: reference '{reference}' is the baseline: name another variant, or leave it out"
            )
    plugins = raw.get("plugins") or []
    plugins = [plugins] if isinstance(plugins, str) else plugins
    _one_of(plugins, list, "plugins", "a list of module names")
    metric = raw.get("metric")
    if metric is not None and not (metric in ("val_loss", "val_bpb") or str(metric).startswith("eval/")):
        raise GPT2KitError(
            f"{path}: metric must be val_loss, val_bpb or a logged eval/<task>/<metric> (LMEvalCallback, "
            f"e.g. eval/shakespeare_mc/acc), or left out; got {metric!r}"
        )
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not math.isfinite(target)):  # fmt: skip
        raise GPT2KitError(
            f"{path}: target must be a number, a value of the metric to reach (e.g. target: 1.898), "
            f"or left out; got {target!r}"
        )
    out = Path(out_dir if out_dir is not None else raw.get("out_dir") or Path("runs") / "ablations" / name)
    return Study(
        name=name,
        path=path,
        base=base,
        out_dir=out,
        seeds=seeds,
        overrides=_dotted(raw.get("overrides"), "overrides"),
        variants=variants,
        baseline=baseline,
        plugins=[str(p) for p in plugins],
        metric=metric,
        target=None if target is None else float(target),
        reference=reference,
        launcher=parse_launcher(raw.get("launcher"), f"{path}: launcher"),
    )


def _variant_name(name: Any, names: list[str], key: str, path: Path) -> str:
    """``name`` if it is one of the study's variants, else a one-line error with the closest one."""
    name = str(name)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise GPT2KitError(f"{path}: {key} '{name}' is not a variant: {hint}variants: {', '.join(names)}")
    return name


def _variants(raw: dict[str, Any], path: Path) -> list[Variant]:
    """Named variants × grid points (either may be absent, not both)."""
    named = raw.get("variants")
    grid = raw.get("grid")
    if named is None and grid is None:
        raise GPT2KitError(
            f"{path}: nothing to compare: add variants: (named sets of overrides) and/or grid:"
        )
    variants = [Variant("base", {})]
    if named is not None:
        if not isinstance(named, dict) or not named:
            raise GPT2KitError(
                f"{path}: variants must be a non-empty mapping of names to overrides, e.g. "
                "{learned: {}, rope: {model.position: RotaryPosition}}"
            )
        variants = [Variant(str(n), _dotted(o, f"variant '{n}'")) for n, o in named.items()]
    if grid is None:
        return variants
    grid = _one_of(grid, dict, "grid", "a mapping of dotted keys to lists of values")
    if not grid:
        raise GPT2KitError(
            f"{path}: the grid is empty: give it keys with lists of values, e.g. model.optim.lr: [1e-3, 3e-3]"
        )
    _dotted(grid, "grid")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise GPT2KitError(
                f"{path}: grid key {key} needs a list of values, got {values!r}: write [{values}]"
            )
        if not values:
            raise GPT2KitError(f"{path}: grid key {key} has an empty list: the grid would have no runs")
    labels = _short_keys(list(grid))
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    out = []
    for v in variants:
        for point in points:
            tag = " ".join(f"{labels[k]}={value_label(x)}" for k, x in point.items())
            name = tag if named is None else f"{v.name} {tag}"
            out.append(Variant(name, {**v.overrides, **point}, tuple(point)))
    return out


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that tells it apart from the others (``lr`` for model.optim.lr)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(k == suffix or k.endswith("." + suffix) for k in keys) == 1:
                break
        out[key] = suffix
    return out


def value_label(value: Any) -> str:
    """A short label for an override value: ``RotaryPosition``, ``SlidingWindowAttention(window=16)``, ``0.003``."""
    return describe(value)


def _arg(key: str, value: Any) -> str:
    """A dotted override as a command-line argument (jsonargparse reads the value as YAML)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"--{key}={text}"


def override_args(overrides: dict[str, Any]) -> list[str]:
    return [_arg(k, v) for k, v in overrides.items()]


def _dir_name(name: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", name).strip("_") or "variant"


# --- resolving configs through the fit parser -----------------------------------------------------------------


def _fit_parser() -> Any:
    """The CLI's parser (``fit`` and the other subcommands), built once, that raises instead of exiting."""
    from gpt2kit.training.cli import recipe_parser

    return recipe_parser()


class Resolver:
    """Parses ``fit`` command lines with the CLI's own parser, without instantiating anything."""

    def __init__(self, base: Path, overrides: dict[str, Any]) -> None:
        self.base, self.common = base, overrides
        self.parser = _fit_parser()
        try:
            self.base_config = self._dump(self._parse(["fit", "--config", str(base)]))
        except Exception as exc:
            raise GPT2KitError(f"base recipe {base} does not parse: {_one_line(exc)}") from None
        self.keys = sorted(set(_flat_keys(self.base_config)))
        if self.common:
            try:
                self.resolve({})
            except GPT2KitError as exc:
                raise GPT2KitError(f"overrides: {exc}") from None

    def _dump(self, namespace: Any) -> dict[str, Any]:
        try:  # parsed, so already checked
            text = self.parser.dump(namespace, skip_unset=False, skip_validation=True)
        except (TypeError, ValueError):  # jsonargparse < 4.49
            text = self.parser.dump(namespace, skip_none=False, skip_check=True)
        return yaml.safe_load(text)["fit"]

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The full ``fit`` config of base + study overrides + these, or a one-line GPT2KitError."""
        args = ["fit", "--config", str(self.base), *override_args({**self.common, **overrides})]
        try:
            namespace = self._parse(args)
        except Exception as exc:
            raise GPT2KitError(self._explain(_one_line(exc), {**self.common, **overrides})) from None
        return self._dump(namespace)

    def _parse(self, args: list[str]) -> Any:
        from gpt2kit.parsing import program_args

        with program_args():
            return self.parser.parse_args(args)

    def _explain(self, message: str, overrides: dict[str, Any]) -> str:
        """Name the override key behind an 'unrecognized arguments' error, with the closest real key."""
        option = re.search(
            r'Parser key "([\w.]+)".*Option \'(\w+)\' is not accepted.*class_path=\'([\w.]+)\'', message
        )
        if option:
            key, name, cls = option.groups()
            return (
                f"'{key}.{name}' is not a config key: {cls.rsplit('.', 1)[-1]} ({key}) has no option '{name}'; "
                f"select a class that has it first, e.g. in overrides: {{{key}: ...}}"
            )
        bad = re.search(r"unrecognized arguments: --([\w.]+)", message)
        if bad and bad.group(1) in overrides:
            key = bad.group(1)
            close = difflib.get_close_matches(key, self.keys, n=1, cutoff=0.6)
            hint = (
                f": did you mean '{close[0]}'?"
                if close
                else f" (see `python -m gpt2kit fit --config {self.base} --print_config`)"
            )
            return f"'{key}' is not a config key{hint}"
        return message


def _one_line(exc: BaseException) -> str:
    from gpt2kit.parsing import readable

    cause = user_error(exc)
    return str(cause) if cause is not None else readable(str(exc))


def _flat_keys(config: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config, also without the ``init_args`` level (as the CLI accepts them)."""
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        yield dotted
        if ".init_args." in f".{dotted}.":
            yield dotted.replace(".init_args", "")
        yield from _flat_keys(value, dotted + ".")


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _set(config: dict[str, Any], dotted: str, value: Any) -> bool:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config.get(part) if isinstance(config, dict) else None
        if not isinstance(config, dict):
            return False
    if not isinstance(config, dict) or last not in config:
        return False
    config[last] = value
    return True


def plan(study: Study) -> list[Run]:
    """Every run of the study with its resolved config (or the reason its variant does not parse)."""
    resolver = Resolver(study.base, study.overrides)
    runs: list[Run] = []
    used: set[str] = set()
    for variant in study.variants:
        folder = _dir_name(variant.name)
        while folder in used:  # two names that differ only in characters a folder name cannot hold
            folder += "_"
        used.add(folder)
        try:
            config, error = resolver.resolve(variant.overrides), None
        except GPT2KitError as exc:
            config, error = None, str(exc)
            bad = re.match(r"'([\w.]+)' is not a config key", error)
            if bad and bad.group(1) in variant.grid_keys:  # every grid point has it: nothing can run
                raise GPT2KitError(f"grid: {error}") from None
        for seed in study.seeds:
            run = Run(variant.name, seed, study.out_dir / folder / f"seed{seed}", error=error)
            if config is not None:
                run.identity = _seeded(config, seed)
                run.config = place(run.identity, run.dir)
            runs.append(run)
    return runs


def _seeded(config: dict[str, Any], seed: int) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy of plain data
    for key in SEED_KEYS:
        _set(config, key, seed)
    return config


def place(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The config with everything a run writes moved into ``run_dir``, logged by a CSVLogger there."""
    config = json.loads(json.dumps(config))
    root = str(run_dir.resolve())
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = root
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": root, "name": LOGS},
    }
    callbacks = trainer.get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, dict) else list(callbacks)
    checkpoints = str(run_dir.resolve() / CHECKPOINTS)
    resumable = False
    for cb in callbacks:
        args = cb.get("init_args") if isinstance(cb, dict) else None
        if isinstance(args, dict) and "dirpath" in args:
            args["dirpath"] = checkpoints
            resumable |= bool(args.get("save_last")) or cb["class_path"].endswith(".LastCheckpoint")
    if not resumable:  # last.ckpt is what an interrupted run resumes from
        steps = trainer.get("max_steps") or -1
        every = min(100, max(1, steps // 10)) if steps > 0 else 100
        callbacks.append(
            {
                "class_path": "gpt2kit.training.resume.LastCheckpoint",
                "init_args": {"dirpath": checkpoints, "every_n_train_steps": every},
            }
        )
    callbacks.append(
        {
            "class_path": "gpt2kit.ablate.RunRecord",
            "init_args": {"last_checkpoint": str(Path(checkpoints) / "last.ckpt")},
        }
    )
    trainer["callbacks"] = callbacks
    return config


def log_versions(run: Run) -> list[Path]:
    """The run's ``CSVLogger`` folders (``logs/version_N``), one per session, oldest first."""
    logs = run.dir / LOGS
    found = (
        [p for p in logs.glob("version_*") if p.is_dir() and p.name[8:].isdigit()] if logs.is_dir() else []
    )
    return sorted(found, key=lambda p: int(p.name[8:]))


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """A ``metrics.csv``'s rows that have a step, their values as floats (empty cells left out)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    return [r for r in rows if "step" in r]


def read_metrics(run: Run) -> list[dict[str, float]]:
    """The run's logged rows, in order, across its sessions: a resumed session replaces the rows of
    earlier ones from the step it resumed at."""
    rows: list[dict[str, float]] = []
    for version in log_versions(run):
        new = read_metrics_csv(version / "metrics.csv")
        if new:
            first = min(r["step"] for r in new)
            rows = [r for r in rows if r["step"] < first] + new
    return rows


def end_step(run: Run) -> int | None:
    """The optimizer step the run's last session ended at, as :class:`~gpt2kit.ablate.RunRecord` logged
    it (None when nothing was logged: no logger, or a crash before fitting)."""
    ends = [r["step"] for r in read_metrics(run) if "fit_time_s" in r]
    return int(max(ends)) if ends else None


def fit_args(run: Run, extra: Sequence[str] = ()) -> list[str]:
    """The ``python -m gpt2kit`` arguments that run (or resume) ``run``."""
    args = ["fit", "--config", str(run.config_path), *extra]
    if run.last_checkpoint.is_file():
        args += ["--ckpt_path", str(run.last_checkpoint)]
    return args
