"""The audit: a run killed with SIGKILL on 2 processes, resumed on 1, then again on 2, trains on exactly the
windows of the global order — none repeated, none skipped — recorded as each rank draws them in real `fit`
processes (CPU, gloo, a tiny model). The sampler-level 4 <-> 2 checks are in tests/test_data_position.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import RECIPES, SHARED_DATA

from gpt2kit.commands import main
from gpt2kit.data import TextDataModule

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
T, B = 32, 4  # block size; windows per batch and process
RUN = [
    "--config", SHAKESPEARE,
    "--model.arch.n_layer=2", "--model.arch.n_head=2", "--model.arch.n_embd=32", f"--model.arch.block_size={T}",
    "--model.schedule.init_args.warmup_steps=2", f"--data.init_args.batch_size={B}",
    "--data.init_args.source=corpus.txt", "--data.init_args.cache=prepared",
    "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
ONE = ["--trainer.strategy=auto", "--trainer.devices=1", "--trainer.accelerator=cpu"]

# Records, on every rank, the windows of each training batch it is given (input + the last target: the
# window's block_size + 1 tokens), then SIGKILLs itself at a step if asked (every rank at the same point).
RECORDER = """
import json
import os
import signal

import lightning as L
import torch


class Record(L.Callback):
    def __init__(self, tag: str, kill_at: int = -1) -> None:
        self.tag, self.kill_at = tag, kill_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        rows = torch.cat([x, y[:, -1:]], dim=1).tolist()
        with open(f"windows-{self.tag}-rank{trainer.global_rank}.jsonl", "a") as f:
            record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "rows": rows}
            f.write(json.dumps(record) + "\\n")
"""


def _callbacks(run_dir, tag, kill_at=-1):
    (run_dir / f"{tag}.yaml").write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: gpt2kit.training.resume.LastCheckpoint\n"
        "      init_args: {dirpath: ckpts, every_n_train_steps: 4}\n"
        "    - class_path: recorder.Record\n"
        f"      init_args: {{tag: {tag}, kill_at: {kill_at}}}\n"
    )
    return ["--config", f"{tag}.yaml"]


def _subprocess(run_dir, args, killed):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(run_dir), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "fit", *args], cwd=run_dir, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a rank left behind by a kill or a hang goes too
            os.killpg(proc.pid, signal.SIGKILL)
    expected = -signal.SIGKILL if killed else 0
    assert proc.returncode == expected, err[-3000:]


def _records(run_dir, tag, world):
    """{step: (epoch, [rows of every rank])} of one run."""
    out: dict[int, tuple[int, list]] = {}
    for rank in range(world):
        for line in (run_dir / f"windows-{tag}-rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec["step"], (rec["epoch"], []))[1].extend(map(tuple, rec["rows"]))
    return out


def _step(run_dir):
    return torch.load(run_dir / "ckpts/last.ckpt", weights_only=True)["global_step"]


@pytest.mark.slow
def test_resumed_on_fewer_then_more_processes_no_window_is_repeated_or_skipped(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recorder.py").write_text(RECORDER)
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    # A corpus of ~120 windows per epoch: run c, on more processes than b, reaches the end of epoch 0 with
    # more batches left than a fresh epoch has on its world (where Lightning would end an epoch too early).
    (run / "corpus.txt").write_text((SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:4400])

    # a: 2 processes, 8 windows per step; last.ckpt at step 4; every rank SIGKILLed at the start of step 6
    _subprocess(run, [*RUN, *DDP, *_callbacks(run, "a", kill_at=6), "--trainer.max_steps=12", "--ckpt_path", "last"], True)  # fmt: skip
    assert _step(run) == 4
    # b: resumed on 1 process (4 windows per step: the global batch follows the world size); last.ckpt at
    # step 8; SIGKILLed at the start of step 10
    _subprocess(run, [*RUN, *ONE, *_callbacks(run, "b", kill_at=10), "--trainer.max_steps=14", "--ckpt_path", "last"], True)  # fmt: skip
    assert _step(run) == 8
    # A position this run cannot serve: 8 batches done, and accumulating 3 would make a partial first step.
    # One line, exit 2, the checkpoint untouched.
    with pytest.raises(SystemExit) as ended:
        main(["fit", *RUN, *ONE, *_callbacks(run, "x"), "--data.init_args.batch_size=2",
              "--trainer.accumulate_grad_batches=3", "--trainer.max_steps=14", "--ckpt_path", "last"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert ended.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(
        "error: cannot resume on 1 process(es) × batch_size=2 with accumulate_grad_batches=3"
    )
    assert "the first step would hold 1 of its 3 micro-batches" in err[0]
    assert _step(run) == 8 and not list(run.glob("windows-x-*"))
    # c: resumed on 2 processes again (8 windows per step), to step 18
    _subprocess(
        run, [*RUN, *DDP, *_callbacks(run, "c"), "--trainer.max_steps=18", "--ckpt_path", "last"], False
    )
    assert _step(run) == 18

    a, b, c = _records(run, "a", 2), _records(run, "b", 1), _records(run, "c", 2)
    assert sorted(a) == list(range(6)) and sorted(b) == list(range(4, 10)) and sorted(c) == list(range(8, 18))
    # what counts: the steps each run trained before the checkpoint the next one resumed from
    steps = [a[s] for s in range(4)] + [b[s] for s in range(4, 8)] + [c[s] for s in range(8, 18)]
    worlds = [2] * 4 + [1] * 4 + [2] * 10
    assert [len(rows) for _, rows in steps] == [B * w for w in worlds]

    # The global order of each epoch: a function of (seed, epoch) only, read the way the DataModule reads it.
    state = torch.load(run / "ckpts/last.ckpt", weights_only=True)["loops"]["fit_loop"]["state_dict"]
    saved = state["combined_loader"][0]
    dm = TextDataModule(str(run / "corpus.txt"), block_size=T, cache=str(run / "prepared"))
    tokens = dm.prepared().tokens("train")
    order = dm.sampler.order(tokens, T, dm.prepared().tokenizer.eot_id)
    n = order.samples_per_epoch

    def window(epoch, i):
        o = int(order.items(saved["seed"], epoch, np.array([i]))[0])
        return tuple(int(t) for t in tokens[o : o + T + 1])

    # Every step trained on the next windows of its epoch's order, split across its ranks; an epoch ends
    # when what is left of it is less than one global batch of the world that reached it (dropped, as
    # in an uninterrupted run), and the next starts at its beginning.
    epoch, done, repeated, skipped, dropped = 0, 0, 0, 0, 0
    for (e, rows), world in zip(steps, worlds, strict=True):
        if e != epoch:
            assert e == epoch + 1 and n - done < B * world, (e, done, n)
            dropped += n - done
            epoch, done = e, 0
        want = Counter(window(e, i) for i in range(done, done + len(rows)))
        repeated += sum((Counter(rows) - want).values())
        skipped += sum((want - Counter(rows)).values())
        done += len(rows)
    total = sum(len(rows) for _, rows in steps)
    print(
        f"audit 2 -> 1 -> 2 processes (killed twice), {total} windows over {epoch + 1} epochs of {n}: "
        f"repeated {repeated}, skipped {skipped} (end of epoch 0: {dropped} left, less than a global batch)"
    )
    assert epoch == 1  # the chain crossed an epoch boundary, on the resumed world
    assert (repeated, skipped) == (0, 0)
    assert (saved["epoch"], saved["samples_done"], saved["world_size"]) == (1, done, 2)  # for the next resume
