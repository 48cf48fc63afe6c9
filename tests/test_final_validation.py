"""The end of a run, as a newcomer sees it: every fit ends with a validation pass (once), a step-based run's
progress bar counts steps of max_steps, and the chat REPL's /history shows what the next turn will see."""

from __future__ import annotations

import csv
import functools
import io

import lightning as L
import pytest
import torch
from conftest import RECIPES, TINY, cwd

from gpt2kit import GPTConfig
from gpt2kit.chat import ChatSession, RoleTokensTemplate
from gpt2kit.commands import main
from gpt2kit.commands.chat import run
from gpt2kit.decoding import SamplingConfig
from gpt2kit.nn import LayerNorm
from gpt2kit.tokenizers import CharTokenizer
from gpt2kit.training.callbacks import StepRichProgressBar, StepTQDMProgressBar
from gpt2kit.training.lit import GPTLitModule

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
QUICK = [a for a in TINY if not a.startswith(("--trainer.max_steps", "--trainer.val_check_interval"))]


def fit(tmp_path, *overrides: str) -> list[dict[str, str]]:
    """Run the Shakespeare recipe, tiny, and return the rows of its metrics.csv that hold a val_loss."""
    root = tmp_path / "run"
    with cwd(tmp_path):
        main([
            "fit", "--config", SHAKESPEARE, *QUICK, f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false", *overrides,
        ])  # fmt: skip
    with open(root / "logs" / "version_0" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get("val_loss")]


def test_a_run_shorter_than_the_validation_interval_still_ends_with_val_loss(tmp_path):
    rows = fit(tmp_path, "--trainer.max_steps=3", "--trainer.val_check_interval=250")
    assert [row["step"] for row in rows] == ["2"]  # once, after the third (last) optimizer step
    assert 0 < float(rows[0]["val_loss"]) < 10


def test_a_last_step_that_validates_anyway_validates_once(tmp_path):
    rows = fit(tmp_path, "--trainer.max_steps=4", "--trainer.val_check_interval=2")
    assert [row["step"] for row in rows] == ["1", "3"]


def test_no_final_validation_when_validation_is_off(tmp_path):
    rows = fit(
        tmp_path, "--trainer.max_steps=3", "--trainer.val_check_interval=250", "--trainer.limit_val_batches=0"
    )
    assert rows == []


@pytest.mark.parametrize("bar_class", [StepRichProgressBar, StepTQDMProgressBar])
def test_a_step_based_progress_bar_counts_steps_of_max_steps(bar_class, tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append((bar.total_train_batches, trainer.global_step, description()))

    def description() -> str:
        if isinstance(bar, StepRichProgressBar):
            return bar._get_train_description(0)
        return bar.train_progress_bar.desc

    bar = bar_class()
    module = GPTLitModule(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    data = torch.utils.data.TensorDataset(torch.randint(0, 11, (6, 8)), torch.randint(0, 11, (6, 8)))
    trainer = L.Trainer(
        max_steps=7, callbacks=[bar, Probe()], logger=False, enable_checkpointing=False,
        limit_val_batches=0, default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))  # 3 batches an epoch: 3 epochs
    assert [s[:2] for s in seen] == [(7, step) for step in range(1, 8)]
    assert all("-" not in d and "Epoch" not in d for _, _, d in seen), seen


def test_history_shows_the_reply_just_given(tmp_path):
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train(["abcdefghijklmnopqrstuvwxyz ?!.,"])
    tok.add_special_tokens(RoleTokensTemplate().special_tokens())
    torch.manual_seed(0)
    arch = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size, bias=False)
    model = GPTLitModule(arch, norm=functools.partial(LayerNorm, bias=False)).model.eval()
    session = ChatSession(
        model, tok, RoleTokensTemplate(), SamplingConfig(max_new_tokens=5, temperature=0), system="be brief"
    )
    out = io.StringIO()
    run(session, ["hello", "/history"], out)
    reply, history = out.getvalue().splitlines()[0], out.getvalue().split("\n", 1)[1].strip()
    assert history == session.history_text()
    assert history.startswith("<|system|>be brief") and "<|user|>hello" in history
    assert history.endswith(f"<|assistant|>{reply}<|end|>")  # the reply just given, closed
    session.reply("again")
    assert session.prompt_text().startswith(history)  # what the next turn saw starts with it
