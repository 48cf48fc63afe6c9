"""Accuracy of int8 decoding (``generate --dtype int8``) on trained checkpoints.

    python benchmarks/bench_int8.py [--ckpt runs/shakespeare-char/checkpoints/last.ckpt --source tinyshakespeare]

Evaluates the checkpoint on its corpus's validation windows: float32, bfloat16 weights, and the int8
copies made by :func:`gpt2kit.decoding.int8.quantize_int8` with each kernel: ``weight_only`` (float
activations), ``dynamic`` (FBGEMM, 8-bit activations on a CPU with VNNI) and ``dynamic`` with
7-bit activations, which is what FBGEMM does on an x86 CPU without VNNI (forced here, so a VNNI machine
shows the other kind's accuracy too). Reports each val loss and its increase over float32, the logits'
relative error (||int8 - float32|| / ||float32||, the measure tests/test_quantize.py bounds), and how
often the most likely next token equals float32's (over every validation position). The speed side is
in ``bench_generate.py``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2kit.checkpoint import load_module
from gpt2kit.data import TextDataModule
from gpt2kit.decoding.int8 import Int8Linear, cpu_has_vnni, quantize_int8, resolve_kernel
from gpt2kit.tokenizers import CheckpointTokenizer

DEFAULT_CKPT = "runs/shakespeare-char/checkpoints/last.ckpt"


@torch.inference_mode()
def evaluate(model, batches) -> tuple[float, list[torch.Tensor]]:
    """(mean cross-entropy, logits per batch)."""
    total = count = 0.0
    outs = []
    for x, y in batches:
        logits = model(x).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
        outs.append(logits)
    return total / count, outs


def seven_bit(model):
    """The ``dynamic`` int8 copy as FBGEMM runs it on a CPU without VNNI: activations rounded to 7 bits."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m._reduce_range = True  # what quantize.py sets when /proc/cpuinfo has no VNNI
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=DEFAULT_CKPT, help="default: the Shakespeare recipe's checkpoint")
    parser.add_argument(
        "--source", default="tinyshakespeare", help="the corpus the checkpoint was trained on"
    )
    parser.add_argument("--max_batches", type=int, default=50)
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():  # `nox -s bench` runs every script without arguments
        print(
            f"bench_int8: skipped, no checkpoint at {args.ckpt} (train the recipe or pass --ckpt and --source)"
        )
        return
    module = load_module(args.ckpt).eval()
    model = module.model
    block = model.config.block_size
    data = TextDataModule(
        args.source, tokenizer=CheckpointTokenizer(args.ckpt), block_size=block, batch_size=16
    )
    data.prepare_data()
    data.setup("validate")
    batches = [b[:2] for _, b in zip(range(args.max_batches), data.val_dataloader(), strict=False)]
    tokens = sum(y.numel() for _, y in batches)
    print(f"{args.ckpt}: {model.num_params() / 1e6:.1f}M parameters, {tokens} validation tokens")
    fp32, ref = evaluate(model, batches)
    rows = [("float32", fp32, ref)]
    rows.append(("int8 weight_only", *evaluate(quantize_int8(model, "weight_only"), batches)))
    vnni = "VNNI" if cpu_has_vnni() else "no VNNI: 7-bit"
    rows.append((f"int8 dynamic (this CPU: {vnni})", *evaluate(quantize_int8(model, "dynamic"), batches)))
    rows.append(
        (
            "int8 dynamic, 7-bit (a CPU without VNNI)",
            *evaluate(seven_bit(quantize_int8(model, "dynamic")), batches),
        )
    )
    rows.append(("bfloat16", *evaluate(copy.deepcopy(model).to(torch.bfloat16), batches)))
    print(f"--dtype int8 (kernel auto) runs int8 {resolve_kernel('auto')} on this CPU")
    print("| weights | val loss | vs float32 | logit error | top token = float32's |\n|---|---|---|---|---|")
    for name, loss, outs in rows:
        err = torch.cat([(o - r).flatten() for o, r in zip(outs, ref, strict=True)]).norm()
        err = (err / torch.cat([r.flatten() for r in ref]).norm()).item()
        agree = (
            sum((o.argmax(-1) == r.argmax(-1)).sum().item() for o, r in zip(outs, ref, strict=True)) / tokens
        )
        print(f"| {name} | {loss:.4f} | {loss - fp32:+.4f} | {err:.2%} | {agree:.1%} |")


if __name__ == "__main__":
    main()
