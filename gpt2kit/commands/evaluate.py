"""``python -m gpt2kit evaluate`` and ``gpt2kit-lm-eval``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from gpt2kit.errors import GPT2KitError
from gpt2kit.evaluate.adapter import GPT2KitLM, _require_lm_eval
from gpt2kit.evaluate.tasks import OFFLINE_TASKS, load_tasks, metrics, run_tasks

log = logging.getLogger(__name__)

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
    from lm_eval.__main__ import cli_evaluate

    if OFFLINE_TASKS.is_dir() and not any(a.startswith("--include_path") for a in sys.argv):
        sys.argv += ["--include_path", str(OFFLINE_TASKS)]  # gpt2kit's offline tasks by name
    cli_evaluate()
