"""Fine-tuning: which parameters of a pretrained GPT train, and at what share of the learning rate.

A :class:`FreezePolicy` is the ``model.finetune`` setting of a recipe; ``model.init_from`` names the
checkpoint whose weights the run starts from (see :func:`load_weights`)::

    model:
      init_from: runs/shakespeare-char/checkpoints/last.ckpt
      finetune:
        class_path: LastNBlocks
        init_args: {n: 2}

The built-in policies:

* :class:`LastNBlocks` — the last n blocks, the final norm and the head train; the rest is frozen;
* :class:`HeadOnly` — only the output head;
* :class:`PatternFreeze` — the parameters whose names match regular expressions;
* :class:`LayerwiseLRDecay` — everything trains, each block down from the top at ``lr × decay^depth``;
* :class:`GradualUnfreeze` — one more block joins every K optimizer steps (ULMFiT);
* :class:`LoRA` — low-rank adapters on chosen linear layers; the base weights stay frozen.

The model is seen in *parts*, from the bottom: the embeddings (token and position), block 0 …
block n-1, and the top (final norm + head). GPT-2's head is tied to the token embedding: it owns no
weight, so freezing the embeddings freezes the head's output projection too (see ``LastNBlocks``).

This module needs only torch; :mod:`gpt2kit.callbacks` applies a policy during a Lightning run.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import init_args_from_attributes, instance_spec

if TYPE_CHECKING:
    from gpt2kit.model import GPT
    from gpt2kit.tokenizers import Tokenizer

# --- the model in parts -------------------------------------------------------------------------------


def model_parts(model: GPT) -> list[tuple[str, list[str]]]:
    """The model's parameter names in parts, bottom to top: embeddings, block 0 …, final norm + head.

    A parameter shared by two modules (a tied head's weight) is named once, where the model first
    holds it: GPT-2's tied output projection is ``wte.weight``, among the embeddings.
    """
    top = len(model.blocks) + 1
    part_of: dict[int, int] = {}  # id(parameter) → part: 0 embeddings (anything unplaced), 1 … n blocks, top
    for i, block in enumerate(model.blocks, start=1):
        part_of.update(dict.fromkeys(map(id, block.parameters()), i))
    for module in (model.ln_f, model.head):
        part_of.update(dict.fromkeys(map(id, module.parameters()), top))
    names: list[list[str]] = [[] for _ in range(top + 1)]
    for name, p in model.named_parameters():  # one pass, in the model's order
        names[part_of.get(id(p), 0)].append(name)
    labels = ["embeddings", *(f"block {i}" for i in range(len(model.blocks))), "final norm + head"]
    return list(zip(labels, names, strict=True))


def _names(model: nn.Module, module: nn.Module) -> list[str]:
    """The names (in ``model``) of ``module``'s parameters."""
    ids = {id(p) for p in module.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """requires_grad on exactly the named parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


# --- policies -----------------------------------------------------------------------------------------


class FreezePolicy:
    """Base class: which parameters train (at each step) and each one's multiple of the learning rate.

    A policy implements :meth:`lr_scales`; one whose trainable set changes during training also
    overrides :meth:`trainable_at` and sets ``scheduled = True``. Constructor arguments are stored as
    attributes of the same names (they are the policy's spec in a checkpoint).
    """

    scheduled: bool = False
    """Whether the trainable set depends on the step (then it is re-applied before every step)."""

    def setup(self, model: GPT) -> None:
        """Called once, when the module is built: check the policy against the model, freeze the rest."""
        scales = self.lr_scales(model)
        if not scales:
            raise GPT2KitError(
                f"{self!r} leaves nothing to train: every parameter would be frozen; "
                "choose a policy or options that train at least one parameter"
            )
        set_trainable(model, self.trainable_at(model, 0))

    def lr_scales(self, model: GPT) -> dict[str, float]:
        """Each parameter that trains at some step, by name → its multiple of the learning rate."""
        raise NotImplementedError

    def trainable_at(self, model: GPT, step: int) -> set[str]:
        """The parameters that train at optimizer step ``step`` (default: all of them, always)."""
        return set(self.lr_scales(model))

    def added_parameters(self, model: GPT) -> set[str]:
        """Parameters the policy added to the model (adapters): a base checkpoint does not hold them."""
        return set()

    def checkpoint_parameters(self, model: GPT) -> set[str] | None:
        """The parameters a checkpoint stores; None: all of them (the default)."""
        return None

    def param_groups(self, model: GPT, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups of the parameters that ever train: one per (LR multiple, decay or not).

        Weight decay applies to matrices, not to biases, norms or embeddings (as in pretraining). Groups
        are ordered from the highest LR down, so group 0 carries the peak LR.
        """
        scales = self.lr_scales(model)
        decayed = model.decayed_parameter_names()
        groups: dict[tuple[float, bool], list[Tensor]] = {}
        for name, p in model.named_parameters():
            if name in scales:
                groups.setdefault((scales[name], name in decayed), []).append(p)
        return [
            {
                "params": params,
                "lr": lr * scale,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"lr_x{scale:.6g}" + ("" if decay else "_no_decay"),
            }
            for (scale, decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
        ]

    def spec(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: how a checkpoint records this policy."""
        return instance_spec(self, init_args_from_attributes(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec()["init_args"].items())
        return f"{type(self).__name__}({args})"


FREEZE = add_kind("freeze", FreezePolicy)


def _check_blocks(what: str, n: int, model: GPT) -> None:
    if not 0 <= n <= len(model.blocks):
        raise GPT2KitError(
            f"{what}={n} but the model has {len(model.blocks)} blocks: choose 0 to {len(model.blocks)}"
        )


@FREEZE.register("last_n_blocks")
class LastNBlocks(FreezePolicy):
    """Train the last n blocks, the final norm and the head; freeze everything below (the seed's stage 2)."""

    def __init__(self, n: int = 2, train_embedding: bool = False) -> None:
        """
        Args:
            n: how many blocks, counted from the top, train.
            train_embedding: also train the token embedding. GPT-2's head is tied to it, so with False
                the output projection stays frozen too; True adapts it (and the input embedding with it).
        """
        self.n = n
        self.train_embedding = train_embedding

    def lr_scales(self, model: GPT) -> dict[str, float]:
        _check_blocks("LastNBlocks n", self.n, model)
        names = model_parts(model)[-1][1]
        for block in list(model.blocks)[len(model.blocks) - self.n :]:
            names += _names(model, block)
        if self.train_embedding:
            names += _names(model, model.wte)
        return dict.fromkeys(names, 1.0)


@FREEZE.register("head_only")
class HeadOnly(FreezePolicy):
    """Train only the output head. A tied head (GPT-2) owns no weight: then the token embedding it shares trains."""

    def __init__(self) -> None:
        """No options."""

    def lr_scales(self, model: GPT) -> dict[str, float]:
        names = _names(model, model.head) or _names(model, model.wte)
        return dict.fromkeys(names, 1.0)


@FREEZE.register("pattern")
class PatternFreeze(FreezePolicy):
    """Train the parameters whose names match any of the regular expressions; freeze the rest."""

    def __init__(self, trainable: list[str]) -> None:
        """
        Args:
            trainable: regular expressions searched in parameter names such as
                ``blocks.3.mlp.c_fc.weight`` or ``ln_f.weight``; each must match at least one.
        """
        self.trainable = list(trainable)

    def lr_scales(self, model: GPT) -> dict[str, float]:
        names = [name for name, _ in model.named_parameters()]
        picked: list[str] = []
        for pattern in self.trainable:
            try:
                found = [n for n in names if re.search(pattern, n)]
            except re.error as exc:
                raise GPT2KitError(
                    f"PatternFreeze pattern {pattern!r} is not a regular expression: {exc}"
                ) from None
            if not found:
                raise GPT2KitError(
                    f"PatternFreeze pattern {pattern!r} matches no parameter; names look like "
                    f"{', '.join(names[:3])}, ..., {names[-1]}"
                )
            picked += found
        return dict.fromkeys(picked, 1.0)


@FREEZE.register("layerwise_lr_decay")
class LayerwiseLRDecay(FreezePolicy):
    """Everything trains; each part down from the top gets ``lr × decay^depth`` (the top has depth 0).

    Depths: final norm + head 0, block n-1 1, …, block 0 n, embeddings n+1 (the deepest).
    """

    def __init__(self, decay: float = 0.8) -> None:
        """
        Args:
            decay: LR multiplier per part down from the top, in (0, 1].
        """
        if not 0.0 < decay <= 1.0:
            raise GPT2KitError(f"LayerwiseLRDecay decay={decay} must be in (0, 1]")
        self.decay = decay

    def lr_scales(self, model: GPT) -> dict[str, float]:
        scales: dict[str, float] = {}
        for depth, (_, names) in enumerate(reversed(model_parts(model))):
            scales.update(dict.fromkeys(names, self.decay**depth))
        return scales


@FREEZE.register("gradual_unfreeze")
class GradualUnfreeze(FreezePolicy):
    """Train the top and the last ``start_n`` blocks, then unfreeze one more block every K steps.

    At optimizer step s the last ``start_n + s // every_k_steps`` blocks train (with the final norm and
    head); once every block trains, the embeddings join at the next stage. All parameters are in the
    optimizer from the start (a frozen one gets no gradient, so AdamW leaves it untouched), and the
    trainable set is a function of the step alone, so a resumed run continues the same schedule.
    """

    scheduled = True

    def __init__(self, every_k_steps: int, start_n: int = 1) -> None:
        """
        Args:
            every_k_steps: optimizer steps between two unfreezings.
            start_n: blocks (from the top) that train from step 0.
        """
        if every_k_steps < 1:
            raise GPT2KitError(f"GradualUnfreeze every_k_steps={every_k_steps} must be >= 1")
        self.every_k_steps = every_k_steps
        self.start_n = start_n

    def lr_scales(self, model: GPT) -> dict[str, float]:
        _check_blocks("GradualUnfreeze start_n", self.start_n, model)
        return {name: 1.0 for name, _ in model.named_parameters()}

    def trainable_at(self, model: GPT, step: int) -> set[str]:
        parts = model_parts(model)  # embeddings, block 0 … block n-1, top
        k = self.start_n + step // self.every_k_steps  # blocks that train now (past n: embeddings too)
        live = parts[max(0, len(parts) - 1 - k) :]
        return {name for _, names in live for name in names}


# --- LoRA -----------------------------------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """A linear layer plus a low-rank update: ``y = x Wᵀ + b + (alpha / rank) · dropout(x) Aᵀ Bᵀ``.

    It keeps the wrapped layer's ``weight`` and ``bias`` (same tensors, same names), so a base
    checkpoint loads into it unchanged; ``lora_A`` (rank, in) and ``lora_B`` (out, rank) are new. B
    starts at zero, so until it trains the layer computes exactly what the base layer does.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse the base weights, allocate nothing
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        if getattr(base, "residual_projection", False):
            self.residual_projection = True
        self.rank = rank
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the update folded in: ``W + (alpha / rank) · B A``."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        if getattr(self, "residual_projection", False):
            linear.residual_projection = True
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


@FREEZE.register("lora")
class LoRA(FreezePolicy):
    """Low-rank adapters on the linear layers whose names match ``targets``; only the adapters train."""

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: list[str] | None = None,
        save_adapters_only: bool = False,
    ) -> None:
        """
        Args:
            rank: rank r of each update B A.
            alpha: the update is scaled by alpha / rank.
            dropout: dropout on the adapter's input.
            targets: regular expressions searched in linear layers' names, such as
                ``blocks.0.attn.c_attn`` or ``blocks.3.mlp.c_fc``; each must match one at least.
                Default: the attention's q/k/v projection, ``["attn.c_attn"]``.
            save_adapters_only: checkpoints store the adapters alone (kilobytes); loading one rebuilds
                the model from ``model.init_from`` and adds them.
        """
        if rank < 1:
            raise GPT2KitError(f"LoRA rank={rank} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise GPT2KitError(f"LoRA dropout={dropout} must be in [0, 1)")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = list(targets) if targets is not None else ["attn.c_attn"]
        self.save_adapters_only = save_adapters_only

    def setup(self, model: GPT) -> None:
        linears = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
        ]
        chosen: dict[str, nn.Linear] = {}
        for pattern in self.targets:
            try:
                found = {name: m for name, m in linears if re.search(pattern, name)}
            except re.error as exc:
                raise GPT2KitError(f"LoRA target {pattern!r} is not a regular expression: {exc}") from None
            if not found:
                raise GPT2KitError(
                    f"LoRA target {pattern!r} matches no linear layer; they are named like "
                    f"{', '.join(name for name, _ in linears[:4])}, ..."
                )
            chosen.update(found)
        for name, linear in chosen.items():
            _replace(model, name, LoRALinear(linear, self.rank, self.alpha, self.dropout))
        super().setup(model)

    def lr_scales(self, model: GPT) -> dict[str, float]:
        return dict.fromkeys(sorted(self.added_parameters(model)), 1.0)

    def added_parameters(self, model: GPT) -> set[str]:
        return {
            f"{name}.{p}"
            for name, m in model.named_modules()
            if isinstance(m, LoRALinear)
            for p in ("lora_A", "lora_B")
        }

    def checkpoint_parameters(self, model: GPT) -> set[str] | None:
        return self.added_parameters(model) if self.save_adapters_only else None

    @staticmethod
    def merge(model: nn.Module) -> int:
        """Fold every adapter into its layer's weight, in place (for export); returns how many."""
        names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
        for name in names:
            _replace(model, name, model.get_submodule(name).merged())
        return len(names)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- starting from a checkpoint ----------------------------------------------------------------------


def load_weights(
    model: GPT, path: str, adapters: set[str] = frozenset(), grow_vocab: bool = False
) -> Tokenizer | None:
    """Load a gpt2kit checkpoint's model weights (not its optimizer state) into ``model``.

    Every tensor must match by name and shape, except ``adapters`` (parameters a fine-tuning policy
    added, which the checkpoint need not hold); anything else is refused in one line that lists the
    mismatched tensors. Returns the checkpoint's tokenizer, if it carries one.

    ``grow_vocab``: the model's vocabulary may be larger than the checkpoint's (special tokens added
    after it, e.g. a chat template's). The checkpoint's rows of every vocabulary-sized tensor (the
    token embedding, a head's own weight) are loaded; the new rows keep the model's initialisation, as
    after :meth:`GPT.resize_token_embeddings`.
    """
    from gpt2kit.checkpoint import load_weights as check_and_load
    from gpt2kit.checkpoint import read_checkpoint
    from gpt2kit.tokenizers import Tokenizer

    ckpt = read_checkpoint(path)
    extra = ckpt.get("gpt2kit", {})
    if extra.get("adapters_only"):
        raise GPT2KitError(
            f"init_from {path} holds LoRA adapters only: start from its base checkpoint instead "
            "(or from a checkpoint saved without save_adapters_only)"
        )
    weights = {
        k.removeprefix("model."): v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")
    }
    if not weights:
        raise GPT2KitError(
            f"init_from {path} is not a gpt2kit checkpoint: its state_dict has no model weights"
        )
    arch = ckpt.get("hyper_parameters", {}).get("arch", {})
    sizes = ", ".join(f"{k}={v}" for k, v in arch.items() if k not in ("vocab_size", "dropout")) or "?"
    fix = f"make model.arch and the components match the checkpoint's ({sizes})"
    if grow_vocab:
        weights = _grown(model, weights)
    check_and_load(model, weights, source=f"init_from {path}", optional=adapters, fix=fix)
    tokenizer = extra.get("tokenizer")
    return Tokenizer.from_dict(tokenizer) if tokenizer is not None else None


def _grown(model: GPT, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weights`` with each vocabulary-sized tensor extended to the model's vocabulary by its own rows."""
    old, new = weights["wte.weight"].shape[0], model.config.vocab_size
    if old >= new:
        return weights
    own = model.state_dict()
    grown = dict(weights)
    for name, w in weights.items():
        mine = own.get(name)
        if mine is not None and w.shape[0] == old and mine.shape[0] == new and w.shape[1:] == mine.shape[1:]:
            grown[name] = torch.cat([w.to(mine.dtype), mine[old:]])  # checkpoint rows, then the new ones
    return grown


# --- reporting ----------------------------------------------------------------------------------------


def parameter_table(model: GPT, policy: FreezePolicy | None = None) -> str:
    """Trainable vs frozen parameters per part of the model (counts and trainable share)."""
    params = dict(model.named_parameters())
    scales = policy.lr_scales(model) if policy is not None else {}
    rows = [("part", "trainable", "frozen", "share", "lr ×")]
    total_train = total = 0
    for part, names in model_parts(model):
        train = sum(params[n].numel() for n in names if params[n].requires_grad)
        count = sum(params[n].numel() for n in names)
        live = sorted({scales[n] for n in names if n in scales and params[n].requires_grad}, reverse=True)
        lr = ", ".join(f"{s:.3g}" for s in live) if policy is not None else "1"
        rows.append((part, f"{train:,}", f"{count - train:,}", f"{train / max(count, 1):.1%}", lr or "-"))
        total_train, total = total_train + train, total + count
    rows.append(("total", f"{total_train:,}", f"{total - total_train:,}", f"{total_train / total:.1%}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip()
        for r in rows
    ]
    if not any(True for _ in model.head.parameters()):
        lines.append("(the head is tied to the token embedding: its weight is counted under embeddings)")
    return "\n".join(lines)
