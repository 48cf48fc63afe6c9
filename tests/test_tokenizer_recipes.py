"""The tokenizer recipes parse and run a few steps; `prepare`; bits per byte; tokenizer mismatch; Chinese samples."""

import csv
import math
import pydoc
import sys

import pytest
import torch
import yaml
from conftest import RECIPES, TINY

from gpt2kit import GPT, GPTConfig
from gpt2kit.commands import main
from gpt2kit.data import TextDataModule

PRETRAIN = RECIPES / "pretrain"
RUNNABLE = ["shakespeare-bpe", "gutenberg-gpt2", "zh-poetry"]


def gpt2kit(*args: str) -> int:
    """``python -m gpt2kit ARGS`` in this process (fast: no new interpreter); returns the exit code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["gpt2kit", *args])
        try:
            main(list(args))
        except SystemExit as exit:
            return int(exit.code or 0)
    return 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each runnable recipe, trained for 3 steps in its own folder."""
    root = tmp_path_factory.mktemp("recipes")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # recipes write under ./runs
        for name in RUNNABLE:
            assert gpt2kit("fit", "--config", str(PRETRAIN / f"{name}.yaml"), *TINY) == 0, name
    return root / "runs"


def _metrics(run) -> list[dict[str, str]]:
    with open(next(run.rglob("metrics.csv"))) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", RUNNABLE)
def test_recipe_runs_and_logs_bits_per_byte(runs, name):
    assert (runs / name / "checkpoints" / "last.ckpt").is_file()
    row = next(r for r in _metrics(runs / name) if r.get("val_bpb"))
    loss, bpb = float(row["val_loss"]), float(row["val_bpb"])
    assert 0 < bpb < loss / math.log(2)  # every tokenizer here packs more than one byte per token


def test_bits_per_byte_is_loss_over_bytes_per_token(runs):
    row = next(r for r in _metrics(runs / "gutenberg-gpt2") if r.get("val_bpb"))
    dm = TextDataModule("gutenberg-english", _gpt2_tokenizer())
    expected = float(row["val_loss"]) / math.log(2) / dm.val_bytes_per_token
    assert float(row["val_bpb"]) == pytest.approx(expected, rel=1e-5)
    assert dm.val_bytes_per_token == pytest.approx(3.75, abs=0.01)  # GPT-2 on English novels


def _gpt2_tokenizer():
    from gpt2kit.tokenizers import GPT2Tokenizer

    return GPT2Tokenizer()


def test_gpt2_124m_recipe_is_gpt2_small():
    """For a GPU and the user's own corpus: parsed here, not run."""
    out = _print_config(PRETRAIN / "gpt2-124m.yaml")
    arch = out["model"]["arch"]
    assert (arch["n_layer"], arch["n_head"], arch["n_embd"], arch["block_size"]) == (12, 12, 768, 1024)
    with torch.device("meta"):  # built without memory: exactly GPT-2 small with GPT-2's vocabulary
        assert GPT(GPTConfig(**{**arch, "vocab_size": 50257})).num_params() == 124_439_808
    from gpt2kit.tokenizers import GPT2Tokenizer

    assert pydoc.locate(out["data"]["init_args"]["tokenizer"]["class_path"]) is GPT2Tokenizer


def _print_config(path) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert gpt2kit("fit", "--config", str(path), "--print_config") == 0
    return yaml.safe_load(buffer.getvalue())


def test_chinese_samples_are_readable_chinese(runs, capsys):
    ckpt = runs / "zh-poetry" / "checkpoints" / "last.ckpt"
    args = ["--prompt", "春", "--max_new_tokens", "30", "--seed", "3", "--temperature", "1.0"]
    assert gpt2kit("generate", "--ckpt", str(ckpt), *args) == 0
    sample = capsys.readouterr().out.strip()
    assert sample.startswith("春") and len(sample) >= 20 and "\ufffd" not in sample
    assert sum("\u4e00" <= c <= "\u9fff" for c in sample) >= 10  # CJK ideographs, printed as such


def test_checkpoint_with_another_tokenizer_is_refused(runs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bpe_ckpt = runs / "shakespeare-bpe" / "checkpoints" / "last.ckpt"
    char_recipe = str(PRETRAIN / "shakespeare-char.yaml")
    code = gpt2kit("validate", "--config", char_recipe, *TINY, "--ckpt_path", str(bpe_ckpt))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert "was trained with another tokenizer (ByteLevelBPETokenizer(vocab_size=2048)" in errors[0]
    assert "than the data's (CharTokenizer(vocab_size=65)" in errors[0]


def test_prepare_command_prepares_alone(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str(PRETRAIN / "zh-poetry.yaml")
    assert gpt2kit("prepare", "--config", recipe, "--data.init_args.cache", str(tmp_path / "c")) == 0
    out = capsys.readouterr()
    assert "train +" in out.out and "split: documents" in out.out and "vocab 6,950" in out.out
    assert "tokenizing chinese-poetry" in out.err  # the progress bar
    assert not (tmp_path / "runs").exists()  # no training, no trainer
    code = gpt2kit(
        "prepare", "--config", str(PRETRAIN / "shakespeare-bpe.yaml"),
        "--data.init_args.tokenizer.init_args.vocab_size", "100",
    )  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "vocab_size=100 is smaller than the byte alphabet" in errors[0]
