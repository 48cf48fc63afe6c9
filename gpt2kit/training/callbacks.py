"""Lightning callbacks of gpt2kit: the final validation of every fit (added by
``GPTLitModule.configure_callbacks``), the step-counting progress bar (the CLI's default) and the JSONL
writer of ``predict``. Fine-tuning's callback is :class:`gpt2kit.finetune.callback.FineTuning`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar, RichProgressBar, TQDMProgressBar


class FinalValidation(L.Callback):
    """Every fit ends with a validation pass (``val_loss`` logged), whatever ``max_steps`` is.

    Lightning validates every ``val_check_interval`` steps; a run whose ``max_steps`` is not a multiple of
    it (``--trainer.max_steps 200`` with validation every 250) would end without any. On the last
    training step this asks the loop to stop (``trainer.should_stop``), which makes Lightning validate at
    that step, once, as it does for early stopping. A run whose last step validates anyway validates once;
    one with validation switched off (``limit_val_batches: 0``, no val data) does not.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop
        last_step = 0 < trainer.max_steps <= trainer.global_step
        last_epoch = loop.max_epochs is not None and 0 < loop.max_epochs <= trainer.current_epoch + 1
        if trainer.enable_validation and (
            last_step or (last_epoch and loop.epoch_loop.batch_progress.is_last_batch)
        ):
            trainer.should_stop = True  # the loop ends here anyway; stopping this way validates first


class _StepCounting(ProgressBar):
    """A step-based run (``max_steps``) counts optimizer steps of max_steps, across epochs."""

    @staticmethod
    def _step_based(trainer: L.Trainer) -> bool:
        return trainer.max_steps > 0 and trainer.max_epochs in (None, -1)

    @property
    def total_train_batches(self) -> int | float:
        if self._step_based(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches


class StepRichProgressBar(_StepCounting, RichProgressBar):
    """Lightning's Rich progress bar; a step-based run shows ``Steps  N/max_steps`` (not ``Epoch 1/-2``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._step_based(self.trainer):
            return super()._get_train_description(current_epoch)
        return f"{'Steps':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._step_based(trainer) and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)


class StepTQDMProgressBar(_StepCounting, TQDMProgressBar):
    """Lightning's tqdm progress bar; a step-based run shows optimizer steps of max_steps."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self._step_based(trainer):
            self.train_progress_bar.set_description("Steps")
            self.train_progress_bar.n = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


def step_progress_bar() -> ProgressBar:
    """The progress bar Lightning would choose (Rich if installed, else tqdm), counting steps."""
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    return StepRichProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()


class JSONLWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns (a list of dicts per batch) as JSON Lines, batch by batch.

    Lines are flushed after every batch, so an interrupted run keeps what it finished. With several
    devices, each process writes its own file (``NAME.rank1.jsonl`` ...) next to the first.
    """

    def __init__(self, output: str = "predictions.jsonl") -> None:
        """
        Args:
            output: the JSON Lines file to (over)write.
        """
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self._file: Any = None

    def _path(self, trainer: L.Trainer) -> Path:
        if trainer.world_size == 1 or trainer.global_rank == 0:
            return self.output
        return self.output.with_name(f"{self.output.stem}.rank{trainer.global_rank}{self.output.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for row in prediction:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.on_predict_end(trainer, pl_module)
