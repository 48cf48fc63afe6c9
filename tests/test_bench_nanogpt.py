"""benchmarks/bench_shakespeare.py --nanogpt: runs a checkout's train.py and evaluates its ckpt.pt like gpt2kit's.

nanoGPT itself is not here: a fake checkout's train.py writes a checkpoint in nanoGPT's format (its
``model_args`` and ``model`` state dict, ``transformer.h.N...`` names, torch.compile's ``_orig_mod.``
prefix, the causal-mask buffer), with weights whose loss is known: uniform logits, ln(vocab); and it
prints its iterations as nanoGPT's train.py does (``iter N: loss X, time Y ms, mfu Z%``), with known times.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import textwrap
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_shakespeare.py"

ITER_MS = [900.0] * 10 + [50.0, 40.0, 60.0, 45.0, 55.0]  # 10 slow warm-up iterations, then steady ones
FAKE_TRAIN = textwrap.dedent(f"""
    import json, sys, torch
    print("step 0: train loss 4.2000, val loss 4.2000")  # nanoGPT's evaluation line: not an iteration
    for i, ms in enumerate({ITER_MS}):
        print(f"iter {{i}}: loss {{4.17 - i / 100:.4f}}, time {{ms:.2f}}ms, mfu -100.00%")
    print("iter 15: loss nan, time 52.00ms, mfu 0.01%")  # a non-finite loss is still a timed iteration
""") + textwrap.dedent("""
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
    loss, wall, seconds, threads = bench.run_nanogpt(checkout, seed=7, max_steps=3, threads=1)
    assert seconds == pytest.approx([ms / 1000 for ms in [*ITER_MS, 52.0]])  # every iteration, in order
    assert threads == 1  # --threads reaches train.py's process (OMP_NUM_THREADS), and is read from it
    assert bench.median_ms(seconds) == pytest.approx(
        statistics.median([50, 40, 60, 45, 55, 52])
    )  # warm-up out
    assert loss == pytest.approx(
        math.log(65), abs=1e-5
    )  # zero embeddings and head: uniform over 65 characters
    args = json.loads((checkout / "args.json").read_text())
    assert args["config"] == "config/train_shakespeare_char.py" and args["device"] == "cpu"
    assert (args["max_iters"], args["lr_decay_iters"], args["eval_interval"]) == ("3", "3", "3")  # saves at 3
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


def test_gpt2kit_step_times_are_the_intervals_between_batch_ends(tmp_path):
    """StepTimes (given to gpt2kit's fit) takes nanoGPT's dt: from one optimizer step's end to the next."""
    bench = _bench()
    clock = iter([10.0, 10.5, 11.25, 11.5])
    timer = bench.StepTimes(str(tmp_path / "times.json"))
    timer.clock = lambda: next(clock)
    for _ in range(4):
        timer.on_train_batch_end(None, None, None, None, 0)
    timer.on_train_end(None, None)
    written = json.loads((tmp_path / "times.json").read_text())
    assert written == {"threads": torch.get_num_threads(), "seconds": [0.5, 0.75, 0.25]}
    assert bench.median_ms(list(range(20)), warmup=10) == 1000 * 14.5  # steps 10..19
    assert bench.median_ms([3.0, 1.0, 2.0], warmup=10) == 2000  # too few steps: all of them
    env = bench.child_env(threads=None)
    assert env["PYTHONPATH"].split(":")[0] == str(bench.BENCH_DIR)  # bench_shakespeare.StepTimes importable
