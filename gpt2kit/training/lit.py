"""GPTLitModule: the GPT model inside Lightning — loss, metrics, optimizer groups, LR schedule.

Its constructor arguments are the recipe's ``model:`` section; LightningCLI type-checks them and
stores them (with full class paths) in every checkpoint, together with the tokenizer, so that a
checkpoint alone rebuilds the model (see :mod:`gpt2kit.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from gpt2kit.ckptfile import adapters_only, stored_tokenizer
from gpt2kit.config import GPTConfig
from gpt2kit.data.datamodule import IGNORE_INDEX
from gpt2kit.decoding import encode_prompt, generate
from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune import FreezePolicy, FullFineTune, kept_state, load_pretrained
from gpt2kit.finetune.callback import FineTuning
from gpt2kit.model import GPT, GPT2, AttentionFactory, HeadFactory, MLPFactory, NormFactory, PositionFactory
from gpt2kit.spec import describe, spec_of
from gpt2kit.tokenizers import Tokenizer
from gpt2kit.training import perf, resume
from gpt2kit.training.callbacks import FinalValidation
from gpt2kit.training.optim import (
    GPT2AdamW,
    OptimizerFactory,
    Schedule,
    WarmupCosine,
    build_optimizer,
    parameter_groups,
)

if TYPE_CHECKING:
    from gpt2kit.data.prompts import PromptBatch

DEFAULT_SCHEDULE = WarmupCosine()
"""The default schedule: 100 warmup steps, cosine to 0.1 × the peak LR at max_steps (GPT-2)."""


@dataclass
class OptimConfig:
    """The former ``model.optim`` (AdamW + warmup + cosine), kept so older recipes and checkpoints load.

    New recipes set ``model.optimizer`` and ``model.schedule`` (see :mod:`gpt2kit.training.optim`); this one is
    translated into them: ``GPT2AdamW(lr, betas, eps, weight_decay, fused)`` and
    ``WarmupCosine(warmup_steps, min_lr / lr, decay_steps)``.
    """

    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay (and after it)."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to weight matrices only (not biases, norms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam's beta1 and beta2."""
    eps: float = 1e-8
    """Adam's epsilon."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from 0."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr; None: the trainer's max_steps."""
    fused: bool | None = None
    """Fused AdamW kernel; None: on when training on CUDA."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise GPT2KitError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise GPT2KitError(f"warmup_steps={self.warmup_steps} must be >= 0")

    def optimizer(self) -> OptimizerFactory:
        return functools.partial(
            GPT2AdamW,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
            fused=self.fused,
        )

    def schedule(self) -> Schedule:
        return WarmupCosine(self.warmup_steps, self.min_lr / self.lr, self.decay_steps)


def lr_factor(step: int, warmup: int, decay: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at an optimizer step: linear warmup, then cosine down to min_ratio."""
    return WarmupCosine(warmup, min_ratio).factor(step, decay)


def component_spec(value: Any) -> Any:
    """A recipe-style description of a constructor argument: ``{"class_path": ..., "init_args": ...}``."""
    return spec_of(value)


class GPTLitModule(L.LightningModule):
    """Trains a :class:`~gpt2kit.model.GPT` as a language model (next-token cross-entropy)."""

    def __init__(
        self,
        arch: GPTConfig = GPTConfig(),
        attention: AttentionFactory = GPT2.attention,
        position: PositionFactory = GPT2.position,
        norm: NormFactory = GPT2.norm,
        mlp: MLPFactory = GPT2.mlp,
        head: HeadFactory = GPT2.head,
        optimizer: OptimizerFactory = GPT2AdamW,
        schedule: Schedule = DEFAULT_SCHEDULE,
        optim: OptimConfig | None = None,
        finetune: FreezePolicy | None = None,
        init_from: str | None = None,
        compile: bool = False,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        peak_flops: float | None = None,
    ) -> None:
        """
        Args:
            arch: the model's sizes (vocab_size is linked from the data's tokenizer).
            attention: the attention variant of every block.
            position: the position encoding.
            norm: the normalisation layer (before attention, before the MLP and at the end).
            mlp: the feed-forward sub-layer of every block.
            head: the output head.
            optimizer: the optimizer, built from the parameter groups (any torch.optim class by class_path,
                with its own arguments; gpt2kit.training.optim.MuonAdamW for Muon + AdamW); see gpt2kit.training.optim.
            schedule: the learning-rate schedule, stepped every optimizer step (WarmupCosine,
                WarmupStableDecay, Linear, Constant).
            optim: the older form of both (AdamW + warmup + cosine in one section), for older recipes and
                checkpoints: given, it replaces optimizer and schedule (with a warning if they were set too).
            finetune: which parameters train, and at what share of the LR (LastNBlocks, LoRA, ...;
                see gpt2kit.finetune); None: FullFineTune (all, at the full LR).
            init_from: a gpt2kit checkpoint whose weights (not optimizer state) the run starts from;
                unlike --ckpt_path, which resumes a run, training starts at step 0.
            compile: torch.compile the model when training starts (the whole model; each block under FSDP).
            on_nonfinite: what a NaN/inf training loss does: stop (an error naming the step, before the
                weights change) or skip (drop that optimizer step, with a warning).
            peak_flops: FLOP/s of one device for the logged MFU; None: measured once (a large matmul in the
                training dtype).
        """
        super().__init__()
        self.save_hyperparameters()
        if "_instantiator" not in self.hparams:  # built in Python, not by the CLI: store specs, not objects
            for key, value in list(self.hparams.items()):
                self.hparams[key] = component_spec(value)
            self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
        if optim is not None:  # older recipes and checkpoints: it wins, as it did, over both new slots
            if optimizer is not GPT2AdamW or schedule != DEFAULT_SCHEDULE:
                rank_zero_warn(
                    "model.optim (the older form: AdamW + warmup + cosine) replaces model.optimizer and "
                    "model.schedule; set those instead (e.g. --model.optimizer.init_args.lr)"
                )
            optimizer, schedule = optim.optimizer(), optim.schedule()
            # The checkpoint records the new form, so that loading it does not see both set.
            self.hparams.update(optimizer=component_spec(optimizer), schedule=schedule.spec(), optim=None)
        self.optimizer, self.schedule = optimizer, schedule
        self.model = GPT(arch, attention, position, norm, mlp, head)
        self.finetune: FreezePolicy = finetune if finetune is not None else FullFineTune()
        self.finetune.setup(self.model)  # adds adapters (LoRA) and freezes; init_from loads at setup()
        self.init_from = init_from
        self._init_from_loaded: str | None = None  # the init_from whose weights the model holds
        self._grown_vocab = False  # the vocabulary is init_from's plus special tokens (a chat template's)
        self.tokenizer: Tokenizer | None = None
        self.chat_template: dict[str, Any] | None = None  # a chat model's template (data's), for `chat`
        self.val_bytes_per_token: float | None = None  # from the data, for bits per byte
        self.val_loss = MeanMetric()
        self._throughput_since: float | None = None  # start of the interval tokens/s is averaged over
        self._throughput_tokens = 0
        self.compile, self.on_nonfinite, self.peak_flops = compile, on_nonfinite, peak_flops
        self._compiled = False
        self._skip_step = False  # the current optimizer step's gradients came from a non-finite loss
        self._rng_to_restore: dict[str, Any] | None = None
        self._flops_per_token: dict[int, float] = {}  # by sequence length
        self._peak: float | None = None

    def forward(self, idx: Tensor, **kwargs: Any) -> Tensor:
        return self.model(idx, **kwargs)

    # -- steps ----------------------------------------------------------------------------------------
    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean next-token cross-entropy over the supervised targets."""
        x, y = batch
        logits = self.model(x)  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            self._nonfinite_loss(loss, batch_idx)  # every rank takes the same branch
        # self.log costs ~2 ms on a CPU: log only on the steps the logger writes (Lightning's own rule,
        # from the Trainer's public state: every log_every_n_steps-th optimizer step, and the last)
        every = self.trainer.log_every_n_steps
        logging = every > 0 and ((self.trainer.global_step + 1) % every == 0 or self.trainer.should_stop)
        if logging:
            self.log("train_loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
        self._log_throughput(batch[0].numel() * self.trainer.world_size, batch[0].shape[1], logging)
        return loss

    def _log_throughput(self, tokens: int, seq_len: int, logging: bool) -> None:
        """tokens/s (and MFU) averaged since the last logged step, logged only where the logger writes.

        ``self.log`` costs about 2 ms per call on a CPU: once per ``log_every_n_steps``, not per step.
        One training_step runs per micro-batch on every rank, so each interval covers ``tokens``.
        """
        now = time.perf_counter()
        if self._throughput_since is None:  # the first step (or the first after validation) starts timing
            self._throughput_since, self._throughput_tokens = now, 0
            return
        self._throughput_tokens += tokens
        if not logging:
            return
        tokens_per_sec = self._throughput_tokens / (now - self._throughput_since)
        self.log("tokens_per_sec", tokens_per_sec)
        if self._peak:
            if seq_len not in self._flops_per_token:
                self._flops_per_token[seq_len] = perf.flops_per_token(self.model, seq_len)
            flops = tokens_per_sec * self._flops_per_token[seq_len]
            self.log("mfu", flops / (self._peak * self.trainer.world_size))
        self._throughput_since, self._throughput_tokens = now, 0

    def _nonfinite_loss(self, loss: Tensor, batch_idx: int) -> None:
        where = f"at step {self.trainer.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.on_nonfinite == "skip":
            rank_zero_warn(
                f"non-finite training loss {where}: skipping this optimizer step (on_nonfinite=skip)"
            )
            self._skip_step = True  # backward still runs (DDP expects it); the gradients are dropped
            return
        raise GPT2KitError(
            f"non-finite training loss {where}, stopped before it changed the weights; last good checkpoint: "
            f"{self._last_checkpoint() or 'none saved yet'}: resume from it with a lower learning rate (model.optimizer) or "
            "longer warmup (model.schedule), or set --model.on_nonfinite skip to drop such batches"
        )

    def _last_checkpoint(self) -> str | None:
        paths = [
            p
            for cb in self.trainer.checkpoint_callbacks
            for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
            if p and os.path.isfile(p)
        ]
        return max(paths, key=os.path.getmtime) if paths else None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_step:  # AdamW leaves parameters without a gradient untouched (moments included)
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skip_step = False

    def on_validation_epoch_start(self) -> None:
        self.val_loss.reset()  # fresh states in this loop's grad mode (validate() runs in inference mode)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, n = self.loss(batch), (batch[1] != IGNORE_INDEX).sum()
        if n > 0:  # a batch of padding (evening out the ranks' shards) has no targets and a NaN mean
            self.val_loss.update(loss, weight=n)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        prefix = "test" if self.trainer.testing else "val"
        self.log(f"{prefix}_loss", loss, prog_bar=True)
        self.log(f"{prefix}_ppl", torch.exp(loss))
        if (
            self.val_bytes_per_token
        ):  # bits per byte = nats/token ÷ ln 2 ÷ bytes/token: fair across tokenizers
            self.log(f"{prefix}_bpb", loss / math.log(2) / self.val_bytes_per_token)
        self._throughput_since = None  # the time spent validating is not training throughput

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: PromptBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Complete a batch of text prompts (from :class:`~gpt2kit.data.PromptDataModule`)."""
        if self.tokenizer is None:
            raise GPT2KitError(
                "the model has no tokenizer to read prompts with: predict from a trained or imported "
                "checkpoint (--ckpt_path PATH or --model.init_from PATH)"
            )
        sampling = batch.sampling
        if sampling.seed is not None:  # a different, reproducible stream per batch
            sampling = dataclasses.replace(sampling, seed=sampling.seed + batch_idx)
        prompts = [encode_prompt(self.tokenizer, text) for text in batch.prompts]
        completions = generate(self.model, prompts, sampling, self.tokenizer)
        return [
            {
                "id": i,
                "sample": n,
                "prompt": text,
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": len(c.tokens),
            }
            for i, n, text, c in zip(batch.ids, batch.samples, batch.prompts, completions, strict=True)
        ]

    # -- optimizer --------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups: GPT-2's decay rule, the fine-tuning policy's LR shares, Muon's matrices."""
        return parameter_groups(self.model, self.finetune)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer, self.param_groups())
        max_steps = (
            self.trainer.max_steps
            if self.trainer.max_steps > 0
            else int(self.trainer.estimated_stepping_batches)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lambda_for(max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- speed: compile, MFU --------------------------------------------------------------------------------
    def _sharded(self) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        return self._trainer is not None and isinstance(
            self.trainer.strategy, FSDPStrategy | ModelParallelStrategy
        )

    def configure_model(self) -> None:
        if self.compile and not self._compiled:
            # In place (Module.compile): parameter names, hence checkpoints, stay those of the eager model.
            # Sharded: block by block, so that FSDP's hooks between blocks stay outside the graphs.
            for module in self.model.blocks if self._sharded() else [self.model]:
                module.compile()
            self._compiled = True

    def on_train_start(self) -> None:
        if (
            self._rng_to_restore is not None
        ):  # after sanity validation and loader setup, before the first step
            resume.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._peak is None:
            self._peak = self.peak_flops or perf.measure_peak_flops(
                self.device, perf.precision_dtype(self.trainer.precision)
            )

    # -- tokenizer travels with the checkpoint ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        # Before any stage: the init_from weights, once. A resumed run (--ckpt_path) then overwrites them
        # with its own state, as Lightning restores after setup.
        self.load_init_from(getattr(datamodule, "tokenizer", None))
        self.val_bytes_per_token = getattr(datamodule, "val_bytes_per_token", None)
        template = getattr(datamodule, "chat_template", None)
        if template is not None:
            spec = template.to_dict()
            # compared as templates: a checkpoint written before class paths holds {name, config}
            if self.chat_template is not None and template.from_dict(self.chat_template) != template:
                raise GPT2KitError(
                    f"the model was trained with the chat template {describe(self.chat_template)} but the data "
                    f"uses {describe(spec)}: prepare the data with the model's template"
                )
            self.chat_template = spec
        data_tok = getattr(datamodule, "tokenizer", None)
        if data_tok is None:
            return
        _check_same_tokenizer(self.tokenizer, data_tok)
        if data_tok.vocab_size > self.model.config.vocab_size:
            raise GPT2KitError(
                f"the data's tokenizer has {data_tok.vocab_size} tokens but the model's vocab_size is "
                f"{self.model.config.vocab_size}: link model.arch.vocab_size to the data (the CLI does this)"
            )
        self.tokenizer = data_tok

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from gpt2kit.version import __version__

        bad = not all(torch.isfinite(p).all() for p in self.parameters())
        if self._trainer is not None and self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise GPT2KitError(
                f"the weights are not finite at step {self.trainer.global_step}: not saving them over the last "
                f"good checkpoint ({self._last_checkpoint() or 'none saved yet'}); resume from it with a lower "
                "learning rate (model.optimizer)"
            )
        tokenizer = self.tokenizer.to_dict() if self.tokenizer is not None else None
        checkpoint["gpt2kit"] = {"version": __version__, "tokenizer": tokenizer, "rng": resume.rng_state()}
        if self.chat_template is not None:
            checkpoint["gpt2kit"]["chat_template"] = self.chat_template
        kept = kept_state(self.finetune, self.model, checkpoint["state_dict"], self._grown_vocab)
        if kept is not None:  # LoRA's save_adapters_only
            checkpoint["state_dict"] = kept
            checkpoint["gpt2kit"]["adapters_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = f"checkpoint {self._trainer.ckpt_path}" if self._trainer is not None else "the checkpoint"
        self._complete(checkpoint)  # an adapters-only one gets its base weights from init_from
        # The tokenizer first: another one is the likely cause of any size mismatch below.
        saved = stored_tokenizer(checkpoint)
        if saved is not None:
            saved_tok = Tokenizer.from_dict(saved)
            if self.tokenizer is not None and saved_tok != self.tokenizer:
                raise GPT2KitError(
                    f"{source} was trained with another tokenizer ({saved_tok!r}, {saved_tok.fingerprint()}) than "
                    f"the data's ({self.tokenizer!r}, {self.tokenizer.fingerprint()}): prepare the data with the "
                    "checkpoint's tokenizer, or start a new run without --ckpt_path"
                )
        if "hyper_parameters" in checkpoint:
            current = {k: component_spec(v) for k, v in self.hparams.items()}
            problems = resume.architecture_mismatch(
                checkpoint["hyper_parameters"],
                current,
                checkpoint.get("state_dict"),
                None if self._sharded() else self.state_dict,  # a sharded model's state_dict is a collective
            )
            if problems:
                raise GPT2KitError(
                    f"{source} was trained with a different model ({'; '.join(problems)}): resume with the "
                    "checkpoint's model settings (its run's config.yaml), or start a new run without --ckpt_path"
                )
        if saved is not None:
            self.tokenizer = saved_tok
        self.chat_template = checkpoint.get("gpt2kit", {}).get("chat_template", self.chat_template)
        if self._trainer is not None:  # resuming a fit (not load_module): continue its random stream
            self._rng_to_restore = checkpoint.get("gpt2kit", {}).get("rng")

    def configure_callbacks(self) -> list[L.Callback]:
        """A validation pass at the end of every fit; fine-tuning's part of a run (freeze schedule,
        parameter table), when it is one."""
        fine_tuning = self.init_from is not None or not isinstance(self.finetune, FullFineTune)
        return [FinalValidation(), *([FineTuning()] if fine_tuning else [])]

    # -- starting from a checkpoint (init_from) ---------------------------------------------------------------
    def load_init_from(self, tokenizer: Tokenizer | None = None) -> None:
        """Load ``init_from`` into the model (once); adopt its tokenizer if the module has none yet.

        ``tokenizer`` is the one the model is to use (the data's). When it is the checkpoint's tokenizer
        with special tokens added after its vocabulary (a chat template's), the model's vocabulary is
        larger than the checkpoint's: the checkpoint's rows are loaded, the new tokens keep their fresh
        initialisation, and the module adopts the extended tokenizer (see
        :func:`gpt2kit.finetune.load_pretrained`).
        """
        if self.init_from is None or self._init_from_loaded == self.init_from:
            return
        adapters = self.finetune.added_parameters(self.model)
        saved, grown = load_pretrained(self.model, self.init_from, adapters, tokenizer)
        self._grown_vocab = self._grown_vocab or grown
        if self.tokenizer is None:
            self.tokenizer = saved
        self._init_from_loaded = self.init_from

    def _complete(self, checkpoint: dict[str, Any]) -> None:
        """Before a checkpoint's state is loaded into the module: fill in what an adapters-only one lacks.

        The base weights come from ``init_from``. Either way the module's weights are then the
        checkpoint's, so a later ``setup`` does not load ``init_from`` over them.
        """
        if not adapters_only(checkpoint):
            self._init_from_loaded = self.init_from
            return
        if self.init_from is None:
            raise GPT2KitError(
                "this checkpoint holds LoRA adapters only and names no base (model.init_from): "
                "set model.init_from to the checkpoint the adapters were trained on"
            )
        saved = stored_tokenizer(checkpoint)
        self.load_init_from(Tokenizer.from_dict(saved) if saved is not None else None)
        for key, value in self.state_dict().items():
            checkpoint["state_dict"].setdefault(key, value)


def _check_same_tokenizer(model_tok: Tokenizer | None, data_tok: Tokenizer | None) -> None:
    """The same ids must mean the same text to the model (its checkpoint) and to the prepared data."""
    if model_tok is not None and data_tok is not None and model_tok != data_tok:
        raise GPT2KitError(
            f"the model's tokenizer ({model_tok!r}, {model_tok.fingerprint()}) differs from the "
            f"data's ({data_tok!r}, {data_tok.fingerprint()}): prepare the data with the checkpoint's tokenizer"
        )
