"""Optimizers and learning-rate schedules: the two training slots of a recipe's ``model:`` section.

The optimizer slot follows Lightning's convention: a *factory* that receives the parameter groups
and returns a ``torch.optim.Optimizer``. Any optimizer class is such a factory, so ``torch.optim``'s
own classes work by class path, with their own arguments::

    model:
      optimizer:
        class_path: torch.optim.AdamW            # or gpt2kit.training.optim.MuonAdamW, torch.optim.SGD, ...
        init_args: {lr: 1.0e-3, betas: [0.9, 0.99], weight_decay: 0.1}
      schedule:
        class_path: gpt2kit.training.optim.WarmupStableDecay
        init_args: {warmup_steps: 100, cooldown_fraction: 0.2}

The groups carry GPT-2's weight-decay rule (``weight_decay: 0.0`` on biases, norms and embeddings;
the optimizer's own ``weight_decay`` on the matrices), a fine-tuning policy's share of the LR as
``lr_scale`` (applied to every group's ``lr`` once the optimizer is built), and ``muon: True`` on the
hidden matrices (the 2-D weights inside the blocks), which :class:`MuonAdamW` routes to Muon. Other
optimizers keep the extra keys in their groups and ignore them.

A :class:`Schedule` maps an optimizer step to a multiple of each group's peak LR; the LitModule runs
it through ``torch.optim.lr_scheduler.LambdaLR``, stepped every optimizer step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.training.schedules import SCHEDULE, Constant, Linear, Schedule, WarmupCosine, WarmupStableDecay  # noqa: F401

if TYPE_CHECKING:
    from gpt2kit.finetune import FreezePolicy
    from gpt2kit.model import GPT

OptimizerFactory = Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer]
"""What ``model.optimizer`` is: parameter groups in, an optimizer out (any ``torch.optim`` class)."""

OPTIMIZER = add_kind("optimizer", torch.optim.Optimizer)


# --- parameter groups -----------------------------------------------------------------------------------


def hidden_matrix_names(model: GPT) -> set[str]:
    """The 2-D weights inside the transformer blocks: what Muon orthogonalises (not embeddings or head)."""
    inside = {id(p) for block in model.blocks for p in block.parameters() if p.dim() == 2}
    return {name for name, p in model.named_parameters() if id(p) in inside}


def parameter_groups(model: GPT, policy: FreezePolicy) -> list[dict[str, Any]]:
    """The groups an optimizer factory receives: decay rule, ``lr_scale`` and Muon routing per group.

    The fine-tuning policy's groups (one per LR multiple and decay rule, highest LR first; the default
    FullFineTune trains everything at the full LR) are kept. A group holding both hidden matrices and
    other parameters is split in two, the matrices first with ``muon: True``. Empty groups are dropped.
    """
    groups = []
    for g in policy.param_groups(model, 1.0, 1.0):  # at lr 1 and decay 1: its LR multiples and decay rule
        group = {
            "params": g["params"],
            "lr_scale": g.get("lr", 1.0),  # a group without its own LR trains at the optimizer's
            **({"name": g["name"]} if "name" in g else {}),
        }
        if g["weight_decay"] == 0.0:
            group["weight_decay"] = 0.0
        groups.append(group)
    hidden = {id(p) for n, p in model.named_parameters() if n in hidden_matrix_names(model)}
    split: list[dict[str, Any]] = []
    for group in groups:
        matrices = [p for p in group["params"] if id(p) in hidden]
        rest = [p for p in group["params"] if id(p) not in hidden]
        if matrices and "weight_decay" not in group:  # a no-decay group stays on AdamW whole
            named = {"name": group["name"] + "_matrices"} if "name" in group and rest else {}
            split.append({**group, "params": matrices, "muon": True, **named})
        else:
            rest = group["params"]
        if rest:
            split.append({**group, "params": rest})
    return split


def build_optimizer(factory: OptimizerFactory, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``factory(groups)``, with each group's ``lr`` then multiplied by its ``lr_scale``.

    A factory that refuses its arguments (a misspelt option given in Python, a parameter it cannot
    take) fails with one line naming it.
    """
    if not groups:
        raise GPT2KitError("no trainable parameters: everything is frozen; unfreeze something to train")
    name = _name(factory)
    try:
        optimizer = factory(groups)
    except GPT2KitError:
        raise
    except TypeError as exc:
        raise GPT2KitError(
            f"optimizer {name} does not take these arguments ({exc}): see its signature, e.g. "
            f"`python -m gpt2kit list optimizer`, or torch.optim's documentation"
        ) from None
    except ValueError as exc:
        raise GPT2KitError(f"optimizer {name} refused its settings or parameters: {exc}") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise GPT2KitError(
            f"model.optimizer {name} returned {type(optimizer).__name__}, not a torch Optimizer"
        )
    for group in optimizer.param_groups:
        if group.get("lr_scale", 1.0) != 1.0:
            group["lr"] = group["lr"] * group["lr_scale"]
    return optimizer


def _name(factory: Any) -> str:
    func = getattr(factory, "func", factory)  # functools.partial: what a class_path + init_args becomes
    return getattr(func, "__qualname__", repr(func))


# --- optimizers -------------------------------------------------------------------------------------------


def _on_cuda(groups: list[dict[str, Any]]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda for p in params)


def _groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [{"params": params}]
    return [{**g, "params": list(g["params"])} for g in params]


@OPTIMIZER.register("adamw")
class GPT2AdamW(torch.optim.AdamW):
    """AdamW with GPT-2's settings (lr 6e-4, betas (0.9, 0.95), weight decay 0.1); fused kernel on CUDA."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        fused: bool | None = None,
    ) -> None:
        """
        Args:
            params: the parameter groups (given by the LitModule).
            lr: peak learning rate (the schedule multiplies it).
            betas: Adam's beta1 and beta2.
            eps: Adam's epsilon.
            weight_decay: decoupled weight decay of the matrices (biases, norms, embeddings: none).
            fused: the fused CUDA kernel; None: on when every parameter is on CUDA.
        """
        groups = _groups(params)
        if lr <= 0:
            raise GPT2KitError(f"GPT2AdamW lr={lr} must be > 0")
        fused = _on_cuda(groups) if fused is None else fused
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)


def _check_muon() -> type[torch.optim.Optimizer]:
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise GPT2KitError(
            f"Muon needs PyTorch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}: "
            "upgrade torch (pip install -U torch) or use model.optimizer GPT2AdamW"
        )
    return BatchedMuon


# --- Muon's orthogonalisation: batched, in the device's fastest dtype ----------------------------------------

NsDtype = Literal["auto", "bfloat16", "float32"]
"""The dtype of Muon's Newton-Schulz iterations: ``auto`` picks per device (:func:`orthogonalization_dtype`)."""


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware: x86's AVX512-BF16 or AMX-BF16, Arm's BF16.

    Read from /proc/cpuinfo's flags (False where there is none: macOS, Windows), not from
    ``torch.backends.cpu.get_cpu_capability()``: the matrix products run in oneDNN, which picks its
    instructions from the CPU itself (``ATEN_CPU_CAPABILITY=avx2`` does not turn its bfloat16 ones off).
    Without them torch emulates bfloat16 products, about 10x slower than float32 ones.
    """
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu_flags())  # bf16: aarch64's Features line


def orthogonalization_dtype(device: torch.device | str) -> torch.dtype:
    """The fastest dtype the device really has for Muon's Newton-Schulz iterations.

    bfloat16 (torch.optim.Muon's own choice) on GPUs with native bfloat16 and on CPUs that have it
    (:func:`cpu_has_native_bf16`); float32 where bfloat16 would be emulated (older GPUs, most x86 CPUs
    without AVX-512, Apple's CPUs), which is both faster there and more exact. Fixed per machine, so
    a run resumed on the same machine repeats its steps bit for bit.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16  # other accelerators: torch.optim.Muon's choice


def newton_schulz(
    matrices: list[Tensor],
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """torch.optim.Muon's orthogonalisation of each matrix, batched over the matrices of one shape.

    The same quintic iteration as ``torch.optim.Muon`` (each matrix made wide, scaled to unit Frobenius
    norm, ``steps`` iterations of ``X <- aX + (bA + cA^2)X`` with ``A = XX^T``), with the matrices of
    one shape and device stacked and iterated as one batch (one ``baddbmm`` per product instead of one
    ``addmm`` per matrix), in ``dtype`` (None: :func:`orthogonalization_dtype` of their device).
    Returns one tensor per input, in that dtype, in the input order.
    """
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    a, b, c = coefficients
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, m in enumerate(matrices):
        rows, cols = m.shape
        by_shape.setdefault((min(rows, cols), max(rows, cols), m.device), []).append(i)
    out: list[Tensor] = [matrices[0]] * len(matrices)
    for (_, _, device), indices in by_shape.items():
        tall = [matrices[i].size(0) > matrices[i].size(1) for i in indices]
        x = torch.stack([matrices[i].mT if t else matrices[i] for i, t in zip(indices, tall, strict=True)])
        x = x.to(dtype or orthogonalization_dtype(device))  # (n, short side, long side)
        x.div_(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps))
        for _ in range(steps):
            gram = x @ x.mT  # (n, short, short)
            update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, update, x, beta=a)
        for i, t, m in zip(indices, tall, x, strict=True):
            out[i] = m.mT if t else m
    return out


def _adjust_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-shape learning rate (its ``adjust_lr_fn`` documentation)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class BatchedMuon(torch.optim.Muon if hasattr(torch.optim, "Muon") else torch.optim.Optimizer):  # type: ignore[misc]
    """``torch.optim.Muon`` whose Newton-Schulz iterations run batched, in the device's fastest dtype.

    Same arguments, parameter groups, state (``momentum_buffer``) and update rule as torch's Muon; only
    the orthogonalisation differs: :func:`newton_schulz` over same-shape matrices at once, in
    ``ns_dtype`` ("auto": bfloat16 where the hardware has it, float32 where bfloat16 is emulated; see
    :func:`orthogonalization_dtype`). In bfloat16 its updates match torch's to bfloat16's rounding; in
    float32 they are closer to the exact iteration than torch's own.
    """

    def __init__(self, params: Iterable[Any], *args: Any, ns_dtype: NsDtype = "auto", **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        if ns_dtype not in ("auto", "bfloat16", "float32"):
            raise GPT2KitError(f"ns_dtype={ns_dtype!r} must be one of auto, bfloat16, float32")
        self.ns_dtype: torch.dtype | None = None if ns_dtype == "auto" else getattr(torch, ns_dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = float(group["lr"]), group["momentum"]
            updates = []
            for p in params:
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon does not support complex parameters or sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                updates.append(p.grad.lerp(buf, momentum) if group["nesterov"] else buf)
            ortho = newton_schulz(
                updates, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
            )
            for p, update in zip(params, ortho, strict=True):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


@OPTIMIZER.register("muon")
class MuonAdamW(torch.optim.Optimizer):
    """Muon (torch.optim.Muon's rule, :class:`BatchedMuon`) on the hidden matrices, AdamW on the rest.

    AdamW gets embeddings, head, norms and biases.

    One optimizer object for Lightning: ``param_groups`` are the Muon groups then the AdamW groups
    (the very dicts the two inner optimizers step, so a schedule sets both LRs), and ``state``,
    ``state_dict`` and ``load_state_dict`` cover both, so gradient clipping, checkpoints and resuming
    work as with one optimizer. A group goes to Muon when it carries ``muon: True`` (the LitModule
    marks the 2-D weights inside the blocks); every parameter in it must be a matrix.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr_fn: Literal["original", "match_rms_adamw"] | None = None,
        adam_lr: float = 3e-3,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.0,
        ns_dtype: NsDtype = "auto",
    ) -> None:
        """
        Args:
            params: the parameter groups (given by the LitModule); groups with ``muon: True`` go to Muon.
            lr: Muon's peak learning rate.
            momentum: Muon's momentum.
            nesterov: Nesterov momentum in Muon.
            ns_steps: Newton-Schulz iterations that orthogonalise each update.
            weight_decay: Muon's decoupled weight decay.
            adjust_lr_fn: torch's per-shape LR adjustment: None or "original" (Keller Jordan's
                sqrt(max(1, rows/cols))), "match_rms_adamw" (Moonshot's 0.2·sqrt(max(rows, cols)), for an
                lr near AdamW's).
            adam_lr: AdamW's peak learning rate (embeddings, head, norms, biases).
            adam_betas: AdamW's beta1 and beta2.
            adam_eps: AdamW's epsilon.
            adam_weight_decay: AdamW's weight decay of the matrices it gets (an untied head; none on
                biases, norms and embeddings).
            ns_dtype: the dtype of Muon's Newton-Schulz iterations: "auto" (bfloat16 where the device
                has it natively, float32 where bfloat16 would be emulated: the fastest one), "bfloat16"
                (torch.optim.Muon's) or "float32".
        """
        muon_cls = _check_muon()
        groups = _groups(params)
        for group in groups:
            for p in group["params"] if group.get("muon") else ():
                if p.dim() != 2:
                    raise GPT2KitError(
                        f"Muon takes 2-D matrices only, but a parameter of shape {tuple(p.shape)} was routed "
                        "to it (a group with muon: True): leave 1-D and 3-D tensors to AdamW (muon: False)"
                    )
        if lr <= 0 or adam_lr <= 0:
            raise GPT2KitError(f"MuonAdamW needs lr > 0 and adam_lr > 0, got lr={lr}, adam_lr={adam_lr}")
        muon_groups = [g for g in groups if g.get("muon")]
        adam_groups = [g for g in groups if not g.get("muon")]
        # Each inner optimizer fills in its defaults; a placeholder keeps an empty side constructible.
        placeholder = [{"params": [torch.zeros(1, 1)]}]
        self.muon = muon_cls(
            muon_groups or placeholder,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
        )
        self.adamw = torch.optim.AdamW(
            adam_groups or placeholder,
            lr=adam_lr,
            betas=adam_betas,
            eps=adam_eps,
            weight_decay=adam_weight_decay,
            fused=_on_cuda(adam_groups) or None,
        )
        self._n_muon = len(muon_groups)
        if not muon_groups:
            self.muon.param_groups = []
        if not adam_groups:
            self.adamw.param_groups = []
        defaults = {"lr": lr, "adam_lr": adam_lr}
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults)
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (after init and after loading)."""
        self.muon.param_groups = self.param_groups[: self._n_muon]
        self.adamw.param_groups = self.param_groups[self._n_muon :]
        self.muon.state = self.state  # keyed by parameter: the two sides never share one
        self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.param_groups and self.state with new objects
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = _closure_loss(closure)
        if self.muon.param_groups:
            self.muon.step()
        if self.adamw.param_groups:
            self.adamw.step()
        return loss


def _closure_loss(closure: Callable[[], Tensor] | None) -> Tensor | None:
    """``torch.optim``'s step protocol: the loss of ``closure`` (run with gradients on), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
