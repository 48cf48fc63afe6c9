"""One error boundary: every command ends a user error in at most two stderr lines, ``error: ...`` and an
optional hint, without a traceback, with exit code 2, and without writing anything.

Each case runs ``python -m gpt2kit`` in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import RECIPES, TINY

from gpt2kit.checkpoint import save_checkpoint
from gpt2kit.config import preset
from gpt2kit.tokenizers import CharTokenizer
from gpt2kit.training.lit import GPTLitModule

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")


def gpt2kit(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2kit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )


def assert_user_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """At most two stderr lines, the first ``error: ...`` naming ``words``; no traceback; exit code 2."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    module = GPTLitModule(preset("nano", vocab_size=40, block_size=16, n_embd=16, n_head=2, n_layer=1))
    tok = CharTokenizer()
    tok.train(["abcdefghijklmnopqrstuvwxyz .,\n"])
    module.tokenizer = tok
    return save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


class Payload:
    """Unpickling this runs code: it would create the file it names."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fit_with_a_missing_ckpt_path_writes_nothing(tmp_path):
    root = tmp_path / "run"
    out = gpt2kit(
        "fit", "--config", SHAKESPEARE, *TINY, f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks=[]",
        "--ckpt_path", tmp_path / "nowhere.ckpt",
    )  # fmt: skip
    assert_user_error(out, "nowhere.ckpt", "does not exist")
    assert not root.exists()


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_malicious_ckpt_path_is_refused_in_one_line(command, tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, evil)
    root = tmp_path / "run"
    out = gpt2kit(
        command, "--config", SHAKESPEARE, *TINY, f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks=[]", "--ckpt_path", evil,
    )  # fmt: skip
    assert_user_error(out, "refused to load", "evil.ckpt")
    assert not marker.exists() and not root.exists()


def test_export_hf_onto_an_existing_file(ckpt, tmp_path):
    target = tmp_path / "existing_file"
    target.write_text("keep me")
    assert_user_error(gpt2kit("export-hf", ckpt, target), "existing_file", "not a folder")
    assert target.read_text() == "keep me"


def test_generate_from_a_checkpoint_whose_plugin_is_missing(ckpt, tmp_path):
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["attention"] = {"class_path": "gpt2kit_talkingheads.TalkingHeadsAttention"}
    torch.save(saved, tmp_path / "plugin.ckpt")
    line = assert_user_error(gpt2kit("generate", "--ckpt", tmp_path / "plugin.ckpt", "--prompt", "a"))
    assert line == (
        "error: checkpoint needs gpt2kit_talkingheads.TalkingHeadsAttention: install the plugin that "
        "provides it, or pass --plugins"
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "--ckpt", "x.ckpt", "--promt", "hi"], ["--promt", "did you mean --prompt?"]),
        (["chat", "--ckpt", "x.ckpt", "--mesage", "hi"], ["--mesage", "did you mean --message?"]),
        (["ablate", "--confg", "study.yaml"], ["--confg", "did you mean --config?"]),
        (["fit", "--config", SHAKESPEARE, "--trainer.max_stepz", "3"], ["did you mean --trainer.max_steps?"]),
        (
            ["validate", "--config", SHAKESPEARE, "--model.arch.n_layr", "3"],
            ["did you mean --model.arch.n_layer?"],
        ),
        (["genrate", "--ckpt", "x.ckpt"], ["unknown command 'genrate'", "did you mean generate?"]),
        (["list", "attention", "--bogus"], ["--bogus"]),
    ],
)
def test_a_misspelt_flag_or_command_is_one_line_with_a_did_you_mean(args, words):
    assert_user_error(gpt2kit(*args), *words)


def test_user_errors_raised_while_running_end_at_the_boundary(ckpt, tmp_path):
    # raised from inside a command (not by a parser): generate with a bad device
    assert_user_error(gpt2kit("generate", "--ckpt", ckpt, "--device", "nonsense"), "device='nonsense'")
    env_out = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "list"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "GPT2KIT_PLUGINS": "no_such_plugin_module"},
    )
    assert_user_error(env_out, "plugin module 'no_such_plugin_module' was not found")


def test_an_unexpected_error_is_one_line_and_its_traceback_is_opt_in(monkeypatch, capsys):
    """A failure gpt2kit does not recognise (a bug, or the system's) is one line and exit code 1, no traceback;
    GPT2KIT_TRACEBACK=1 lets it through, traceback and all."""
    from gpt2kit import commands as cli

    def broken(argv):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "_dispatch", broken)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 2
    assert err[0] == "error: RuntimeError: disk on fire" and cli.TRACEBACK_ENV in err[1]
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["list"])


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys):
    from gpt2kit import commands as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list"])
    assert exit_.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"
