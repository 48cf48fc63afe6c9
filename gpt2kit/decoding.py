"""A checkpoint made ready to decode: rebuilt on a device, with its weights in a dtype (or int8).

``generate``, ``chat`` and the applications built on them start here; the generation engine itself is
:mod:`gpt2kit.generate`, the int8 copy :mod:`gpt2kit.quantize`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt2kit.checkpoint import load_module
from gpt2kit.errors import GPT2KitError
from gpt2kit.interop.hub import resolve_checkpoint
from gpt2kit.quantize import quantize_int8

if TYPE_CHECKING:
    from gpt2kit.lit import GPTLitModule
    from gpt2kit.model import GPT


def load_for_decoding(ckpt: str, device: str, dtype: str) -> tuple[GPTLitModule, GPT]:
    """A checkpoint's module, and its model on ``device`` with weights in ``dtype`` (or int8) to decode with."""
    import torch

    module = load_module(resolve_checkpoint(ckpt), map_location=check_device(device))  # hf:NAME too
    if dtype == "int8":
        return module, quantize_int8(module.model)
    return module, module.to(getattr(torch, dtype)).model


def check_device(name: str) -> str:
    """``name``, if it is a torch device that is available here; else a one-line error with the fix."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise GPT2KitError(f"device={name!r} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPT2KitError(f"device={name!r} but CUDA is not available here: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device={name!r} but MPS is not available here: use --device cpu")
    return name
