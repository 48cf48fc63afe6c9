"""Shared fixtures: real data through GPT2KIT_DATA, a private cache, tiny model settings."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# The corpora: $GPT2KIT_DATA, else ../shared/data beside the checkout (or beside a folder above it, for
# git worktrees)
SHARED_DATA = (
    Path(os.environ["GPT2KIT_DATA"])
    if os.environ.get("GPT2KIT_DATA")
    else next(
        (p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
        REPO.parent / "shared" / "data",
    )
)

# Tiny models gain nothing from several threads, and threads fighting over 2 cores (or over pytest-xdist
# workers) can slow them down many times; subprocesses (the CLI tests) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Dotted overrides that shrink any pretraining recipe to a few fast steps.
TINY = [
    "--model.arch.n_layer=2",
    "--model.arch.n_head=2",
    "--model.arch.n_embd=32",
    "--model.arch.block_size=32",
    "--trainer.max_steps=3",
    "--trainer.log_every_n_steps=1",
    "--trainer.val_check_interval=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session", autouse=True)
def data_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point GPT2KIT_DATA at the shared corpora (unless set) and give the session its own cache."""
    if not os.environ.get("GPT2KIT_DATA") and SHARED_DATA.is_dir():
        os.environ["GPT2KIT_DATA"] = str(SHARED_DATA)
    os.environ["GPT2KIT_CACHE"] = str(tmp_path_factory.mktemp("gpt2kit-cache"))


@contextmanager
def cwd(path):
    """Run a block in another working directory (recipes write under ./runs)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# The SLURM tests' cluster fixture (tests/slurmcluster.py), shared by test_slurm.py and test_slurm_requeue.py.
from slurmcluster import cluster  # noqa: E402, F401
