"""DDP through Lightning's own strategy, on CPU (gloo): 2 processes follow the single-process loss curve."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from conftest import RECIPES

from gpt2kit.commands import lightning_main

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
RUN = [
    "--config", SHAKESPEARE, "--config", "callbacks.yaml",
    "--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", "--model.arch.block_size=32",
    "--model.schedule.init_args.warmup_steps=2", "--model.schedule.init_args.decay_steps=6",  # the same schedule whatever max_steps
    "--trainer.max_steps=6", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--data.init_args.val_max_windows=25",  # odd: one rank's shard is padded, and still every window counts once
]  # fmt: skip
DDP = [
    "--trainer.strategy=ddp",
    "--trainer.devices=2",
    "--trainer.accelerator=cpu",
    "--data.init_args.batch_size=6",
]
CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: runs/shakespeare-char/checkpoints, monitor: val_loss, save_top_k: -1, filename: "{step}"}
    - class_path: gpt2kit.training.resume.LastCheckpoint
      init_args: {dirpath: runs/shakespeare-char/checkpoints}
"""


def _curve(run_dir, version: int = 0) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} from a run's metrics.csv (Lightning logs rank 0 only)."""
    out: dict[str, dict[int, float]] = {"train_loss": {}, "val_loss": {}}
    with open(run_dir / f"runs/shakespeare-char/logs/version_{version}/metrics.csv") as f:
        for row in csv.DictReader(f):
            for key in out:
                if row.get(key):
                    out[key][int(row["step"])] = float(row[key])
    return out


def _ddp(run_dir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "fit", *RUN, *DDP, *args],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def _close(a: dict[int, float], b: dict[int, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)


@pytest.mark.slow
def test_ddp_two_processes_match_one_and_resume(tmp_path, monkeypatch):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    for d in (single, ddp):
        d.mkdir()
        (d / "callbacks.yaml").write_text(CALLBACKS)

    monkeypatch.chdir(single)
    _in_process(["fit", *RUN, "--data.init_args.batch_size=12"])  # one process, the same global batch
    _ddp(ddp)

    one, two = _curve(single), _curve(ddp)
    assert len(one["train_loss"]) == 6 and sorted(one["val_loss"]) == [2, 5]
    assert _close(one["train_loss"], two["train_loss"]), (one, two)  # same windows, averaged gradients
    assert _close(one["val_loss"], two["val_loss"]), (one, two)  # the whole validation set, each window once

    # Saved once (rank 0), not once per rank: no last-v1.ckpt, no leftovers, one log.
    ckpts = ddp / "runs/shakespeare-char/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]
    assert len(list((ddp / "runs/shakespeare-char/logs").iterdir())) == 1

    # The 2-process checkpoint of step 3 (saved mid-epoch, at validation) resumes, here in one process with
    # the same global batch (a third process start would double the test's time): steps 4-6 again.
    monkeypatch.chdir(ddp)
    _in_process(["fit", *RUN, "--data.init_args.batch_size=12", "--ckpt_path", str(ckpts / "step=3.ckpt")])
    resumed = _curve(ddp, version=1)
    assert sorted(resumed["train_loss"]) == [3, 4, 5]
    assert _close(resumed["train_loss"], {s: two["train_loss"][s] for s in (3, 4, 5)}), (two, resumed)
    assert _close(resumed["val_loss"], {5: two["val_loss"][5]})


def _in_process(args: list[str]) -> None:
    lightning_main(args)
