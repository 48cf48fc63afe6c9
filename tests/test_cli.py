"""The command line as a user runs it: python -m gpt2kit ..."""

import subprocess
import sys

import pytest
import yaml
from conftest import RECIPES, TINY

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")


def gpt2kit(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2kit", *args], capture_output=True, text=True, timeout=240, cwd=cwd
    )


def test_print_config_resolves_class_paths():
    out = gpt2kit("fit", "--config", SHAKESPEARE, "--print_config")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["attention"]["class_path"] == "gpt2kit.nn.CausalSelfAttention"
    assert cfg["model"]["arch"]["n_layer"] == 4 and cfg["trainer"]["max_steps"] == 2000


def test_every_kind_of_data_module_parses_by_its_short_name_in_a_fresh_process():
    """Recipes name their DataModule by class name (TextDataModule, ChatDataModule, PromptDataModule); in
    a process that has imported nothing else first, the parser still finds each (the data package imports
    its DataModules lazily, and a test run's import order once hid that ChatDataModule was missing)."""
    recipes = {
        "fit": ["pretrain/shakespeare-char.yaml", "chat/topical-chat.yaml"],
        "predict": ["predict/completions.yaml"],
    }
    script = (
        "import sys\nfrom gpt2kit.components import load_builtins\nfrom gpt2kit.training.cli import recipe_parser\n"
        "load_builtins()\nfor sub, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    cfg = recipe_parser().parse_args([sub, '--config', path])\n    print(cfg[sub].data.class_path)\n"
    )
    args = [a for sub, paths in recipes.items() for p in paths for a in (sub, str(RECIPES / p))]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line.rsplit(".", 1)[-1] for line in out.stdout.split()] == [
        "TextDataModule",
        "ChatDataModule",
        "PromptDataModule",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = gpt2kit("fit", "--config", SHAKESPEARE, *TINY, cwd=tmp)  # the recipe writes under ./runs
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "shakespeare-char"


def test_recipe_runs_and_leaves_checkpoint_and_logs(trained):
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    metrics = next(trained.rglob("metrics.csv")).read_text()
    assert "train_loss" in metrics.splitlines()[0] and "val_loss" in metrics.splitlines()[0]
    assert next(trained.rglob("config.yaml")).is_file()


def test_generate_from_checkpoint(trained):
    out = gpt2kit(
        "generate", "--ckpt", str(trained / "checkpoints" / "last.ckpt"), "--prompt", "ROMEO:",
        "--max_new_tokens", "40", "--seed", "7",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:") and len(out.stdout.strip()) >= len("ROMEO:") + 20


def test_validate_subcommand_with_checkpoint(trained):
    out = gpt2kit(
        "validate", "--config", SHAKESPEARE, *TINY, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
        cwd=trained.parent.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val_loss" in out.stdout


def test_list_shows_every_kind():
    out = gpt2kit("list")
    assert out.returncode == 0
    for kind in ("tokenizer", "attention", "position", "norm", "mlp", "head"):
        assert f"\n{kind}:" in out.stdout
    assert "CausalSelfAttention" in out.stdout and "built-in" in out.stdout
    filtered = gpt2kit("list", "position", "learn*")
    assert "LearnedPosition" in filtered.stdout and "NoPosition" not in filtered.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model.attention", "CausalSelfAtention"], "unknown attention 'CausalSelfAtention': did you mean"),
        (["--model.arch.n_head", "3"], "n_embd=128 is not divisible by n_head=3"),
        (["--model.optim.lrr", "1"], "lrr"),
    ],
)
def test_bad_config_is_one_clear_line(args, expected):
    out = gpt2kit("fit", "--config", SHAKESPEARE, *args)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_generate_errors():
    out = gpt2kit("generate", "--ckpt", "nowhere.ckpt")
    assert out.returncode == 2 and out.stderr.strip() == "error: checkpoint 'nowhere.ckpt' does not exist"
