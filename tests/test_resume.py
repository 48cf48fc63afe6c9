"""A run killed with SIGKILL resumes with --ckpt_path last and ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import lightning as L
import numpy as np
import pytest
import torch
from conftest import RECIPES

from gpt2kit import GPT2KitError, preset
from gpt2kit.commands import lightning_main
from gpt2kit.data import TextDataModule
from gpt2kit.data.sampler import EvalSampler, RandomWindowSampler, ResumableDataLoader, window_starts
from gpt2kit.training.lit import GPTLitModule, OptimConfig
from gpt2kit.training.resume import AtomicCheckpointIO, LastCheckpoint, rng_state, set_rng_state

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")

# Short epochs (16 batches) so that the runs cross epoch boundaries; the kills land mid-epoch.
RUN = [
    "--config", SHAKESPEARE,
    "--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", "--model.arch.block_size=32",
    "--model.arch.dropout=0.1",  # dropout draws from the global RNG: its state must be restored too
    "--model.schedule.init_args.warmup_steps=5",
    "--trainer.max_steps=48", "--trainer.limit_train_batches=16", "--trainer.val_check_interval=15",
    "--trainer.limit_val_batches=3", "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip

CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: runs/shakespeare-char/checkpoints, monitor: val_loss, filename: "best-{step}"}
    - class_path: gpt2kit.training.resume.LastCheckpoint
      init_args: {dirpath: runs/shakespeare-char/checkpoints, every_n_train_steps: 10}
"""

# SIGKILL from inside the run, at an exact point: before a training step's batch, or in the middle of the
# validation at a step (a module of its own, for the subprocess to import).
KILLER = """
import os
import signal

import lightning as L


class KillAt(L.Callback):
    def __init__(self, step: int, during: str = "train") -> None:
        self.step, self.during = step, during

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.during == "train" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.during == "validation" and not trainer.sanity_checking and trainer.global_step == self.step:
            if batch_idx == 1:  # one validation batch done, the next not
                os.kill(os.getpid(), signal.SIGKILL)
"""


def _run_dir(tmp_path, name, kill=None):
    path = tmp_path / name
    path.mkdir()
    (path / "callbacks.yaml").write_text(CALLBACKS)
    if kill is not None:
        (path / "killer.py").write_text(KILLER)
        killer = f"    - class_path: killer.KillAt\n      init_args: {kill}\n"
        (path / "kill.yaml").write_text(CALLBACKS + killer)
    return path


def _final(run_dir):
    return torch.load(run_dir / "runs/shakespeare-char/checkpoints/last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the run never interrupted (in this process, to save an interpreter start)."""
    a = _run_dir(tmp_path_factory.mktemp("resume"), "a")
    old = os.getcwd()
    os.chdir(a)
    try:
        lightning_main(["fit", *RUN, "--config", "callbacks.yaml", "--ckpt_path", "last"])  # none yet: starts
    finally:
        os.chdir(old)
    return _final(a)


# (kill from inside the run, or None: from outside as soon as the first last.ckpt exists; extra arguments;
#  the step of the last.ckpt it resumes from)
KILLS = {
    "mid-epoch": (None, [], None),
    "during-validation": ({"step": 45, "during": "validation"}, [], 40),
    "dataloader-workers": ({"step": 25}, ["--data.init_args.num_workers=2"], 20),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", KILLS)
def test_sigkill_then_resume_is_bit_identical(tmp_path, monkeypatch, uninterrupted, where):
    kill, extra, expected_step = KILLS[where]
    # B: the same command in a subprocess, killed with SIGKILL ...
    b = _run_dir(tmp_path, "b", kill)
    last = b / "runs/shakespeare-char/checkpoints/last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(b), *sys.path])}
    config = "kill.yaml" if kill else "callbacks.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "fit", *RUN, "--config", config, *extra, "--ckpt_path", "last"],
        cwd=b, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if kill is None:  # from outside, once a checkpoint exists
        deadline = time.monotonic() + 180
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= killed_at < 48 if expected_step is None else killed_at == expected_step

    # ... and resumed with the same command (without the killer), which now finds last.ckpt.
    monkeypatch.chdir(b)
    lightning_main(["fit", *RUN, "--config", "callbacks.yaml", *extra, "--ckpt_path", "last"])

    ca, cb = uninterrupted, _final(b)
    assert ca["global_step"] == cb["global_step"] == 48
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for name, tensor in ca["state_dict"].items():
        assert torch.equal(tensor, cb["state_dict"][name]), name
    for sa, sb in zip(*(c["optimizer_states"][0]["state"].values() for c in (ca, cb)), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    # the best-by-val-loss checkpoint is kept too
    assert list((b / "runs/shakespeare-char/checkpoints").glob("best-*.ckpt"))


# -- the sampler ---------------------------------------------------------------------------------------------


def test_window_starts_are_a_pure_uniform_function_of_seed_epoch_and_index():
    idx = np.arange(50_000)
    a = window_starts(1337, 3, idx, 1000)
    assert np.array_equal(a, window_starts(1337, 3, idx, 1000))
    assert np.array_equal(a[123:456], window_starts(1337, 3, idx[123:456], 1000))  # no hidden state
    assert not np.array_equal(a, window_starts(1337, 4, idx, 1000))
    assert not np.array_equal(a, window_starts(1338, 3, idx, 1000))
    counts = np.bincount(a, minlength=1000)
    assert a.min() >= 0 and a.max() < 1000 and counts.min() > 20 and counts.max() < 85  # mean 50


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_ranks_split_the_global_batch_of_a_single_process():
    one = list(RandomWindowSampler(_Sized(10**6), 10**6, 1200, seed=7))
    two = [
        list(RandomWindowSampler(_Sized(10**6), 10**6, 1200, seed=7, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert len(two[0]) == len(two[1]) == 600 and set(two[0]).isdisjoint(two[1])
    for step in range(600 // 6):  # batch 12 on one process == batch 6 on each of two
        assert sorted(one[12 * step : 12 * step + 12]) == sorted(
            two[0][6 * step : 6 * step + 6] + two[1][6 * step : 6 * step + 6]
        )


def test_sampler_resumes_after_the_batches_trained_on():
    full = RandomWindowSampler(_Sized(1000), 1000, 96, seed=1)
    full.set_epoch(2)
    order = list(full)
    resumed = RandomWindowSampler(_Sized(1000), 1000, 96, seed=1)
    resumed.load_state_dict(full.state_dict(batches_done=5, batch_size=8), batches_done=5, batch_size=8)
    resumed.set_epoch(2)  # Lightning sets the same epoch again: the position stays
    assert list(resumed) == order[40:] and len(resumed) == 56
    loader = ResumableDataLoader(_Sized(1000), batch_size=8, sampler=resumed, drop_last=True)
    assert len(loader) == 12  # Lightning's epoch length: its 5 batches so far + the 7 left
    resumed.set_epoch(3)  # the next epoch starts at its beginning
    assert len(list(resumed)) == 96 and len(loader) == 12


def test_validation_is_covered_once_across_ranks():
    shards = [list(EvalSampler(_Sized(11), num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # same number of batches on every rank
    assert sorted(i for s in shards for i in s if i >= 0) == list(range(11))
    dm = TextDataModule("tinyshakespeare", block_size=16, batch_size=4)
    x, y = dm._dataset("val", dm.val_offsets())[-1]
    assert (y == -100).all() and x.shape == (16,)  # padding: a window with no targets


# -- RNG, atomic files, non-finite loss, mismatched checkpoints -----------------------------------------------------


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"\x00" * 100)
        raise KeyboardInterrupt  # as good as a kill for the file: half written

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left, none taken as "last"


class _NaNAt(GPTLitModule):
    """Returns a NaN loss at one step (as an overflow would)."""

    bad_step = 4

    def loss(self, batch):
        loss = super().loss(batch)
        return loss * float("nan") if self.trainer.global_step == self.bad_step else loss


def _trainer(tmp_path, steps, **kw):
    return L.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()], **kw,
    )  # fmt: skip


@pytest.fixture
def data():
    return TextDataModule("tinyshakespeare", block_size=32, batch_size=8, val_max_windows=16)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data):
    L.seed_everything(0)
    module = _NaNAt(preset("nano", vocab_size=65))
    ckpts = tmp_path / "ckpt"
    trainer = _trainer(tmp_path, 10, callbacks=[LastCheckpoint(ckpts, every_n_train_steps=2)])
    with pytest.raises(
        GPT2KitError, match=r"non-finite training loss at step 4 .* last good checkpoint: .*last\.ckpt"
    ):
        trainer.fit(module, data)
    saved = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in module.parameters())  # stopped before the update


def test_nonfinite_loss_can_skip_the_step(tmp_path, data):
    L.seed_everything(0)
    module = _NaNAt(preset("nano", vocab_size=65), on_nonfinite="skip")
    trainer = _trainer(tmp_path, 8, enable_checkpointing=False)
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                before.update({k: v.clone() for k, v in pl_module.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 5:  # the step that saw the NaN changed nothing
                assert all(torch.equal(before[k], v) for k, v in pl_module.state_dict().items())

    trainer.callbacks.append(Snapshot())
    with pytest.warns(UserWarning, match="non-finite training loss at step 4"):
        trainer.fit(module, data)
    assert trainer.global_step == 8 and all(torch.isfinite(p).all() for p in module.parameters())


def test_resuming_a_different_model_or_tokenizer_lists_the_mismatch(tmp_path, data):
    L.seed_everything(0)
    trainer = _trainer(tmp_path, 2, enable_checkpointing=False)
    trainer.fit(GPTLitModule(preset("nano", vocab_size=65)), data)
    trainer.save_checkpoint(tmp_path / "nano.ckpt")

    wider = GPTLitModule(preset("nano", vocab_size=65, n_embd=64), optim=OptimConfig(lr=1e-3))
    with pytest.raises(GPT2KitError, match=r"different model \(arch.n_embd: checkpoint 32, here 64\)"):
        _trainer(tmp_path, 4).fit(wider, data, ckpt_path=tmp_path / "nano.ckpt")

    other_text = tmp_path / "other.txt"
    other_text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    other = TextDataModule(str(other_text), block_size=32, batch_size=8, cache=str(tmp_path / "prep"))
    module = GPTLitModule(preset("nano", vocab_size=65))
    with pytest.raises(GPT2KitError, match="another tokenizer"):
        _trainer(tmp_path, 4).fit(module, other, ckpt_path=tmp_path / "nano.ckpt")
