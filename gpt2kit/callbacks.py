"""Lightning callbacks of gpt2kit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


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
