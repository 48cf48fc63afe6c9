"""Every recipe under recipes/ and plugins/*/recipes/, found by glob: parsed (--print_config, every class
path importable) and run for two steps; ablation grids through `ablate --dry_run`.

All training recipes run in one folder, as the README says to: a recipe that starts from a checkpoint
(model.init_from, a CheckpointTokenizer path, predict's --ckpt_path) finds it there, left by a two-step
run of the recipe that writes it (runs/NAME/ comes from recipes' NAME.yaml). A recipe runs at its own
size unless it needs what a test machine lacks (listed in NEEDS, with the reason).
"""

from __future__ import annotations

import csv
import importlib
import logging
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, REPO
from test_plugins import isolated  # noqa: F401  (a fixture: registries as they were)

from gpt2kit.commands import main

EVAL_TASKS = (
    RECIPES / "eval"
)  # lm-evaluation-harness task files, not recipes (tests/test_evaluate.py runs them)
FILES = sorted(
    p
    for p in [*RECIPES.rglob("*.yaml"), *REPO.glob("plugins/*/recipes/*.yaml")]
    if EVAL_TASKS not in p.parents
)
ID = {path: path.relative_to(REPO).as_posix() for path in FILES}

TWO_STEPS = [
    "--trainer.max_steps=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
TINY_ARCH = [
    "--model.arch.n_layer=2",
    "--model.arch.n_head=2",
    "--model.arch.n_embd=32",
    "--model.arch.block_size=32",
]

# What a recipe needs that a test machine lacks, by recipe path (the rest run as they are).
NEEDS = {
    # GPT-2 124M on a GPU, bf16, 40 accumulated batches, over the user's own corpus folder
    "recipes/pretrain/gpt2-124m.yaml": [
        *TINY_ARCH, "--trainer.precision=32-true", "--trainer.accumulate_grad_batches=1",
        "--data.init_args.source=tinyshakespeare", "--data.init_args.val_fraction=0.1",
        "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
    ],
    # Topical-Chat's thousands of conversations: a few are enough for two steps
    "recipes/chat/smoke.yaml": ["--data.init_args.max_conversations=20"],
    "recipes/chat/topical-chat.yaml": ["--data.init_args.max_conversations=20"],
}  # fmt: skip


def is_study(path: Path) -> bool:
    """An ablation grid (`python -m gpt2kit ablate --config`), not a LightningCLI config."""
    return "base" in (yaml.safe_load(path.read_text()) or {})


def starts_from_the_hub(path: Path) -> bool:
    """A recipe whose model starts from a Hugging Face hub name (``init_from: hf:gpt2``)."""
    return str(((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("init_from", "")).startswith(
        "hf:"
    )


def reads_from_the_hub(path: Path) -> bool:
    """A recipe whose data is a hub dataset (``source: hf:datasets/...``)."""
    data = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("init_args") or {}
    return str(data.get("source", "")).startswith("hf:datasets/")


def command(path: Path) -> str:
    """The subcommand the recipe's header runs it with (fit unless it says otherwise)."""
    found = re.search(r"python -m gpt2kit (fit|validate|test|predict)\b", path.read_text())
    return found.group(1) if found else "fit"


def plugin_args(path: Path) -> list[str]:
    """--plugins MODULE for a plugin's own recipes (the package beside its recipes/ folder)."""
    if path.parents[1].parent != REPO / "plugins":
        return []
    package = next(p.parent.name for p in path.parents[1].glob("*/__init__.py"))
    return ["--plugins", package]


def class_paths(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "class_path":
                yield value
            yield from class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from class_paths(value)


def needed_checkpoints(path: Path, config: dict) -> list[str]:
    """The checkpoints under runs/ that a recipe starts from (not the ones it writes itself)."""
    text = yaml.safe_dump(config) + path.read_text()  # the config, and the header's --ckpt_path
    own = set(re.findall(r"runs/([\w.-]+)", yaml.safe_dump(config.get("trainer") or {})))
    found = set(re.findall(r"runs/([\w.-]+)/checkpoints/last\.ckpt", text)) - own
    return sorted(f"runs/{name}/checkpoints/last.ckpt" for name in found)


def gpt2kit(capsys, *args: str) -> str:
    """`python -m gpt2kit ARGS` in this process; its stdout (exit 0 expected)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["gpt2kit"])  # main() hands its arguments to LightningCLI through sys.argv
        try:
            main(list(args))
        except SystemExit as exit:
            assert not exit.code, f"exit {exit.code}: {capsys.readouterr().err[-2000:]}"
    return capsys.readouterr().out


def print_config(capsys, path: Path, *extra: str) -> dict:
    out = gpt2kit(capsys, *plugin_args(path), command(path), "--config", str(path), *extra, "--print_config")
    config = yaml.safe_load(out)
    for class_path in class_paths(config):  # resolved to full, importable class paths
        module, _, name = class_path.rpartition(".")
        assert module and hasattr(importlib.import_module(module), name), class_path
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The one folder all recipes run in, and the recipes already run there."""
    root = tmp_path_factory.mktemp("recipes")
    (root / "prompts.txt").write_text("ROMEO:\nJULIET:\n")  # predict's default prompts file
    return root, {}


def run_recipe(path: Path, workdir, capsys, monkeypatch) -> dict:
    """Two steps of `path` in the shared folder, after the recipes whose checkpoints it starts from."""
    root, done = workdir
    if path in done:
        return done[path]
    monkeypatch.chdir(root)
    for name in plugin_args(path)[1:]:
        monkeypatch.syspath_prepend(str(path.parents[1]))
        assert importlib.import_module(name)
    extra = [*TWO_STEPS, *NEEDS.get(ID[path], [])]
    config = print_config(capsys, path, *extra)
    for ckpt in needed_checkpoints(path, config):
        if not (root / ckpt).is_file():
            stage = Path(ckpt).parts[1]
            (producer,) = [p for p in FILES if p.stem == stage and not is_study(p)]  # runs/NAME ← NAME.yaml
            run_recipe(producer, workdir, capsys, monkeypatch)
            assert (root / ckpt).is_file(), f"{ID[producer]} did not leave {ckpt}"
    if command(path) == "predict":
        (ckpt,) = needed_checkpoints(path, config)
        extra += [
            "--ckpt_path",
            ckpt,
            "--data.sampling.max_new_tokens=2",
            "--trainer.callbacks.output=out.jsonl",
        ]
    gpt2kit(capsys, *plugin_args(path), command(path), "--config", str(path), *extra)
    done[path] = config
    return config


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in FILES if not is_study(p)], ids=ID.get)
def test_recipe_parses_and_runs_two_steps(path, workdir, capsys, monkeypatch, isolated):  # noqa: F811
    if starts_from_the_hub(path):  # hf:gpt2 needs a hub cache: parsed here, trained in tests/test_hub.py
        assert print_config(capsys, path)["model"]["init_from"].startswith("hf:")
        return
    if reads_from_the_hub(
        path
    ):  # a hub dataset: parsed here (no download), trained in tests/test_hub_data.py
        assert print_config(capsys, path)["data"]["init_args"]["source"].startswith("hf:datasets/")
        return
    config = run_recipe(path, workdir, capsys, monkeypatch)
    root, _ = workdir
    if command(path) == "predict":
        lines = (root / "out.jsonl").read_text().splitlines()
        assert len(lines) == 2  # one completion per prompt
        return
    logger = config["trainer"]["logger"]["init_args"]
    (metrics,) = (root / logger["save_dir"] / logger["name"]).glob("version_*/metrics.csv")
    with open(metrics, newline="") as f:
        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss")})
    assert steps == [0, 1]  # two optimizer steps, trained and logged


@pytest.mark.parametrize("path", [p for p in FILES if is_study(p)], ids=ID.get)
def test_ablation_grid_plans_every_run(path, tmp_path, capsys, caplog, monkeypatch, isolated):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="gpt2kit.ablate")
    for _ in plugin_args(path)[1:]:
        monkeypatch.syspath_prepend(str(path.parents[1]))
    monkeypatch.chdir(tmp_path)
    out = gpt2kit(capsys, "ablate", "--config", str(path), "--dry_run")
    study = yaml.safe_load(path.read_text())
    seeds = len(study["seeds"])
    assert re.search(rf"\d+ runs: \d+ variants × {seeds} seeds", out), out[-1000:]
    assert not [m for m in caplog.messages if "does not parse" in m]
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
