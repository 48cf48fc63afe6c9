"""Downstream evaluation with EleutherAI's lm-evaluation-harness, on gpt2kit's own model.

    python -m gpt2kit evaluate --ckpt runs/shakespeare-char/checkpoints/last.ckpt --tasks shakespeare_mc
    python -m gpt2kit evaluate --ckpt hf:gpt2 --tasks hellaswag,lambada_openai --limit 100 --output r.json
    gpt2kit-lm-eval --model gpt2kit --model_args ckpt=PATH --tasks arc_easy     # lm-eval's own CLI

:class:`GPT2KitLM` is an lm-eval language model (registered with lm-eval as ``gpt2kit``) that answers
lm-eval's three request kinds with a gpt2kit model and its tokenizer, whatever they are (char, trained
BPE, GPT-2's, plugin components):

- ``loglikelihood``: lm-eval's context/continuation encoding (:class:`lm_eval.api.model.TemplateLM`),
  then batches sorted longest first, right-padded (a causal model's real positions never see padding),
  the continuation's log-probabilities summed, and whether greedy decoding would have produced it;
- ``loglikelihood_rolling``: the text cut into windows by lm-eval's own rules
  (``get_rolling_token_windows`` + ``make_disjoint_window``), each window scored as above;
- ``generate_until``: greedy (or sampled, if the task asks) decoding with gpt2kit's generation engine,
  ending at the task's stop strings, the end-of-text token or ``max_gen_toks``.

The tests check it against lm-eval's ``hf`` backend on the same weights exported with ``export-hf``:
the same log-likelihood per request (within 1e-4) and the same task metrics.

Tasks are lm-eval's (hellaswag, arc_easy, ...: their datasets read from the datasets cache, downloaded
by ``datasets`` the first time) and gpt2kit's offline ones in
``recipes/eval/`` (built from the corpora gpt2kit already has), found with ``--include_path``.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback

from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

try:  # lm-eval is an optional dependency (pip install 'gpt2kit[eval]')
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the adapter is defined only with lm-eval installed
    TemplateLM = object  # type: ignore[assignment,misc]

    def register_model(*names: str):  # type: ignore[no-redef]
        return lambda cls: cls


OFFLINE_TASKS = Path(__file__).resolve().parents[1] / "recipes" / "eval"
"""gpt2kit's offline tasks (a source checkout's ``recipes/eval``), always on the include path if present."""


def _require_lm_eval() -> None:
    if TemplateLM is object:
        raise GPT2KitError("evaluation needs lm-evaluation-harness: pip install 'gpt2kit[eval]' (lm-eval)")


@register_model("gpt2kit")
class GPT2KitLM(TemplateLM):
    """A gpt2kit model as an lm-evaluation-harness language model."""

    def __init__(
        self,
        ckpt: str | None = None,
        batch_size: int | str = 8,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_gen_toks: int = 256,
        max_batch_size: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """
        Args:
            ckpt: a gpt2kit checkpoint (.ckpt), or a hub name (hf:gpt2).
            batch_size: requests per forward pass (lm-eval's "auto" means 8).
            device: torch device (cpu, cuda, cuda:1, mps).
            dtype: weight dtype to evaluate in.
            max_gen_toks: generate_until's token budget when a task names none.
            max_batch_size: accepted for lm-eval's command line; unused.
            model: a :class:`gpt2kit.model.GPT` to evaluate instead of a checkpoint (with ``tokenizer``).
            tokenizer: the model's gpt2kit tokenizer.
        """
        _require_lm_eval()
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s but CUDA is not available here: evaluating on the CPU", device)
            device = "cpu"  # as lm-eval's hf backend does (its command line asks for cuda by default)
        if model is None:
            if ckpt is None:
                raise GPT2KitError("give the checkpoint to evaluate: ckpt=PATH (or hf:NAME)")
            model, tokenizer = load_language_model(ckpt, device, dtype)
        if tokenizer is None:
            raise GPT2KitError(
                "the model has no tokenizer to read the tasks' text with: evaluate a checkpoint saved by a "
                "gpt2kit run (or import-hf one with --tokenizer)"
            )
        check_language_model(model, str(ckpt or "the model"))
        self.model = model
        self.gpt2kit_tokenizer = tokenizer
        self.batch_size_per_gpu = 8 if str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise GPT2KitError(f"batch_size={batch_size} must be >= 1")
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device

    # -- what lm-eval asks of a model ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        tok = self.gpt2kit_tokenizer
        if tok.eot_id is not None:
            return tok.eot_id
        return self.tok_encode("\n")[0]  # as generate's empty prompt: a tokenizer without <|endoftext|>

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return type(self.gpt2kit_tokenizer).__name__

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.gpt2kit_tokenizer.encode(string)  # special-token strings are text, as in a corpus

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.gpt2kit_tokenizer.decode(list(tokens))

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), greedy?) per (key, context ids, continuation ids)."""
        too_long = next((len(c) for _, _, c in requests if len(c) > self.max_length), None)
        if too_long is not None:
            raise GPT2KitError(
                f"a continuation of {too_long} tokens does not fit the model's context of {self.max_length} "
                "tokens: evaluate a model with a longer block_size, or a task with shorter answers"
            )
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size_per_gpu):
            batch = order[start : start + self.batch_size_per_gpu]
            rows = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in batch]
            width = max(len(r) for r in rows)  # the longest first: the first row sets the width
            idx = torch.zeros(len(rows), width, dtype=torch.long)
            for b, row in enumerate(rows):
                idx[b, : len(row)] = torch.tensor(row)  # right padding: causal positions never see it
            logits = self.model(idx.to(self._device))  # (B, T, vocab)
            for b, i in enumerate(batch):
                cont, n = requests[i][2], len(rows[b])
                logp = logits[b, n - len(cont) : n].float().log_softmax(-1)  # (len(cont), vocab)
                target = torch.tensor(cont, device=logp.device)
                score = logp.gather(-1, target[:, None]).sum().item()
                results[i] = (score, bool((logp.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in lm-eval's windows of the model's context."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for n, request in enumerate(requests):
            (text,) = request.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[n] += score
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, up to the first stop string (greedy unless the task samples)."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from gpt2kit.config import SamplingConfig
        from gpt2kit.decoding import generate

        eos = self.tok_decode([self.eot_token_id]) if self.gpt2kit_tokenizer.eot_id is not None else None
        groups: dict[str, list[int]] = {}
        for n, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
        out: list[str] = [""] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise GPT2KitError(
                    f"the task asks for {max_gen_toks} new tokens, but the model's context is only "
                    f"{self.max_length}: lower the task's max_gen_toks"
                )
            cfg = SamplingConfig(
                max_new_tokens=max_gen_toks,
                temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                top_k=None,
                top_p=kwargs.get("top_p") if kwargs.get("do_sample") else None,
                stop=[s for s in until if s],
                seed=0,
            )
            room = self.max_length - max_gen_toks
            for start in range(0, len(members), self.batch_size_per_gpu):
                chunk = members[start : start + self.batch_size_per_gpu]
                prompts = [self.tok_encode(requests[n].args[0])[-room:] or [self.eot_token_id] for n in chunk]
                for n, done in zip(
                    chunk, generate(self.model, prompts, cfg, self.gpt2kit_tokenizer), strict=True
                ):
                    text = done.text or ""
                    for stop in until:  # as lm-eval's hf backend: cut at every stop string
                        if stop:
                            text = text.split(stop)[0]
                    out[n] = text
        return out


# -- loading and checking ---------------------------------------------------------------------------------


def load_language_model(ckpt: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """A checkpoint's model (eval mode, on ``device`` in ``dtype``) and its tokenizer; hf: names too."""
    from gpt2kit.decoding import load_for_inference
    from gpt2kit.interop.hub import resolve_checkpoint

    loaded = load_for_inference(resolve_checkpoint(ckpt), device, dtype)
    return loaded.model, loaded.require_tokenizer("to read the tasks' text with")


@torch.no_grad()
def check_language_model(model: Any, source: str) -> None:
    """Refuse a model whose head does not give next-token logits over its vocabulary."""
    param = next(model.parameters())
    probe = model(torch.zeros(1, 2, dtype=torch.long, device=param.device))
    vocab = model.config.vocab_size
    if probe.ndim != 3 or probe.shape[-1] != vocab:
        raise GPT2KitError(
            f"{source} is not a language model: its head ({type(model.head).__name__}) gives outputs of shape "
            f"{tuple(probe.shape)} for 2 tokens, not next-token logits over {vocab} tokens; evaluate a "
            "checkpoint with a language-model head (TiedLMHead, UntiedLMHead)"
        )


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


# -- during training --------------------------------------------------------------------------------------


class LMEvalCallback(Callback):
    """Runs lm-eval tasks on the model at validation and logs ``eval/<task>/<metric>`` to the logger.

    In a recipe (it is found by its class path; the training layer never imports it)::

        trainer:
          callbacks:
            - class_path: gpt2kit.evaluate.LMEvalCallback
              init_args: {tasks: [hellaswag], limit: 1000, every_n_steps: 250}

    The metrics land in the run's metrics.csv beside val_loss, so an ablation can rank by one
    (``metric: eval/hellaswag/acc_norm``). Tasks are evaluated on rank 0 and the numbers broadcast; their
    datasets are loaded at setup, so a missing one stops the run before its first step.
    """

    def __init__(
        self,
        tasks: list[str],
        limit: float | None = 100,
        every_n_validations: int = 1,
        every_n_steps: int | None = None,
        batch_size: int = 8,
        num_fewshot: int | None = None,
        include_path: list[str] | None = None,
    ) -> None:
        """
        Args:
            tasks: lm-eval task names (gpt2kit's offline ones, e.g. shakespeare_mc, or lm-eval's).
            limit: examples per task (>= 1, or a fraction in (0, 1)); None: all (slow for large tasks).
            every_n_validations: evaluate at every n-th validation (the last validation of a fit included).
            every_n_steps: instead, evaluate at the first validation at or after every n optimizer steps
                (and at a fit's last validation); validation itself runs every ``val_check_interval``.
            batch_size: requests per forward pass.
            num_fewshot: examples shown before each question (None: the task's default).
            include_path: more folders of task YAMLs.
        """
        _require_lm_eval()
        if limit is not None and limit <= 0:
            raise GPT2KitError(f"LMEvalCallback limit={limit} evaluates nothing: give >= 1, or None for all")
        if every_n_validations < 1:
            raise GPT2KitError(f"LMEvalCallback every_n_validations={every_n_validations} must be >= 1")
        if every_n_steps is not None and every_n_steps < 1:
            raise GPT2KitError(f"LMEvalCallback every_n_steps={every_n_steps} must be >= 1 (or null)")
        self.tasks = list(tasks)
        self.limit = limit
        self.every_n_validations = every_n_validations
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.num_fewshot = num_fewshot
        self.include_path = list(include_path or [])
        self._validations = 0
        self._next_step = every_n_steps or 0
        self._prepared: list[Any] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """An unknown task or a dataset that is neither cached nor reachable fails now, before any step."""
        task_manager(self.tasks, self.include_path)
        problem = None
        if trainer.is_global_zero:  # the rank that evaluates loads the datasets, once for the whole run
            try:
                self._prepared = load_tasks(self.tasks, self.include_path)
            except GPT2KitError as exc:
                problem = str(exc)
        problem = trainer.strategy.broadcast(problem, src=0)  # every rank stops, none waits for rank 0
        if problem is not None:
            raise GPT2KitError(problem)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if not self._due(trainer):
            return
        values: dict[str, float] = {}
        if trainer.is_global_zero:
            lm = GPT2KitLM(model=pl_module.model, tokenizer=pl_module.tokenizer, batch_size=self.batch_size)
            # in the run's precision (bf16-mixed: autocast), as validation computes val_loss
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                results = run_tasks(
                    lm, self.tasks, self.limit, self.num_fewshot, self.include_path, prepared=self._prepared
                )
            values = {f"eval/{name}": value for name, value in metrics(results).items()}
        values = trainer.strategy.broadcast(values, src=0)
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def _due(self, trainer: Any) -> bool:
        """Whether this validation evaluates: every n-th one (or the first past every n steps), a fit's
        last one (so a study ranks by the final model's score), and every validation outside a fit."""
        if trainer.state.fn != "fit":  # TrainerFn is a str enum
            return True
        last = bool(trainer.should_stop) or 0 < trainer.max_steps <= trainer.global_step
        if self.every_n_steps is None:
            return last or (self._validations - 1) % self.every_n_validations == 0
        if last or trainer.global_step >= self._next_step:
            self._next_step = (trainer.global_step // self.every_n_steps + 1) * self.every_n_steps
            return True
        return False


# -- the command ------------------------------------------------------------------------------------------


def evaluate_command(
    ckpt: str,
    tasks: str,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    include_path: str | None = None,
    output: str | None = None,
    seed: int = 0,
) -> None:
    """Evaluate a checkpoint on lm-evaluation-harness tasks and print lm-eval's table.

    Args:
        ckpt: a gpt2kit checkpoint (.ckpt), or a hub name (hf:gpt2, hf:ORG/NAME@REVISION).
        tasks: comma-separated task names: lm-eval's (hellaswag, lambada_openai, arc_easy, wikitext, ...;
            their datasets read from the datasets cache, downloaded the first time) or gpt2kit's offline
            ones (shakespeare_mc, zh_poetry_mc, shakespeare_ppl).
        limit: examples per task (a number >= 1, or a fraction in (0, 1)); None: all.
        num_fewshot: examples shown before each question (None: the task's default).
        batch_size: requests per forward pass.
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        dtype: weight dtype.
        include_path: more folders of task YAMLs, separated by ":".
        output: write lm-eval's results (and the flat metrics) to this JSON file.
        seed: seed of lm-eval's few-shot sampling and of any sampled generation.
    """
    _require_lm_eval()
    from lm_eval.utils import make_table

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    paths = [p for p in (include_path or "").split(os.pathsep) if p]
    if limit is not None and limit <= 0:
        raise GPT2KitError(f"--limit {limit} evaluates nothing: give >= 1 examples per task, or leave it out")
    prepared = load_tasks(names, paths)  # unknown names, missing datasets: refused before a model is loaded
    lm = GPT2KitLM(ckpt=ckpt, batch_size=batch_size, device=device, dtype=dtype)
    results = run_tasks(lm, names, limit, num_fewshot, paths, seed=seed, prepared=prepared)
    sys.stdout.write(make_table(results) + "\n")  # the command's output: lm-eval's table
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "ckpt": ckpt,
            "metrics": metrics(results),
            "results": results.get("results", {}),
            "n-samples": results.get("n-samples"),
        }
        Path(output).write_text(json.dumps(record, indent=2, default=str) + "\n")
        log.info("wrote %s", output)


def lm_eval_main() -> None:
    """lm-eval's own command line with the ``gpt2kit`` model registered (``gpt2kit-lm-eval``)."""
    _require_lm_eval()
    import sys

    from lm_eval.__main__ import cli_evaluate

    if OFFLINE_TASKS.is_dir() and not any(a.startswith("--include_path") for a in sys.argv):
        sys.argv += ["--include_path", str(OFFLINE_TASKS)]  # gpt2kit's offline tasks by name
    cli_evaluate()
