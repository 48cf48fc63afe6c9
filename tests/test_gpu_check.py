"""benchmarks/gpu_check.py runs the day a GPU is lent: its --dry mode prints the whole table on the CPU."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (its main() reads sys.argv), imported afresh."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_dry_mode_prints_one_table_with_every_row(gpu_check, tmp_path, monkeypatch, capsys):
    # In this process (no interpreter, torch and Lightning start: most of what a subprocess would cost),
    # one thread as in the other tests.
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry"])
    gpu_check.main()  # returns: no SystemExit
    done = capsys.readouterr()
    table = [line for line in done.out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | ms/step | tokens/s | MFU | peak memory |")
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table[1:]}
    for name in ("gpt2kit AdamW, eager", "gpt2kit AdamW, compile", "gpt2kit MuonAdamW, compile"):
        cells = rows[name]
        assert float(cells[1]) > 0 and float(cells[2].replace(",", "")) > 0  # ms/step, tokens/s measured
        assert re.fullmatch(r"\d+\.\d%", cells[3])  # MFU against the peak named above the table
    assert rows["gpt2kit AdamW, eager"][5] == "1.00×"
    assert float(rows["torch.optim.Muon step"][1]) > 0 and float(rows["gpt2kit BatchedMuon step"][1]) > 0
    assert "peak for MFU" in done.out and "nanoGPT" not in done.out  # no checkout given: no row


def test_without_a_gpu_or_dry_it_says_what_to_do(gpu_check, monkeypatch, capsys):
    module = gpu_check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    with pytest.raises(SystemExit, match="error: no CUDA device: run on a GPU, or pass --dry"):
        module.main()
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry", "--nanogpt", "/nonexistent"])
    with pytest.raises(SystemExit, match="has no train.py: pass the folder of a karpathy/nanoGPT checkout"):
        module.main()
