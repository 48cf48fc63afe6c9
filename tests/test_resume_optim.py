"""Every optimizer x schedule resumes bit-identically; Muon + AdamW survives kill -9 and --ckpt_path last."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from conftest import RECIPES
from torch.utils.data import DataLoader, TensorDataset

from gpt2kit.commands import lightning_main
from gpt2kit.testing import tiny_config
from gpt2kit.training.lit import GPTLitModule
from gpt2kit.training.optim import Constant, GPT2AdamW, Linear, MuonAdamW, WarmupCosine, WarmupStableDecay

requires_muon = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="needs torch.optim.Muon (torch >= 2.9)"
)

SCHEDULES = {
    "cosine": WarmupCosine(warmup_steps=2, min_lr_ratio=0.1),
    "wsd": WarmupStableDecay(warmup_steps=1, cooldown_fraction=0.5),
    "linear": Linear(warmup_steps=1),
    "constant": Constant(warmup_steps=2),
}
OPTIMIZERS = {
    "adamw": functools.partial(GPT2AdamW, lr=3e-3),
    "muon": functools.partial(MuonAdamW, lr=0.02, adam_lr=3e-3, weight_decay=0.01),
}
CASES = [(o, s) for o in OPTIMIZERS for s in SCHEDULES] + [("sgd", "constant")]


class StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _fit(module, tmp_path, callbacks=(), ckpt_path=None):
    x = torch.randint(37, (12, 9), generator=torch.Generator().manual_seed(0))
    # One batch an epoch: wherever Lightning resumes in its epoch, the next batch is the same one.
    loader = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=12)
    trainer = L.Trainer(
        max_steps=6, gradient_clip_val=0.5, logger=False, enable_checkpointing=False, callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(("optimizer", "schedule"), CASES, ids=[f"{o}-{s}" for o, s in CASES])
def test_every_optimizer_and_schedule_resumes_bit_identically(tmp_path, optimizer, schedule):
    if optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("needs torch.optim.Muon")
    factory = OPTIMIZERS.get(optimizer, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))

    def make():
        torch.manual_seed(0)
        return GPTLitModule(tiny_config(), optimizer=factory, schedule=SCHEDULES[schedule])

    straight = make()
    _fit(straight, tmp_path / "a")
    first = make()
    trainer = _fit(first, tmp_path / "b", [StopAt(3)])
    assert trainer.global_step == 3
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    resumed = make()
    trainer = _fit(resumed, tmp_path / "c", ckpt_path=tmp_path / "step3.ckpt")
    assert trainer.global_step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- kill -9, then --ckpt_path last (as tests/test_resume.py, with Muon + AdamW and WSD) -------------------------

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
RUN = [
    "--config", SHAKESPEARE,
    "--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", "--model.arch.block_size=32",
    "--model.arch.dropout=0.1",
    "--model.optimizer=MuonAdamW", "--model.optimizer.init_args.lr=0.02", "--model.optimizer.init_args.weight_decay=0.01",
    "--model.schedule=WarmupStableDecay", "--model.schedule.init_args.warmup_steps=5",
    "--trainer.max_steps=80", "--trainer.limit_train_batches=16", "--trainer.val_check_interval=25",
    "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip
CALLBACKS = """
trainer:
  callbacks:
    - class_path: gpt2kit.training.resume.LastCheckpoint
      init_args: {dirpath: runs/shakespeare-char/checkpoints, every_n_train_steps: 10}
"""


@pytest.mark.slow
@requires_muon
def test_sigkill_then_resume_with_muon_is_bit_identical(tmp_path, monkeypatch):
    args = [*RUN, "--config", "callbacks.yaml"]
    dirs = {}
    for name in ("a", "b"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        (dirs[name] / "callbacks.yaml").write_text(CALLBACKS)
    monkeypatch.chdir(dirs["a"])
    lightning_main(["fit", *args, "--ckpt_path", "last"])  # uninterrupted

    last = dirs["b"] / "runs/shakespeare-char/checkpoints/last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "fit", *args, "--ckpt_path", "last"],
        cwd=dirs["b"], env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert 10 <= torch.load(last, weights_only=True)["global_step"] < 80
    monkeypatch.chdir(dirs["b"])
    lightning_main(["fit", *args, "--ckpt_path", "last"])  # resumed

    ca, cb = (
        torch.load(d / "runs/shakespeare-char/checkpoints/last.ckpt", weights_only=True)
        for d in dirs.values()
    )
    assert ca["global_step"] == cb["global_step"] == 80
    for name, tensor in ca["state_dict"].items():
        assert torch.equal(tensor, cb["state_dict"][name]), name
    sa, sb = ca["optimizer_states"][0], cb["optimizer_states"][0]
    assert sa["state"].keys() == sb["state"].keys() and len(sa["param_groups"]) == 2  # Muon's group, AdamW's
    assert sa["param_groups"][0]["muon"] is True and "momentum_buffer" in sa["state"][0]
    for i in sa["state"]:
        assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for k in sa["state"][i])
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
