"""Precision, compile, throughput/MFU logging, and the hardware flags' one-line errors."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import RECIPES

from gpt2kit import GPT, GPT2KitError, hardware, perf, preset
from gpt2kit.checkpoint import load_module
from gpt2kit.commands import lightning_main
from gpt2kit.data import TextDataModule
from gpt2kit.training.lit import GPTLitModule

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")


@pytest.fixture
def data():
    return TextDataModule("tinyshakespeare", block_size=32, batch_size=8, val_max_windows=16)


def _fit(module, data, steps=4, **kw):
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=1, log_every_n_steps=1, **kw,
    )  # fmt: skip
    trainer.fit(module, data)
    return trainer


@pytest.mark.skipif(not hardware.native_bf16("cpu"), reason="this CPU has no native bf16")
def test_bf16_mixed_on_cpu_trains_and_logs_tokens_per_sec_and_mfu(data):
    L.seed_everything(0)
    trainer = _fit(GPTLitModule(preset("nano", vocab_size=65)), data, precision="bf16-mixed")
    m = trainer.callback_metrics
    assert torch.isfinite(m["train_loss"]) and m["tokens_per_sec"] > 0 and 0 < m["mfu"] < 1
    assert ("cpu", torch.bfloat16) in perf._PEAKS  # the peak was measured in the training dtype


@pytest.mark.parametrize("accumulate", [1, 2])
def test_throughput_is_logged_where_the_logger_writes_averaged_over_the_interval(data, tmp_path, accumulate):
    """self.log costs ~2 ms: train_loss and tokens/s are logged once per log_every_n_steps (optimizer
    steps, as Lightning's logger counts them: every micro-batch of such a step), the speed from every step
    since the last."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    trainer = L.Trainer(
        max_steps=7, logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=3, accumulate_grad_batches=accumulate,
    )  # fmt: skip
    module = GPTLitModule(preset("nano", vocab_size=65))
    calls, log = [], module.log
    module.log = lambda name, *a, **kw: (calls.append(name), log(name, *a, **kw))
    trainer.fit(module, data)
    assert calls.count("tokens_per_sec") == calls.count("train_loss") == 2 * accumulate
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    speed = {int(r["step"]) for r in rows if r.get("tokens_per_sec")}
    assert speed == {int(r["step"]) for r in rows if r.get("train_loss")} == {2, 5}
    assert all(float(r["tokens_per_sec"]) > 0 for r in rows if r.get("tokens_per_sec"))


def test_flops_per_token_is_nanogpts_estimate_for_gpt2():
    with torch.device("meta"):
        model = GPT(preset("gpt2"))
    n = 124_439_808 - 1024 * 768  # all parameters but the position table (wte counts: the tied head uses it)
    assert perf.matmul_params(model) == n
    assert perf.flops_per_token(model) == 6 * n + 12 * 12 * 1024 * 768
    assert (
        perf.precision_dtype("bf16-mixed") == torch.bfloat16
        and perf.precision_dtype("16-mixed") == torch.float16
    )
    assert perf.precision_dtype("32-true") == torch.float32


@pytest.mark.slow
def test_compile_keeps_parameter_names_so_checkpoints_load_uncompiled(tmp_path, data):
    L.seed_everything(0)
    module = GPTLitModule(preset("nano", vocab_size=65), compile=True)
    eager_keys = list(module.state_dict())
    trainer = _fit(module, data, steps=2, default_root_dir=tmp_path)
    assert module._compiled and list(module.state_dict()) == eager_keys
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    idx = torch.randint(0, 65, (2, 16))
    assert torch.allclose(load_module(tmp_path / "c.ckpt")(idx), module.eval()(idx), atol=1e-5)


# -- bad hardware flags ---------------------------------------------------------------------------------------------


def test_hardware_flags_that_cannot_work_are_refused_in_one_line(monkeypatch):
    with pytest.raises(GPT2KitError, match=r"unknown trainer.strategy 'dpp': did you mean ddp"):
        hardware.check_trainer_flags(strategy="dpp")
    cores = hardware.available_devices("cpu")
    with pytest.raises(
        GPT2KitError, match=rf"trainer.devices={cores + 1} but this machine has {cores} CPU cores"
    ):
        hardware.check_trainer_flags(accelerator="cpu", devices=cores + 1)
    with pytest.raises(GPT2KitError, match=rf"names device {7 + cores}"):
        hardware.check_trainer_flags(accelerator="cpu", devices=[0, 7 + cores])
    monkeypatch.setattr(hardware, "native_bf16", lambda kind: False)
    with pytest.raises(GPT2KitError, match=r"needs native bfloat16 .* use --trainer.precision 32-true"):
        hardware.check_trainer_flags(accelerator="cpu", precision="bf16-mixed")
    for ok in (
        {},
        {"strategy": "ddp", "devices": 1},
        {"devices": -1},
        {"devices": "auto"},
        {"precision": "32-true"},
    ):
        hardware.check_trainer_flags(**ok)


def test_trainer_errors_from_the_recipe_are_gpt2kit_errors():
    base = ["--config", SHAKESPEARE, "--trainer.accelerator=cpu"]
    with pytest.raises(GPT2KitError, match="unknown trainer.strategy 'fsdpp'"):
        lightning_main([*base, "--trainer.strategy=fsdpp"], run=False)
    if not torch.cuda.is_available():  # Lightning's own check, cut to its first line
        with pytest.raises(GPT2KitError, match=r"^trainer settings: .*"):
            lightning_main(["--config", SHAKESPEARE, "--trainer.accelerator=gpu"], run=False)


def test_too_many_devices_on_the_command_line_is_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "fit", "--config", SHAKESPEARE, "--trainer.accelerator=cpu",
         "--trainer.devices=4096"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "trainer.devices=4096 but this machine has" in errors[0] and "lower --trainer.devices" in errors[0]


# -- CUDA (run with `pytest -m gpu` where there is one) -----------------------------------------------------------------


@pytest.fixture
def local_data(tmp_path):
    """Text written here: a GPU machine may be offline, with no corpus to fetch."""
    (tmp_path / "text.txt").write_text("".join(chr(97 + (i * 7919) % 26) for i in range(200_000)))
    return TextDataModule(
        str(tmp_path / "text.txt"), block_size=32, batch_size=8, cache=str(tmp_path / "prep")
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("compile", [False, True])
def test_mixed_precision_and_compile_on_cuda(local_data, precision, compile):
    data = local_data
    L.seed_everything(0)
    module = GPTLitModule(preset("nano", vocab_size=65), compile=compile)
    trainer = _fit(module, data, steps=6, accelerator="gpu", devices=1, precision=precision)
    m = trainer.callback_metrics
    assert torch.isfinite(m["train_loss"]) and 0 < m["mfu"] < 1
    assert trainer.optimizers[0].defaults["fused"]  # fused AdamW on CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attention_takes_the_flash_kernel_on_cuda():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = GPT(preset("gpt2", n_layer=2)).cuda()
    idx = torch.randint(0, 50257, (2, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        logits = model(idx)  # raises if the flash kernel cannot take this call
    logits.float().mean().backward()
    assert logits.shape == (2, 256, 50257)
