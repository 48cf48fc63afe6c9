"""lm-eval tasks during training: :class:`LMEvalCallback`."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback

from gpt2kit.errors import GPT2KitError
from gpt2kit.evaluate.adapter import GPT2KitLM, _require_lm_eval
from gpt2kit.evaluate.tasks import load_tasks, metrics, run_tasks, task_manager

log = logging.getLogger(__name__)


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
