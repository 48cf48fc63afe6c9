"""benchmarks/bench_shakespeare.py --nanogpt: runs a checkout's train.py and evaluates its ckpt.pt like gpt2kit's.

nanoGPT itself is not here: a fake checkout's train.py writes a checkpoint in nanoGPT's format (its
``model_args`` and ``model`` state dict, ``transformer.h.N...`` names, torch.compile's ``_orig_mod.``
prefix, the causal-mask buffer), with weights whose loss is known: uniform logits, ln(vocab).
"""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_shakespeare.py"

FAKE_TRAIN = textwrap.dedent("""
    import json, sys, torch
    args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
    json.dump({"config": sys.argv[1], **args}, open("args.json", "w"))
    L, C, V = 2, 8, 65
    sd = {"_orig_mod.transformer.wte.weight": torch.zeros(V, C), "_orig_mod.transformer.wpe.weight": torch.randn(64, C),
          "_orig_mod.transformer.ln_f.weight": torch.ones(C), "_orig_mod.lm_head.weight": torch.zeros(V, C)}
    for i in range(L):
        p = f"_orig_mod.transformer.h.{i}."
        sd.update({p + "ln_1.weight": torch.ones(C), p + "ln_2.weight": torch.ones(C),
                   p + "attn.c_attn.weight": torch.randn(3 * C, C), p + "attn.c_proj.weight": torch.randn(C, C),
                   p + "attn.bias": torch.ones(1, 1, 64, 64).tril(), p + "mlp.c_fc.weight": torch.randn(4 * C, C),
                   p + "mlp.c_proj.weight": torch.randn(C, 4 * C)})
    model_args = dict(n_layer=L, n_head=2, n_embd=C, block_size=64, bias=False, vocab_size=V, dropout=0.0)
    torch.save({"model": sd, "model_args": model_args, "iter_num": int(args["max_iters"]), "best_val_loss": 9.0,
                "config": args}, args["out_dir"] + "/ckpt.pt")
""")
FAKE_PREPARE = (
    "open('val.bin', 'wb').write(b'')\nopen('prepared', 'w').write(open('input.txt').read()[:20])\n"
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_shakespeare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nanogpt_checkout_is_run_and_its_checkpoint_evaluated_on_the_full_validation(tmp_path):
    bench = _bench()
    checkout = tmp_path / "nanoGPT"
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    (checkout / "train.py").write_text(FAKE_TRAIN)
    (checkout / "data" / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    loss, wall = bench.run_nanogpt(checkout, seed=7, max_steps=3)
    assert loss == pytest.approx(
        math.log(65), abs=1e-5
    )  # zero embeddings and head: uniform over 65 characters
    args = json.loads((checkout / "args.json").read_text())
    assert args["config"] == "config/train_shakespeare_char.py" and args["device"] == "cpu"
    assert (args["max_iters"], args["lr_decay_iters"]) == ("3", "3")
    assert (
        "seed" not in args
    )  # nanoGPT's configurator refuses keys train.py lacks; train.py seeds 1337 itself
    assert args["always_save_checkpoint"] == "True" and args["n_layer"] == "4" and args["block_size"] == "64"
    text = bench.shakespeare_text()
    assert (checkout / "data" / "shakespeare_char" / "prepared").read_text() == text[:20]  # the same text


def test_nanogpt_names_map_onto_gpt2kit_and_windows_are_gpt2kits():
    bench = _bench()
    mapped = bench.state_from_nanogpt(
        {"_orig_mod.transformer.h.0.attn.c_attn.weight": 1, "transformer.wpe.weight": 2, "transformer.h.1.attn.bias": 3,
         "lm_head.weight": 4, "transformer.ln_f.weight": 5}
    )  # fmt: skip
    assert mapped == {"blocks.0.attn.c_attn.weight": 1, "position.wpe.weight": 2, "ln_f.weight": 5}
    text = bench.shakespeare_text()
    val = bench.nanogpt_val_tokens(text)
    assert len(val) == len(text) - int(len(text) * 0.9)
    assert (
        len(range(0, len(val) - 64, 64)) == 1742
    )  # every non-overlapping 64-token window, as issue 16 counts
    assert torch.tensor(val[:3].astype("int64")).tolist() == [
        sorted(set(text)).index(c) for c in text[int(len(text) * 0.9) :][:3]
    ]
