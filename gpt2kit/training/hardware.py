"""The Trainer's hardware flags checked before Lightning sees them: one line naming the bad value and the fix.

``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision`` are plain Lightning Trainer
flags (any recipe runs on a laptop CPU, a GPU or many nodes by changing them); this module only turns
the ways they can be wrong into :class:`~gpt2kit.errors.GPT2KitError` s:

* more devices than the machine has (CPU: cores this process may use; CUDA: visible GPUs);
* a strategy name Lightning does not know (the close names are suggested);
* ``bf16`` precision where the device has no native bfloat16 arithmetic: **refused**, not silently
  emulated (CUDA before Ampere: use ``16-mixed``; an x86 CPU without AVX512-BF16 or AMX: use
  ``32-true``, bf16 would be slower than fp32 there). ``16-mixed`` on a CPU is Lightning's business:
  it warns and uses ``bf16-mixed``.
"""

from __future__ import annotations

import difflib
import os
import platform
from typing import Any

import torch

from gpt2kit.errors import GPT2KitError


def _kind(accelerator: Any) -> str:
    """The device type an accelerator flag resolves to: cpu, cuda, mps, or another name Lightning knows."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    name = name.lower()
    if name in ("auto", "none"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name in ("gpu", "cuda", "cudaaccelerator"):
        return "cuda"
    if name.startswith("cpu"):
        return "cpu"
    if name.startswith("mps"):
        return "mps"
    return name


def available_devices(kind: str) -> int | None:
    """How many devices of a kind this process can use (None: unknown, not checked)."""
    if kind == "cpu":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if kind == "cuda":
        return torch.cuda.device_count()
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    return None


def native_bf16(kind: str) -> bool:
    """Whether the device does bfloat16 arithmetic in hardware (not emulated through fp32)."""
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind == "cpu" and platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return True  # ARM CPUs, MPS: torch picks a bf16 path where there is one; not second-guessed


def _requested(devices: Any) -> tuple[int | None, int | None]:
    """(number of devices, highest index named) for a devices flag; None where it asks for "all"/"auto"."""
    if isinstance(devices, str):
        devices = devices.strip()
        if devices in ("auto", "-1"):
            return None, None
        if "," in devices:
            devices = [int(d) for d in devices.split(",") if d.strip()]
        elif devices.isdigit():
            devices = int(devices)
        else:
            return None, None
    if isinstance(devices, int):
        return (None, None) if devices == -1 else (devices, None)
    if isinstance(devices, list | tuple):
        return len(devices), max(devices, default=None)
    return None, None


def check_trainer_flags(
    accelerator: Any = "auto", devices: Any = "auto", strategy: Any = "auto", precision: Any = None
) -> None:
    """Raise a one-line :class:`GPT2KitError` for flags that cannot work on this machine."""
    if isinstance(strategy, str) and strategy.lower() != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        known = ["auto", *StrategyRegistry.available_strategies()]
        if strategy.lower() not in known:
            close = difflib.get_close_matches(strategy.lower(), known, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise GPT2KitError(
                f"unknown trainer.strategy '{strategy}': {hint}Lightning's strategies include "
                "auto, ddp, ddp_spawn, fsdp, deepspeed (or a class_path to a Strategy)"
            )
    kind = _kind(accelerator)
    have = available_devices(kind)
    count, highest = _requested(devices)
    unit = {"cpu": "CPU cores", "cuda": "CUDA GPUs", "mps": "MPS devices"}.get(kind, f"{kind} devices")
    if have is not None and count is not None and count > have:
        raise GPT2KitError(
            f"trainer.devices={devices} but this machine has {have} {unit}: lower --trainer.devices "
            f"(at most {have}; -1 takes all), or add machines with --trainer.num_nodes"
        )
    if have is not None and highest is not None and highest >= have:
        raise GPT2KitError(
            f"trainer.devices={devices} names device {highest}, but this machine has {have} {unit} "
            f"(0..{have - 1}): pick indices that exist"
        )
    if precision is not None and str(precision).startswith("bf16") and have != 0 and not native_bf16(kind):
        fix = "--trainer.precision 16-mixed" if kind == "cuda" else "--trainer.precision 32-true"
        what = (
            f"{torch.cuda.get_device_name()} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
            if kind == "cuda" and torch.cuda.is_available()
            else f"this {kind.upper()} ({platform.processor() or platform.machine()})"
        )
        raise GPT2KitError(
            f"trainer.precision={precision} needs native bfloat16 arithmetic, which {what} lacks: use {fix}"
        )
