"""benchmarks/gpu_check.py runs the day a GPU is lent: its --dry mode prints the whole table on the CPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_mode_prints_one_table_with_every_row(tmp_path):
    env = {**os.environ, "GPT2KIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry"], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | ms/step | tokens/s | MFU | peak memory |")
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table[1:]}
    for name in ("gpt2kit AdamW, eager", "gpt2kit AdamW, compile", "gpt2kit MuonAdamW, compile"):
        cells = rows[name]
        assert float(cells[1]) > 0 and float(cells[2].replace(",", "")) > 0  # ms/step, tokens/s measured
        assert re.fullmatch(r"\d+\.\d%", cells[3])  # MFU against the peak named above the table
    assert rows["gpt2kit AdamW, eager"][5] == "1.00×"
    assert float(rows["torch.optim.Muon step"][1]) > 0 and float(rows["gpt2kit BatchedMuon step"][1]) > 0
    assert "peak for MFU" in done.stdout and "nanoGPT" not in done.stdout  # no checkout given: no row


def test_without_a_gpu_or_dry_it_says_what_to_do(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    with pytest.raises(SystemExit, match="error: no CUDA device: run on a GPU, or pass --dry"):
        module.main()
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry", "--nanogpt", "/nonexistent"])
    with pytest.raises(SystemExit, match="has no train.py: pass the folder of a karpathy/nanoGPT checkout"):
        module.main()
