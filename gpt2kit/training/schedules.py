"""Learning-rate schedules: the ``model.schedule`` slot of a recipe (re-exported by :mod:`gpt2kit.optim`).

A :class:`Schedule` maps an optimizer step to a multiple of each group's peak LR; the LitModule runs
it through ``torch.optim.lr_scheduler.LambdaLR``, stepped every optimizer step::

    model:
      schedule:
        class_path: gpt2kit.optim.WarmupStableDecay   # or WarmupCosine, Linear, Constant
        init_args: {warmup_steps: 100, cooldown_fraction: 0.2}

``python -m gpt2kit list schedule`` shows the built-ins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import add_kind
from gpt2kit.spec import Specified


class Schedule(Specified):
    """Base class: the multiple of the peak LR at each optimizer step (``factor``), given the run's length.

    Every schedule warms up linearly over ``warmup_steps`` and ends at ``min_lr_ratio``; subclasses
    implement :meth:`decay`, the shape in between. Constructor arguments are stored as attributes of the
    same names (they are the schedule's spec in a checkpoint).
    """

    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_steps: int | None = None

    def __init__(
        self, warmup_steps: int = 0, min_lr_ratio: float | None = None, decay_steps: int | None = None
    ) -> None:
        """Check and store the options every schedule shares (``min_lr_ratio`` None: the class's own)."""
        name = type(self).__name__
        if warmup_steps < 0:
            raise GPT2KitError(f"{name} warmup_steps={warmup_steps} must be >= 0")
        if min_lr_ratio is not None and not 0.0 <= min_lr_ratio <= 1.0:
            raise GPT2KitError(
                f"{name} min_lr_ratio={min_lr_ratio} must be in [0, 1] (a multiple of the peak LR)"
            )
        if decay_steps is not None and decay_steps < 1:
            raise GPT2KitError(f"{name} decay_steps={decay_steps} must be >= 1, or unset to follow max_steps")
        self.warmup_steps, self.decay_steps = warmup_steps, decay_steps
        if min_lr_ratio is not None:
            self.min_lr_ratio = min_lr_ratio

    def factor(self, step: int, total: int) -> float:
        """LR multiple at optimizer step ``step`` (0-based) of a run whose schedule spans ``total`` steps."""
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        if step >= total:
            return self.min_lr_ratio
        return self.decay(step, total)

    def decay(self, step: int, total: int) -> float:
        """The multiple between the end of warmup and ``total`` (``warmup_steps <= step < total``)."""
        raise NotImplementedError

    def total_steps(self, max_steps: int) -> int:
        """The steps the schedule spans: ``decay_steps`` if set, else the trainer's max_steps.

        Raises if the schedule is longer than the run (it would never finish decaying). A warmup longer
        than the run is allowed: a two-step smoke test of a recipe runs inside its warmup.
        """
        total = self.decay_steps if self.decay_steps is not None else max_steps
        if max_steps > 0 and total > max_steps:
            raise GPT2KitError(
                f"{type(self).__name__} decay_steps={total} is longer than trainer.max_steps={max_steps}: "
                "the LR would never finish decaying; lower decay_steps or leave it unset to follow max_steps"
            )
        return total

    def lambda_for(self, max_steps: int) -> Callable[[int], float]:
        """A ``LambdaLR`` function for a run of ``max_steps`` optimizer steps."""
        # A partial, not an object with attributes: LambdaLR's state_dict stores a callable object's
        # __dict__, and a checkpoint must hold only tensors and plain values (weights_only loading).
        return functools.partial(self.factor, total=self.total_steps(max_steps))


SCHEDULE = add_kind("schedule", Schedule)


def _warmup(step: int, warmup: int) -> float:
    return (step + 1) / (warmup + 1)  # never 0: the first step already moves the weights


@SCHEDULE.register("warmup_cosine")
class WarmupCosine(Schedule):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` × the peak LR (GPT-2, nanoGPT)."""

    def __init__(
        self, warmup_steps: int = 100, min_lr_ratio: float = 0.1, decay_steps: int | None = None
    ) -> None:
        """
        Args:
            warmup_steps: optimizer steps of linear warmup from 0.
            min_lr_ratio: the LR at the end of the decay (and after it), as a multiple of the peak LR.
            decay_steps: the step at which the cosine reaches its minimum; None: the trainer's max_steps.
        """
        super().__init__(warmup_steps, min_lr_ratio, decay_steps)

    def decay(self, step: int, total: int) -> float:
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return self.min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_lr_ratio)


@SCHEDULE.register("warmup_stable_decay")
class WarmupStableDecay(Schedule):
    """Warmup, a constant peak LR, then a linear cooldown over the last ``cooldown_fraction`` of the run (WSD)."""

    def __init__(
        self,
        warmup_steps: int = 100,
        cooldown_fraction: float = 0.2,
        min_lr_ratio: float = 0.0,
        decay_steps: int | None = None,
    ) -> None:
        """
        Args:
            warmup_steps: optimizer steps of linear warmup from 0.
            cooldown_fraction: share of the run, at its end, over which the LR falls linearly; in [0, 1].
            min_lr_ratio: the LR at the end of the cooldown, as a multiple of the peak LR.
            decay_steps: the step at which the cooldown ends; None: the trainer's max_steps.
        """
        super().__init__(warmup_steps, min_lr_ratio, decay_steps)
        if not 0.0 <= cooldown_fraction <= 1.0:
            raise GPT2KitError(
                f"WarmupStableDecay cooldown_fraction={cooldown_fraction} must be in [0, 1] "
                "(the share of the run spent cooling down, e.g. 0.2)"
            )
        self.cooldown_fraction = cooldown_fraction

    def decay(self, step: int, total: int) -> float:
        cooldown = self.cooldown_fraction * total
        left = total - step  # steps to the end of the run
        if left >= cooldown:
            return 1.0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * left / cooldown


@SCHEDULE.register("linear")
class Linear(Schedule):
    """Linear warmup, then a straight line down to ``min_lr_ratio`` × the peak LR at the end of the run."""

    def __init__(
        self, warmup_steps: int = 100, min_lr_ratio: float = 0.0, decay_steps: int | None = None
    ) -> None:
        """
        Args:
            warmup_steps: optimizer steps of linear warmup from 0.
            min_lr_ratio: the LR at the end of the decay, as a multiple of the peak LR.
            decay_steps: the step at which the line reaches its minimum; None: the trainer's max_steps.
        """
        super().__init__(warmup_steps, min_lr_ratio, decay_steps)

    def decay(self, step: int, total: int) -> float:
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return 1.0 - (1.0 - self.min_lr_ratio) * progress


@SCHEDULE.register("constant")
class Constant(Schedule):
    """The peak LR throughout, after an optional linear warmup."""

    def __init__(self, warmup_steps: int = 0) -> None:
        """
        Args:
            warmup_steps: optimizer steps of linear warmup from 0.
        """
        super().__init__(warmup_steps)

    min_lr_ratio = 1.0  # the peak LR after the warmup, and after the end

    def decay(self, step: int, total: int) -> float:
        return 1.0
