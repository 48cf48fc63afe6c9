import math

import lightning as L
import pytest
import torch

from gpt2kit import GPT2KitError, preset
from gpt2kit.checkpoint import load_module, read_checkpoint
from gpt2kit.data import TextDataModule
from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor


def _trainer(tmp_path, steps: int, **kw) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


@pytest.fixture
def data():
    return TextDataModule("tinyshakespeare", block_size=32, batch_size=8, val_max_windows=32)


def test_loss_decreases(tmp_path, data):
    L.seed_everything(0)
    module = GPTLitModule(
        preset("nano", vocab_size=data.vocab_size), optim=OptimConfig(lr=3e-3, warmup_steps=5)
    )
    trainer = _trainer(tmp_path, 60, limit_val_batches=4, val_check_interval=60)
    before = trainer.validate(module, data, verbose=False)[0]["val_loss"]
    assert before == pytest.approx(math.log(65), abs=0.3)  # an untrained model is near-uniform
    trainer.fit(module, data)
    after = trainer.callback_metrics["val_loss"].item()
    assert after < before - 0.5


def test_checkpoint_round_trip_gives_identical_logits_and_tokenizer(tmp_path, data):
    L.seed_everything(0)
    module = GPTLitModule(preset("nano", vocab_size=data.vocab_size))
    trainer = _trainer(tmp_path, 3, limit_val_batches=1)
    trainer.fit(module, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = read_checkpoint(path)  # weights_only: nothing but tensors and plain data
    assert ckpt["hyper_parameters"]["attention"] == {"class_path": "gpt2kit.nn.attention.CausalSelfAttention"}
    loaded = load_module(path)
    idx = torch.randint(0, data.vocab_size, (2, 16))
    module.eval()
    assert torch.equal(module(idx), loaded(idx))
    assert loaded.tokenizer == data.tokenizer


def test_optimizer_decays_only_matrices(data):
    module = GPTLitModule(preset("nano", vocab_size=data.vocab_size))
    decay, no_decay = module.param_groups()
    assert all(p.dim() == 2 for p in decay["params"])
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert (
        id(module.model.wte.weight) in no_decay_ids and id(module.model.position.wpe.weight) in no_decay_ids
    )
    assert any(p.dim() == 1 for p in no_decay["params"])
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == module.model.num_params()


def test_lr_schedule_warmup_then_cosine_to_min():
    f = [lr_factor(s, warmup=10, decay=100, min_ratio=0.1) for s in range(120)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.1 + 0.5 * 0.9)  # half-way down the cosine
    assert f[100] == f[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_tokenizer_mismatch_with_data_is_refused(tmp_path, data):
    module = GPTLitModule(preset("nano", vocab_size=data.vocab_size))
    trainer = _trainer(tmp_path, 1, limit_val_batches=1)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_module(tmp_path / "m.ckpt")
    loaded.tokenizer.chars = loaded.tokenizer.chars[::-1]  # a different vocabulary order
    loaded.tokenizer._build()
    with pytest.raises(GPT2KitError, match="differs from the data's"):
        _trainer(tmp_path, 1).validate(loaded, data, verbose=False)


def test_unreadable_and_malicious_checkpoints_are_refused(tmp_path):
    with pytest.raises(GPT2KitError, match="does not exist"):
        load_module(tmp_path / "missing.ckpt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Evil()}, evil)
    with pytest.raises(GPT2KitError, match="refused to load"):
        load_module(evil)
