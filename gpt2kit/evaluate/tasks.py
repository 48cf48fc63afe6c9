"""Tasks: lm-eval's (datasets from the cache) and gpt2kit's offline ones, found, checked and run."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2kit.errors import GPT2KitError

if TYPE_CHECKING:
    from gpt2kit.evaluate.adapter import GPT2KitLM

log = logging.getLogger(__name__)


OFFLINE_TASKS = Path(__file__).resolve().parents[2] / "recipes" / "eval"
"""gpt2kit's offline tasks (a source checkout's ``recipes/eval``), always on the include path if present."""

# -- tasks ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _manager(paths: tuple[str, ...], defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


@functools.lru_cache(maxsize=1)
def _default_task_index() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """lm-eval's task, group and tag names, and the folders whose YAMLs define each single task, read from
    its YAML files (seconds, where indexing them all with a TaskManager takes most of a minute on a small
    machine)."""
    import lm_eval

    key = r"^[\"']?(?:{})[\"']?:[ \t]*"  # task: NAME, and "task": "NAME" in generated YAMLs (mmlu)
    single = re.compile(key.format("task|group|tag") + r"[\"']?([\w.\-]+)", re.M)
    listed = re.compile(key.format("task|tag") + r"\n((?:[ \t]+-[ \t]*[\"']?[\w.\-]+[\"']?[ \t]*\n)+)", re.M)
    task = re.compile(key.format("task") + r"[\"']?([\w.\-]+)", re.M)
    names: set[str] = set()
    folders: dict[str, set[str]] = {}
    for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        text = path.read_text(encoding="utf-8", errors="ignore")
        names.update(single.findall(text))
        for block in listed.findall(text):
            names.update(re.findall(r"-[ \t]*[\"']?([\w.\-]+)", block))
        for name in task.findall(text):
            folders.setdefault(name, set()).add(str(path.parent))
    return frozenset(names), {name: frozenset(dirs) for name, dirs in folders.items()}


def _default_task_names() -> frozenset[str]:
    return _default_task_index()[0]


def task_manager(names: Sequence[str], include_path: Sequence[str] = ()) -> Any:
    """lm-eval's task index for ``names``, with gpt2kit's offline tasks and ``include_path`` folders.

    Only local folders are indexed when they hold every task asked for (instant); a task of lm-eval's
    own (hellaswag, arc_easy, ...) adds only the folders that define it; a group or tag of lm-eval's
    indexes all of lm-eval's tasks (30-40 s on a small CPU). An unknown name is refused in one line with
    the close matches.
    """
    paths = [str(p) for p in include_path]
    if OFFLINE_TASKS.is_dir():
        paths.append(str(OFFLINE_TASKS))
    local = _manager(tuple(paths), False)
    missing = [n for n in names if n not in set(local.all_tasks)]
    if not missing:
        return local
    known, folders = _default_task_index()
    known = set(local.all_tasks) | known
    for name in missing:
        if name not in known:
            _unknown(name, known, local)
    if all(name in folders for name in missing):  # single tasks: index only the folders defining them
        extra = sorted({d for name in missing for d in folders[name]})
        manager = _manager(tuple(paths + extra), False)
        if all(name in set(manager.all_tasks) for name in missing):
            return manager
    manager = _manager(tuple(paths), True)
    for name in missing:
        if name not in set(manager.all_tasks):
            _unknown(name, set(manager.all_tasks), local)
    return manager


def _unknown(name: str, known: set[str], local: Any) -> None:
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "`lm-eval ls tasks` lists lm-eval's"
    raise GPT2KitError(
        f"unknown task '{name}': {hint} (gpt2kit's offline tasks: "
        f"{', '.join(offline_task_names(local)) or 'none found'}; add a folder of task YAMLs with --include_path)"
    )


def offline_task_names(manager: Any) -> list[str]:
    """The tasks that ship in recipes/eval."""
    index = getattr(manager, "task_index", {}) or {}
    return sorted(
        name for name, info in index.items() if str(OFFLINE_TASKS) in str(_get(info, "yaml_path") or "")
    )


def _get(info: Any, key: str) -> Any:
    return info.get(key) if isinstance(info, dict) else getattr(info, key, None)


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def run_tasks(
    lm: GPT2KitLM,
    tasks: Sequence[str],
    limit: float | None = None,
    num_fewshot: int | None = None,
    include_path: Sequence[str] = (),
    log_samples: bool = False,
    seed: int = 0,
    prepared: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``tasks`` with ``lm``; user mistakes become one-line errors.

    ``prepared``: the same tasks built once by :func:`load_tasks`, evaluated as they are (their datasets
    are not read again: no trip to the Hub, no preprocessing) — what the callback does at each validation.
    """
    from lm_eval.evaluator import simple_evaluate

    if not tasks:
        raise GPT2KitError("no tasks given: --tasks NAME[,NAME] (e.g. shakespeare_mc, hellaswag)")
    if limit is not None and limit <= 0:
        raise GPT2KitError(
            f"limit={limit} evaluates nothing: give a number of examples per task (>= 1), a fraction "
            "in (0, 1), or leave it out for all"
        )
    manager = task_manager(tasks, include_path)
    try:
        return simple_evaluate(
            model=lm,
            tasks=list(prepared) if prepared is not None else list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=log_samples,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            verbosity="ERROR",
        )
    except GPT2KitError:
        raise
    except Exception as exc:
        _raise_if_dataset_missing(exc, tasks, manager)
        raise


def load_tasks(tasks: Sequence[str], include_path: Sequence[str] = ()) -> list[Any]:
    """Build ``tasks`` with their datasets (from the datasets cache, or downloaded when there is a network),
    so that a missing dataset is refused in one line before a model is loaded or a step is trained.

    Returns what :func:`run_tasks` takes as ``prepared``: lm-eval's task (or group) object per name, or
    the names themselves where a name is a tag (or lm-eval is too old to build tasks apart).
    """
    import datasets

    manager = task_manager(tasks, include_path)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a check: the evaluation that follows shows its own progress
    try:
        if hasattr(manager, "load"):  # TaskManager.load in newer lm-eval
            loaded = manager.load(list(tasks))
            built = [loaded["groups"][n] if n in loaded["groups"] else loaded["tasks"].get(n) for n in tasks]
            return built if all(b is not None for b in built) else list(tasks)
        from lm_eval.tasks import get_task_dict  # pragma: no cover - older lm-eval

        get_task_dict(list(tasks), manager)  # pragma: no cover
        return list(tasks)  # pragma: no cover
    except GPT2KitError:
        raise
    except Exception as exc:
        _raise_if_dataset_missing(exc, tasks, manager)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()


_NETWORK_WORDS = ("Offline", "offline", "Connection", "ConnectError", "resolve", "Hub")
_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "")


def _raise_if_dataset_missing(exc: Exception, tasks: Sequence[str], manager: Any) -> None:
    """A dataset that is neither in the datasets cache nor reachable: one line with what to download and how."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    if type(exc).__name__ == "DatasetNotFoundError":  # the Hub answered: no such dataset (or not for you)
        raise GPT2KitError(
            f"task(s) {', '.join(tasks)}: {text} (check the task's dataset_path; a gated dataset needs "
            "`hf auth login`)"
        ) from None
    if not any(word in text for word in _NETWORK_WORDS):
        return
    cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", "~/.cache/huggingface"), "datasets"
    )
    state = "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
    datasets_, command = download_command(tasks, manager)
    raise GPT2KitError(
        f"task(s) {', '.join(tasks)} need {datasets_} from the Hugging Face Hub, not in the datasets cache "
        f"({cache}) and {state}: download it once with a network (HF_DATASETS_OFFLINE unset), into the "
        f"same cache or one HF_DATASETS_CACHE points at: {command} (or use an offline task: "
        f"{', '.join(offline_task_names(manager)) or 'recipes/eval'})"
    ) from None


def download_command(tasks: Sequence[str], manager: Any) -> tuple[str, str]:
    """What ``tasks`` read from the Hub, and a command that puts it in the datasets cache as lm-eval loads it.

    ``("the dataset Rowan/hellaswag", "python -c \"import datasets; datasets.load_dataset('Rowan/hellaswag')\"")``
    for tasks whose config names a plain hub dataset; lm-eval's own loading of the tasks otherwise.
    """
    index = getattr(manager, "task_index", {}) or {}
    found: list[tuple[str, str | None]] = []
    for name in tasks:
        cfg = _get(index.get(name), "cfg") or {}
        path = cfg.get("dataset_path") if isinstance(cfg, dict) else None
        if (
            not isinstance(path, str)
            or path in _LOCAL_BUILDERS
            or os.path.exists(path)
            or cfg.get("custom_dataset")
            or cfg.get("dataset_kwargs")
        ):
            found = []
            break
        found.append((path, cfg.get("dataset_name")))
    if found:
        unique = list(dict.fromkeys(found))
        calls = "; ".join(
            f"datasets.load_dataset({path!r}{f', {sub!r}' if sub else ''})" for path, sub in unique
        )
        what = ", ".join(path + (f" ({sub})" if sub else "") for path, sub in unique)
        return f"the dataset{'s' if len(unique) > 1 else ''} {what}", f'python -c "import datasets; {calls}"'
    import lm_eval

    builtin = str(Path(lm_eval.__file__).parent / "tasks")
    folders = sorted(
        {
            str(Path(path).parent)
            for name in tasks
            if (path := _get(index.get(name), "yaml_path")) and not str(path).startswith(builtin)
        }
    )
    args = f"include_path={folders!r}" if folders else ""
    load = f"TaskManager({args}).load({list(tasks)!r})"
    return "their datasets", f'python -c "from lm_eval.tasks import TaskManager; {load}"'


def metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` of an lm-eval result (``acc,none`` → ``acc``; stderr left out)."""
    flat = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if metric in ("alias", "sample_len", "samples") or metric.endswith("_stderr"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(value)
    return flat
