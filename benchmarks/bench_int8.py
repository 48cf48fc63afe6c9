"""Accuracy of int8 decoding (``generate --dtype int8``) on trained checkpoints.

    python benchmarks/bench_int8.py [--ckpt runs/shakespeare-char/checkpoints/last.ckpt --source tinyshakespeare]

Evaluates the checkpoint on its corpus's validation windows three ways: float32, bfloat16 weights,
and the int8 copy made by :func:`gpt2kit.quantize.quantize_int8`. Reports each val loss, and
how often the int8 model's most likely next token equals the float32 model's (over every validation
position). The speed side is in ``bench_generate.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2kit.checkpoint import load_module
from gpt2kit.data import TextDataModule
from gpt2kit.quantize import quantize_int8
from gpt2kit.tokenizers import CheckpointTokenizer

DEFAULT_CKPT = "runs/shakespeare-char/checkpoints/last.ckpt"


@torch.inference_mode()
def evaluate(model, batches) -> tuple[float, list[torch.Tensor]]:
    """(mean cross-entropy, argmax tokens per batch)."""
    total = count = 0.0
    tops = []
    for x, y in batches:
        logits = model(x).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
        tops.append(logits.argmax(-1))
    return total / count, tops


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
    fp32, top32 = evaluate(model, batches)
    int8, top8 = evaluate(quantize_int8(model), batches)
    agree = sum((a == b).sum().item() for a, b in zip(top32, top8, strict=True)) / tokens
    bf16, _ = evaluate(model.to(torch.bfloat16), batches)
    print("| weights | val loss | vs float32 |\n|---|---|---|")
    for name, loss in (("float32", fp32), ("bfloat16", bf16), ("int8", int8)):
        print(f"| {name} | {loss:.4f} | {loss - fp32:+.4f} |")
    print(f"\nint8 picks float32's most likely next token at {agree:.1%} of positions")


if __name__ == "__main__":
    main()
