"""The Lightning side of fine-tuning: a freeze policy applied during a run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.policies import model_parts, parameter_table, set_trainable

if TYPE_CHECKING:
    from gpt2kit.training.lit import GPTLitModule


class FineTuning(L.Callback):
    """Applies the module's ``finetune`` policy during fit (added by ``GPTLitModule.configure_callbacks``).

    * at the start of fit: set the trainable parameters for the current step and log the table of
      trainable vs frozen parameters per block;
    * before each step, for a scheduled policy (gradual unfreezing): set the trainable parameters for
      that step, logging each change.

    The ``init_from`` weights are the module's own business (:meth:`GPTLitModule.setup`). The callback
    changes only ``requires_grad`` of the model's parameters, through :func:`set_trainable`.
    """

    def __init__(self) -> None:
        self._applied: set[str] = set()  # the trainable parameter names this callback last set

    def on_fit_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        policy = pl_module.finetune
        if policy.scheduled and trainer.world_size > 1:
            raise GPT2KitError(
                f"{policy!r} changes which parameters train during the run, which distributed training "
                f"(world size {trainer.world_size}) does not follow: train on one device, or use a policy "
                "whose trainable set is fixed (LastNBlocks, LayerwiseLRDecay, ...)"
            )
        self._applied = policy.trainable_at(pl_module.model, trainer.global_step)
        set_trainable(pl_module.model, self._applied)
        rank_zero_info(
            f"fine-tuning with {policy!r} from step {trainer.global_step}:\n"
            + parameter_table(pl_module.model, policy)
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: GPTLitModule, batch: Any, batch_idx: int
    ) -> None:
        policy = pl_module.finetune
        if not policy.scheduled:
            return
        model, step = pl_module.model, trainer.global_step
        wanted = policy.trainable_at(model, step)
        if wanted != self._applied:  # what on_fit_start or the last change set: no scan of the model
            set_trainable(model, wanted)
            new, self._applied = wanted - self._applied, wanted
            joined = [part for part, names in model_parts(model) if names and set(names) <= new]
            rank_zero_info(
                f"step {step}: {type(policy).__name__} unfreezes {', '.join(joined) or 'parameters'}"
            )
