"""Int8 weights for decoding on the CPU.

Decoding one sequence multiplies every weight matrix by a single vector, so its speed is the speed at
which the CPU streams the weights. :func:`quantize_int8` returns a copy of a model for decoding whose
linear layers hold int8 weights (one scale per output row), a quarter of float32's bytes.

Two kernels compute those layers (``quantize_int8(model, kernel=...)``; the default ``"auto"`` takes
``"dynamic"`` on a CPU with VNNI, where it is both the faster and accurate, and ``"weight_only"`` on any
other CPU, where FBGEMM would round the activations to 7 bits):

* ``"weight_only"``: the activations stay in floating point (bfloat16, rounded from
  float32: 8 significant bits, float32's range) and each int8 weight is scaled back in the product,
  accumulated in float32 (PyTorch's ``aten._weight_int8pack_mm``, vectorised for AVX-512, AVX2, Arm
  and plain C++). Its error is the weights' rounding alone, the same on every CPU; it is slower than
  FBGEMM's kernel (about 1.5-3x per matrix-vector product, measured on an AVX-512 CPU).
* ``"dynamic"``: PyTorch's x86 dynamic quantization kernel (FBGEMM's ``quantized::linear_dynamic``):
  the activations are rounded to 8 bits on the fly too and the products accumulated in int32. On a CPU
  without VNNI (AVX512-VNNI or AVX-VNNI) FBGEMM's int8 products pass through saturating int16 sums, so
  its activations get 7 bits, and GPT-2's outlier activations then cost several percent of the logits
  (``docs/generation.md`` has the figures).

Every ``nn.Linear`` of the model is replaced, whatever component it belongs to (plugins included;
LoRA layers with their update merged), and so is the tied LM head, which reads the token embedding.
The copy shares every other parameter with the original (embeddings, norms, position tables), so it
costs about a quarter of the model's memory, and the original is left as it was. The cost is
accuracy: each product is off by well under 1%, so the loss rises slightly, and greedy samples can
part from float32's after a while.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune.lora import LoRALinear
from gpt2kit.model import GPT
from gpt2kit.nn.heads import TiedLMHead

Kernel = Literal["auto", "weight_only", "dynamic"]
"""How an int8 layer multiplies: float activations × int8 weights, FBGEMM's int8 × int8, or ``auto``."""


@functools.cache
def cpu_has_vnni() -> bool:
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
    """Refuse a PyTorch build whose quantized ``engines`` lack FBGEMM (the ``"dynamic"`` kernel's)."""
    if "x86" in engines or "fbgemm" in engines:
        return
    raise GPT2KitError(
        f"int8 decoding with kernel='dynamic' needs PyTorch's x86 quantized engine (FBGEMM), and this build "
        f"has {engines}: use kernel='weight_only' (any CPU), or bfloat16 weights (--dtype bfloat16)"
    )


def resolve_kernel(kernel: Kernel) -> str:
    """``auto`` → ``dynamic`` on a CPU with VNNI (fast and accurate there), ``weight_only`` elsewhere."""
    if kernel not in ("auto", "weight_only", "dynamic"):
        raise GPT2KitError(f"int8 kernel {kernel!r} is not one of auto, weight_only, dynamic")
    if kernel == "auto":
        vnni = cpu_has_vnni() and {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)
        return "dynamic" if vnni else "weight_only"
    return kernel


def _round_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight, bfloat16 scale per row): symmetric, ``weight ≈ q * scale[:, None]``."""
    w = weight.detach().float()
    # The scale is rounded to bfloat16 first (the kernel's dtype) and the weights divided by that very
    # scale, so the rounding of the scale costs nothing; a row rounded up past 127 is clamped at 128.
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).bfloat16()
    q = torch.round(w / scale.float()[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer computed from an int8 copy of its weight (for inference only)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, kernel: Kernel = "auto") -> None:
        """
        Args:
            weight: the float weight (out_features, in_features) to quantize, one scale per row.
            bias: the float bias, kept in float.
            kernel: "weight_only" (float activations), "dynamic" (FBGEMM, int8 activations) or "auto"
                (dynamic with VNNI, else weight_only); see the module's documentation.
        """
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel = resolve_kernel(kernel)
        b = None if bias is None else bias.detach().float()
        if kernel == "dynamic":
            check_engine(torch.backends.quantized.supported_engines)
            w = weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            with warnings.catch_warnings():
                # qint8 tensors are deprecated as a user-facing dtype; they are how FBGEMM's packing takes weights
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
                q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack.default(q, b)
            self._reduce_range = not cpu_has_vnni()
            return
        q, scale = _round_rows(weight)
        # The kernel reads the inner dimension 16 values at a time: pad it (zeros add nothing).
        self._pad = -self.in_features % 16
        self.register_buffer("weight_int8", F.pad(q, (0, self._pad)), persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("bias", b, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == "dynamic":
            y = torch.ops.quantized.linear_dynamic.default(x.float(), self._packed, self._reduce_range)
            return y if y.dtype == x.dtype else y.to(x.dtype)
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (B*T, in)
        if self._pad:
            rows = F.pad(rows, (0, self._pad))
        # torch >= 2.3 (tested up to 2.13): int8 (out, in) weights, a scale per out row, bfloat16 rows in
        # and out, float32 sums. An aten op without a public Python name; torchao's int8 weight-only
        # quantization calls the same one.
        y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight_int8, self.scale)
        y = y.to(x.dtype if x.dtype.is_floating_point else torch.float32)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.kernel})"


class Int8TiedLMHead(nn.Module):
    """:class:`~gpt2kit.nn.heads.TiedLMHead` from an int8 copy of the token embedding."""

    def __init__(self, wte: nn.Embedding, kernel: Kernel = "auto") -> None:
        super().__init__()
        self.proj = Int8Linear(wte.weight, kernel=kernel)

    def forward(self, h: Tensor, wte: nn.Embedding, valid: Tensor | None = None) -> Tensor:
        return self.proj(h)  # (B, T, vocab)


def quantize_int8(model: GPT, kernel: Kernel = "auto") -> GPT:
    """A copy of ``model`` for decoding on the CPU, with int8 linear layers; ``model`` is unchanged.

    The copy shares the model's other parameters, so it sees in-place changes to them, but its int8
    weights are a snapshot: quantize again after training further. It is for inference only (its
    int8 weights are not in its ``state_dict``): save and train the original. ``kernel``: see the
    module's documentation ("auto": FBGEMM's with VNNI, else the weight-only one: accurate on every CPU).
    """
    kernel = resolve_kernel(kernel)
    if kernel == "dynamic":
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
                setattr(module, name, Int8Linear(child.weight, child.bias, kernel))
    if type(quantized.head) is TiedLMHead:
        quantized.head = Int8TiedLMHead(quantized.wte, kernel)
    return quantized
