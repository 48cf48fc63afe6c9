"""A checkpoint loaded for inference: model, tokenizer, chat template and resolved config — no Lightning.

Generating text needs a model, a tokenizer and (for a chat model) its template, never a Trainer, so
this loader rebuilds the :class:`~gpt2kit.model.GPT` directly from the checkpoint's stored component
specs (:mod:`gpt2kit.spec`), applies the fine-tuning policy that shaped it (LoRA adds adapters; an
adapters-only checkpoint takes its base weights from ``init_from``), loads the weights and converts them
to the ``dtype`` asked for (``int8``: :func:`gpt2kit.decoding.int8.quantize_int8`). ``generate``, ``chat``,
``serve``, ``evaluate`` and ``predict`` all start here; it imports neither Lightning nor the training code.

The two errors every decoding command needs are said here, once: :meth:`LoadedModel.require_tokenizer`
and :meth:`LoadedModel.require_chat_template`.

A checkpoint may carry recommended sampling options (``checkpoint["gpt2kit"]["sampling"]``, a dict of
:class:`~gpt2kit.config.SamplingConfig` fields, e.g. written by a chat fine-tuning run's author): they
replace :class:`SamplingConfig`'s defaults, never options a user set (see :meth:`LoadedModel.sampling`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gpt2kit.chat.template import ChatTemplate
from gpt2kit.ckptfile import adapters_only, load_weights, module_hparams, read_checkpoint, stored_tokenizer
from gpt2kit.config import GPTConfig, SamplingConfig
from gpt2kit.decoding.int8 import quantize_int8
from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.policies import FreezePolicy
from gpt2kit.finetune.pretrained import load_pretrained
from gpt2kit.model import BASES, GPT, SLOTS
from gpt2kit.spec import build_factory, build_instance, is_spec
from gpt2kit.tokenizers import Tokenizer

Dtype = Literal["float32", "bfloat16", "float16", "int8"]
"""The weight formats a checkpoint can be decoded in (int8: weight-only int8 linear layers, CPU)."""


@dataclass
class LoadedModel:
    """A checkpoint made ready to decode: what :func:`load_for_inference` returns."""

    model: GPT
    """The model, in eval mode, on its device and dtype (an int8 copy for ``dtype="int8"``)."""
    tokenizer: Tokenizer | None
    """The tokenizer stored with the checkpoint (None for a bare weights import)."""
    chat_template: ChatTemplate | None
    """The chat template the model was fine-tuned with, or None for a plain language model."""
    config: dict[str, Any]
    """The resolved hyperparameters the model was rebuilt from (component specs, arch, finetune ...)."""
    path: str
    """The checkpoint file."""
    dtype: str = "float32"
    recommended: dict[str, Any] = field(default_factory=dict)
    """Sampling options the checkpoint recommends (SamplingConfig fields), applied by :meth:`sampling`."""

    @property
    def name(self) -> str:
        """The checkpoint's file name without its suffix (a served model's default id)."""
        return Path(self.path).stem

    def require_tokenizer(self, why: str = "to read prompts with") -> Tokenizer:
        """The tokenizer, or the one-line error that says the checkpoint has none and how to add one."""
        if self.tokenizer is None:
            raise GPT2KitError(
                f"checkpoint {self.path} carries no tokenizer {why}: re-import it with "
                "`import-hf HF_DIR OUT.ckpt --tokenizer gpt2kit_tokenizer.json`, or train it with gpt2kit"
            )
        return self.tokenizer

    def require_chat_template(self) -> ChatTemplate:
        """The chat template, or the one-line error that says this is not a chat checkpoint and the fix."""
        if self.chat_template is None:
            raise GPT2KitError(
                f"checkpoint {self.path} was trained without a chat template, so it knows no turns to reply "
                "in: fine-tune it into a chatbot first, e.g. `python -m gpt2kit fit --config "
                f"recipes/chat/topical-chat.yaml --model.init_from {self.path} "
                f"--data.init_args.tokenizer.init_args.path {self.path}` (with the model settings of its run), "
                "then use the checkpoint that run writes"
            )
        return self.chat_template

    def sampling(self, cfg: SamplingConfig | None = None) -> SamplingConfig:
        """``cfg`` (default: SamplingConfig()), with the checkpoint's recommended options in place of the
        fields ``cfg`` leaves at SamplingConfig's defaults."""
        return with_recommended(cfg or SamplingConfig(), self.recommended)


def with_recommended(cfg: SamplingConfig, recommended: dict[str, Any]) -> SamplingConfig:
    """``cfg`` with ``recommended`` values in place of the fields it leaves at their defaults."""
    if not recommended:
        return cfg
    defaults = SamplingConfig()
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    changes = {k: v for k, v in recommended.items() if k in known and getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **changes)


def load_for_inference(path: str | Path, device: str = "cpu", dtype: Dtype | str = "float32") -> LoadedModel:
    """Read a gpt2kit checkpoint for decoding: model on ``device`` in ``dtype``, tokenizer, template, config.

    ``path`` is a local file; an ``hf:NAME`` is fetched and imported by the command line, or in Python by
    :func:`gpt2kit.interop.hub.resolve_checkpoint` (a layer above this one).
    """
    if dtype not in ("float32", "bfloat16", "float16", "int8"):
        raise GPT2KitError(
            f"dtype={dtype!r} is not a weight format to decode in: use float32, bfloat16 or int8"
        )
    check_device(device)
    ckpt = read_checkpoint(path)
    hparams = module_hparams(ckpt, path)
    model = build_model(hparams)
    policy = _policy(hparams)
    if policy is not None:
        policy.setup(model)  # LoRA adds its adapters, whose trained values the checkpoint holds
    saved = stored_tokenizer(ckpt)
    tokenizer = Tokenizer.from_dict(saved) if saved is not None else None
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if adapters_only(ckpt):
        base = hparams.get("init_from")
        if base is None:
            raise GPT2KitError(
                f"{path} holds LoRA adapters only and names no base (model.init_from): load the checkpoint "
                "the adapters were trained on with them, or save without save_adapters_only"
            )
        adapters = set(policy.added_parameters(model)) if policy is not None else set()
        load_pretrained(model, base, adapters, tokenizer)
        weights = {**model.state_dict(), **weights}
    load_weights(model, weights, source=str(path))
    model = model.to(device).eval()
    model = quantize_int8(model) if dtype == "int8" else model.to(getattr(torch, dtype))
    extra = ckpt.get("gpt2kit", {}) or {}
    template = extra.get("chat_template")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        chat_template=ChatTemplate.from_dict(template) if template is not None else None,
        config=hparams,
        path=str(path),
        dtype=dtype,
        recommended=dict(extra.get("sampling") or {}),
    )


def build_model(hparams: dict[str, Any]) -> GPT:
    """The (untrained) :class:`GPT` that a checkpoint's hyperparameters describe."""
    arch = hparams.get("arch") or {}
    if is_spec(arch):
        arch = arch.get("init_args") or {}
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    config = GPTConfig(**{k: v for k, v in arch.items() if k in known})
    factories = {
        slot: build_factory(hparams[slot], BASES[slot], f"model.{slot}")
        for slot in SLOTS
        if hparams.get(slot) is not None
    }
    return GPT(config, **factories)


def _policy(hparams: dict[str, Any]) -> FreezePolicy | None:
    spec = hparams.get("finetune")
    return build_instance(spec, FreezePolicy, "model.finetune") if spec is not None else None


def check_device(name: str) -> str:
    """``name``, if it is a torch device that is available here; else a one-line error with the fix."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GPT2KitError(f"device={name!r} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPT2KitError(f"device={name!r} but CUDA is not available here: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device={name!r} but MPS is not available here: use --device cpu")
    return name
