"""Lightning callbacks of gpt2kit: fine-tuning (added by ``GPTLitModule.configure_callbacks``) and
the JSONL writer of ``predict``."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune import load_weights, model_parts, parameter_table, set_trainable
from gpt2kit.tokenizers import Tokenizer

if TYPE_CHECKING:
    from gpt2kit.lit import GPTLitModule


class FineTuning(L.Callback):
    """Applies the module's ``init_from`` and ``finetune`` settings during a run.

    * before any stage (``setup``): load the ``init_from`` weights and tokenizer, once — a resumed run
      (``--ckpt_path``) then overwrites them with its own state, as Lightning restores after setup;
    * at the start of fit: set the trainable parameters for the current step and log the table of
      trainable vs frozen parameters per block;
    * before each step, for a scheduled policy (gradual unfreezing): set the trainable parameters for
      that step, logging each change.
    """

    def __init__(self) -> None:
        self._applied: set[str] = set()  # the trainable parameter names this callback last set

    def setup(self, trainer: L.Trainer, pl_module: GPTLitModule, stage: str) -> None:
        load_init_weights(pl_module, getattr(trainer.datamodule, "tokenizer", None))

    def on_fit_start(self, trainer: L.Trainer, pl_module: GPTLitModule) -> None:
        policy = pl_module.finetune
        if policy is None:
            return
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
        if policy is None or not policy.scheduled:
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


def load_init_weights(module: GPTLitModule, tokenizer: Tokenizer | None = None) -> None:
    """Load ``module.init_from`` into the model (once); adopt its tokenizer if the module has none yet.

    ``tokenizer`` is the one the model is to use (the data's). When it is the checkpoint's tokenizer with
    special tokens added after its vocabulary (a chat template's), the model's vocabulary is larger
    than the checkpoint's: the checkpoint's rows are loaded, the new tokens keep their fresh
    initialisation, and the module adopts the extended tokenizer.
    """
    if module.init_from is None or getattr(module, "_init_from_loaded", None) == module.init_from:
        return
    policy = module.finetune
    adapters = policy.added_parameters(module.model) if policy is not None else set()
    grow = tokenizer is not None and tokenizer.vocab_size == module.model.config.vocab_size
    saved = load_weights(module.model, module.init_from, adapters, grow_vocab=grow)
    if grow and saved is not None and tokenizer.vocab_size > saved.vocab_size:
        if added_special_tokens(tokenizer, saved) is None:
            raise GPT2KitError(
                f"the data's tokenizer ({tokenizer!r}) is not the tokenizer of init_from {module.init_from} "
                f"({saved!r}) with special tokens added: prepare the data with the checkpoint's tokenizer "
                "(CheckpointTokenizer with the same path)"
            )
        saved = tokenizer  # the checkpoint's vocabulary and the new tokens: the model's vocabulary now
        module._grown_vocab = True
    if module.tokenizer is None:
        module.tokenizer = saved
    module._init_from_loaded = module.init_from


def added_special_tokens(new: Tokenizer, old: Tokenizer) -> list[str] | None:
    """The special tokens ``new`` adds to ``old`` (same ids for all of ``old``'s), or None if it is not
    ``old`` with special tokens appended."""
    added = [t for t in new.special_tokens if t not in old.special_tokens]
    extended = copy.deepcopy(old)
    try:
        extended.add_special_tokens(added)
    except GPT2KitError:
        return None
    return added if extended == new else None


def keep_checkpoint_parameters(module: GPTLitModule, checkpoint: dict[str, Any]) -> None:
    """Drop from a checkpoint being saved what the policy does not store (LoRA's save_adapters_only)."""
    keep = module.finetune.checkpoint_parameters(module.model) if module.finetune is not None else None
    if keep is None:
        return
    keep = {f"model.{name}" for name in keep}
    if getattr(module, "_grown_vocab", False):  # the new tokens' rows exist nowhere else: keep them
        vocab = module.model.config.vocab_size
        keep |= {k for k, v in checkpoint["state_dict"].items() if v.ndim and v.shape[0] == vocab}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint.setdefault("gpt2kit", {})["adapters_only"] = True


def complete_checkpoint(module: GPTLitModule, checkpoint: dict[str, Any]) -> None:
    """Before a checkpoint's state is loaded into the module: fill in what an adapters-only one lacks.

    The base weights come from ``init_from``. Either way the module's weights are then the
    checkpoint's, so a later ``setup`` does not load ``init_from`` over them.
    """
    if not checkpoint.get("gpt2kit", {}).get("adapters_only"):
        module._init_from_loaded = module.init_from
        return
    if module.init_from is None:
        raise GPT2KitError(
            "this checkpoint holds LoRA adapters only and names no base (model.init_from): "
            "set model.init_from to the checkpoint the adapters were trained on"
        )
    saved = checkpoint.get("gpt2kit", {}).get("tokenizer")
    load_init_weights(module, Tokenizer.from_dict(saved) if saved is not None else None)
    for key, value in module.state_dict().items():
        checkpoint["state_dict"].setdefault(key, value)


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
