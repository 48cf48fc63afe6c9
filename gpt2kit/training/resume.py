"""What a run needs to continue exactly where it died: whole checkpoint files, RNG state, a model that fits.

* :class:`LastCheckpoint` keeps ``last.ckpt`` current: every N optimizer steps and when training ends.
  ``fit --ckpt_path last`` resumes from it (the newest ``last*.ckpt``), and on a first run, when there
  is none yet, starts from scratch with a warning: pass it always, and a restarted job continues.
* :class:`AtomicCheckpointIO` writes every checkpoint to a hidden temporary file beside its destination,
  fsyncs it and renames it into place, so ``last.ckpt`` is always either the previous complete file or
  the new complete file, whenever the process is killed. (Lightning's own writer stages the file in the
  system temp folder and *moves* it, which is a copy onto the destination when that folder is on another
  filesystem, as /tmp and a network checkpoint folder usually are.) The CLI installs it; with the
  Python API pass ``Trainer(plugins=[AtomicCheckpointIO()])``.
* :func:`rng_state` / :func:`set_rng_state`: the Python, NumPy, torch (and CUDA) generators as plain
  tensors and numbers, so the checkpoint still loads with ``torch.load(weights_only=True)``.
* :func:`architecture_mismatch`: the differences between the model a checkpoint was trained with and the
  model it is being loaded into, listed for a one-line error.

The data order is resumed by the training sampler (:mod:`gpt2kit.data.sampler`), from a position counted
in windows, so also on another number of processes; the model, optimizer, LR schedule and loop counters
by Lightning itself.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt2kit.model import SLOTS
from gpt2kit.spec import describe, normalized


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten every ``every_n_train_steps`` optimizer steps and when training ends.

    The file to resume from; it keeps no other checkpoint (pair it with a ``ModelCheckpoint`` that
    monitors ``val_loss`` to keep the best). Lightning's own ``save_last`` does not save at the end of
    training once it has saved during it, which leaves ``last.ckpt`` behind the final weights.
    """

    def __init__(self, dirpath: _PATH | None = None, every_n_train_steps: int = 100) -> None:
        """
        Args:
            dirpath: folder of ``last.ckpt`` (default: the logger's checkpoints folder).
            every_n_train_steps: optimizer steps between saves: the most work a crash can lose.
        """
        super().__init__(
            dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe for local paths: temp file, fsync, rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote stores: Lightning's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Hidden, and not ending in .ckpt: never listed as a checkpoint, nor taken for the newest "last".
        tmp = path.with_name(f".{path.name}.partial")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX within one filesystem
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # the rename itself survives a power loss


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- random number generators ---------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors, ints and tuples (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (a process without CUDA ignores the CUDA states)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- does a checkpoint fit this model? ---------------------------------------------------------------------------
ARCHITECTURE_KEYS = SLOTS
"""Constructor arguments of GPTLitModule that define the weights (with ``arch``, less its dropout)."""


def architecture_mismatch(
    saved: dict[str, Any],
    current: dict[str, Any],
    saved_state: dict[str, Any] | None = None,
    current_state: Callable[[], dict[str, Any]] | None = None,
) -> list[str]:
    """Differences that make a checkpoint's weights unusable for a model: sizes, components, tensor shapes.

    ``saved`` / ``current`` are hyperparameters (recipe-style specs, see :mod:`gpt2kit.spec`);
    when they agree, the tensor shapes of ``saved_state`` are compared with those of ``current_state()``
    (called only then; None skips it, e.g. for sharded models). Returns ``"name: checkpoint X, here Y"``
    items; empty when the weights fit.
    """
    problems = []
    saved_arch, current_arch = saved.get("arch") or {}, current.get("arch") or {}
    for key in sorted(set(saved_arch) | set(current_arch)):
        if key != "dropout" and saved_arch.get(key) != current_arch.get(key):
            problems.append(f"arch.{key}: checkpoint {saved_arch.get(key)}, here {current_arch.get(key)}")
    for key in ARCHITECTURE_KEYS:
        if key in saved and key in current and normalized(saved[key]) != normalized(current[key]):
            problems.append(f"{key}: checkpoint {describe(saved[key])}, here {describe(current[key])}")
    if not problems and saved_state is not None and current_state is not None:
        here = current_state()  # same recipe, yet the tensors may differ (e.g. a plugin changed): name them
        for name in sorted(set(saved_state) | set(here)):
            a, b = saved_state.get(name), here.get(name)
            if a is None or b is None:
                problems.append(
                    f"{name}: {'missing from the checkpoint' if a is None else 'not in this model'}"
                )
            elif tuple(a.shape) != tuple(b.shape):
                problems.append(f"{name}: checkpoint {tuple(a.shape)}, here {tuple(b.shape)}")
    return problems
