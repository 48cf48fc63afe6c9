"""Int8 weights for decoding on the CPU.

Decoding one sequence multiplies every weight matrix by a single vector, so its speed is the speed at
which the CPU streams the weights. :func:`quantize_int8` returns a copy of a model for decoding whose
linear layers hold int8 weights (one scale per output row) and run on PyTorch's x86 dynamic
quantization kernel (FBGEMM's ``quantized::linear_dynamic``: the input is quantized to 8 bits on the
fly, products are accumulated in int32, and the output is float). That reads a quarter of the bytes
of float32, and runs near the memory bandwidth, which PyTorch's bfloat16 matrix-vector kernel does
not on the CPU.

Every ``nn.Linear`` of the model is replaced, whatever component it belongs to (plugins included;
LoRA layers with their update merged), and so is the tied LM head, which reads the token embedding.
The copy shares every other parameter with the original (embeddings, norms, position tables), so it
costs about a quarter of the model's memory, and the original is left as it was. The cost is
accuracy: each product is off by about 1%, so the loss rises slightly (``docs/generation.md`` has the
figures), and greedy samples can part from float32's after a while.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.lora import LoRALinear
from gpt2kit.model import GPT
from gpt2kit.nn.heads import TiedLMHead


@functools.cache
def _saturation_free() -> bool:
    """Whether this CPU has VNNI, whose int8 dot products accumulate in int32 without saturating.

    Without it, FBGEMM's int8 products pass through saturating int16 sums, so inputs are quantized
    to 7 bits instead of 8 (PyTorch's own dynamic Linear does the same).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def check_engine(engines: list[str]) -> None:
    """Refuse a PyTorch build whose quantized ``engines`` lack FBGEMM (the x86 int8 kernels)."""
    if "x86" in engines or "fbgemm" in engines:
        return
    raise GPT2KitError(
        f"int8 decoding needs PyTorch's x86 quantized engine (FBGEMM), and this build has {engines}: "
        "use bfloat16 weights instead (--dtype bfloat16)"
    )


class Int8Linear(nn.Module):
    """A linear layer computed from an int8 copy of its weight (for inference only)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """
        Args:
            weight: the float weight (out_features, in_features) to quantize, one scale per row.
            bias: the float bias, kept in float.
        """
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # qint8 tensors are deprecated as a user-facing dtype; they are how FBGEMM's packing takes weights
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        b = None if bias is None else bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack.default(q, b)
        self._reduce_range = not _saturation_free()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quantized.linear_dynamic.default(x.float(), self._packed, self._reduce_range)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8TiedLMHead(nn.Module):
    """:class:`~gpt2kit.nn.heads.TiedLMHead` from an int8 copy of the token embedding."""

    def __init__(self, wte: nn.Embedding) -> None:
        super().__init__()
        self.proj = Int8Linear(wte.weight)

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        return self.proj(h)  # (B, T, vocab)


def quantize_int8(model: GPT) -> GPT:
    """A copy of ``model`` for decoding on the CPU, with int8 linear layers; ``model`` is unchanged.

    The copy shares the model's other parameters, so it sees in-place changes to them, but its int8
    weights are a snapshot: quantize again after training further. It is for inference only (its
    int8 weights are not in its ``state_dict``): save and train the original.
    """
    check_engine(torch.backends.quantized.supported_engines)
    param = next(model.parameters())
    if param.device.type != "cpu" or not param.dtype.is_floating_point:
        raise GPT2KitError(
            f"int8 decoding runs on the CPU from float weights, and the model is {param.dtype} on "
            f"{param.device}: use --device cpu (on a GPU, use --dtype bfloat16)"
        )
    shared = {id(p): p for p in model.parameters()} | {id(b): b for b in model.buffers()}
    quantized = copy.deepcopy(model, memo=shared).eval()  # new modules around the same tensors
    for module in list(quantized.modules()):
        for name, child in module.named_children():
            if isinstance(child, LoRALinear):
                child = child.merged()  # the update folded into one matrix
            if type(child) is nn.Linear:  # a subclass may compute something else: left in float
                setattr(module, name, Int8Linear(child.weight, child.bias))
    if type(quantized.head) is TiedLMHead:
        quantized.head = Int8TiedLMHead(quantized.wte)
    return quantized
