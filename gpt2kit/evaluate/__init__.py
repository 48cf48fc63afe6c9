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

from gpt2kit.evaluate.adapter import GPT2KitLM, check_language_model, load_language_model
from gpt2kit.evaluate.callback import LMEvalCallback
from gpt2kit.evaluate.tasks import (
    OFFLINE_TASKS,
    download_command,
    load_tasks,
    metrics,
    offline_task_names,
    run_tasks,
    task_manager,
)

__all__ = [
    "OFFLINE_TASKS",
    "GPT2KitLM",
    "LMEvalCallback",
    "check_language_model",
    "download_command",
    "load_language_model",
    "load_tasks",
    "metrics",
    "offline_task_names",
    "run_tasks",
    "task_manager",
]
