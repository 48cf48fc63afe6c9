"""Freeze policies: which parameters of a GPT train (at each step), and at what share of the LR.

The model is seen in *parts*, from the bottom: the embeddings (token and position), block 0 …
block n-1, and the top (final norm + head). GPT-2's head is tied to the token embedding: it owns no
weight, so freezing the embeddings freezes the head's output projection too (see ``LastNBlocks``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import class_path, init_args_from_attributes, instance_spec

if TYPE_CHECKING:
    from gpt2kit.model import GPT

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
        spec = instance_spec(self, init_args_from_attributes(self))
        return {**spec, "class_path": class_path(type(self), public=True)}  # as jsonargparse writes it

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


@FREEZE.register("full")
class FullFineTune(FreezePolicy):
    """Everything trains at the full learning rate, with pretraining's parameter groups (the default)."""

    def __init__(self) -> None:
        """No options."""

    def lr_scales(self, model: GPT) -> dict[str, float]:
        return dict.fromkeys((name for name, _ in model.named_parameters()), 1.0)

    def param_groups(self, model: GPT, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on matrices; none on biases, norms and embeddings; both groups at the optimizer's LR."""
        decayed = model.decayed_parameter_names()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (decay if name in decayed else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


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
