"""Hugging Face GPT-2 layout in and out: parity with transformers, round trips, refusals.

Models are random GPT2LMHeadModels saved with save_pretrained; nothing is downloaded.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from gpt2kit import GPT2KitError, preset
from gpt2kit.checkpoint import load_module, load_weights, read_checkpoint, save_checkpoint
from gpt2kit.commands import main
from gpt2kit.decoding import SamplingConfig, generate
from gpt2kit.interop.hf import export_hf, import_hf, read_hf_dir
from gpt2kit.tokenizers import CharTokenizer, GPT2Tokenizer, HFTokenizer
from gpt2kit.training.lit import GPTLitModule

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")

SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64),
    dict(n_layer=3, n_head=4, n_embd=64, vocab_size=257, n_positions=128, n_inner=128),
    dict(n_layer=1, n_head=3, n_embd=48, vocab_size=50, n_positions=32, layer_norm_epsilon=1e-6),
]


def hf_model(path, seed=0, **shape) -> "transformers.GPT2LMHeadModel":
    """A random GPT-2 (init std 0.1, so that greedy decoding does not just repeat a token), saved to path."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**shape, initializer_range=0.1, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=range(len(SHAPES)), ids=lambda i: f"shape{i}")
def pair(request, tmp_path_factory):
    """(transformers model, the same weights imported into gpt2kit)."""
    tmp = tmp_path_factory.mktemp("hf")
    hf = hf_model(tmp / "hf", **SHAPES[request.param])
    ckpt = import_hf(tmp / "hf", tmp / "model.ckpt")
    return hf, load_module(ckpt).model, tmp


def test_logits_match_transformers(pair):
    hf, ours, _ = pair
    idx = torch.randint(0, hf.config.vocab_size, (2, hf.config.n_positions))
    with torch.no_grad():
        expected = hf(idx).logits
    assert (ours(idx) - expected).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(pair):
    hf, ours, _ = pair
    prompt = torch.randint(0, hf.config.vocab_size, (1, 7))
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),  # else transformers masks every token equal to pad_token_id
        do_sample=False,
        max_new_tokens=20,
        eos_token_id=None,
        pad_token_id=0,
    )
    got = generate(ours, prompt, SamplingConfig(max_new_tokens=20, temperature=0))[0].tokens
    assert got == expected[0, 7:].tolist()


def test_left_padded_batch_matches_transformers(pair):
    hf, ours, _ = pair
    ids = torch.randint(0, hf.config.vocab_size, (3, 9))
    lengths = [9, 4, 6]
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, 9 - n :] = 1
    padded = ids * mask  # pad id 0 on the left (the mask, not the id, tells transformers what is padding)
    expected = hf.generate(
        padded, attention_mask=mask, do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0
    )
    prompts = [ids[i, 9 - n :].tolist() for i, n in enumerate(lengths)]
    got = generate(ours, prompts, SamplingConfig(max_new_tokens=12, temperature=0))
    assert [c.tokens for c in got] == expected[:, 9:].tolist()


def test_export_import_export_is_lossless(pair):
    hf, _, tmp = pair
    first = export_hf(tmp / "model.ckpt", tmp / "export1")
    import_hf(first, tmp / "again.ckpt")
    second = export_hf(tmp / "again.ckpt", tmp / "export2")
    a = safetensors.load_file(first / "model.safetensors")
    b = safetensors.load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "config.json").read_text() == (second / "config.json").read_text()
    # ... and transformers reads the export back to the very same model.
    original = hf.state_dict()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(first).state_dict()
    for key, value in reloaded.items():
        assert torch.equal(value, original[key]), key


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    hf = hf_model(tmp_path / "src", **SHAPES[0])
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    ours = load_module(import_hf(folder, tmp_path / "m.ckpt")).model
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-4


class Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Exploit(marker)}, path)
    with pytest.raises(GPT2KitError, match="refused to load"):
        load_module(path)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    torch.save({"wte.weight": Exploit(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(GPT2KitError, match="refused to load"):
        read_hf_dir(folder)
    assert not marker.exists()


def test_folder_that_is_not_gpt2_layout_names_the_missing_file(tmp_path):
    with pytest.raises(GPT2KitError, match="config.json is missing"):
        import_hf(tmp_path, tmp_path / "x.ckpt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(GPT2KitError, match=r"model.safetensors \(or pytorch_model.bin\) is missing"):
        import_hf(tmp_path, tmp_path / "x.ckpt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GPT2KitError, match="model_type='llama', not 'gpt2'"):
        import_hf(tmp_path, tmp_path / "x.ckpt")
    with pytest.raises(GPT2KitError, match="is not a folder"):
        import_hf(tmp_path / "nowhere", tmp_path / "x.ckpt")


def test_cli_import_and_export(tmp_path, capsys):
    hf_model(tmp_path / "hf", **SHAPES[0])
    main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "m.ckpt")])
    main(["export-hf", str(tmp_path / "m.ckpt"), str(tmp_path / "out")])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit:
        main(["import-hf", str(tmp_path / "out" / "model.safetensors"), str(tmp_path / "x.ckpt")])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not a folder" in errors[0]


def test_shapes_that_do_not_fit_are_listed(tmp_path):
    hf_model(tmp_path / "hf", **SHAPES[0])
    ckpt = import_hf(tmp_path / "hf", tmp_path / "m.ckpt")
    other = GPTLitModule(preset("nano", vocab_size=100, block_size=64, n_embd=32, n_head=2, n_layer=3))
    with pytest.raises(GPT2KitError) as err:
        load_weights(other, read_checkpoint(ckpt)["state_dict"], source=str(ckpt))
    assert "missing: model.blocks.2.ln_1.weight" in str(err.value)
    narrow = GPTLitModule(preset("nano", vocab_size=90, block_size=64, n_embd=32, n_head=2, n_layer=2))
    with pytest.raises(
        GPT2KitError, match=r"shape mismatch \(file vs model\): model.wte.weight \(100, 32\) vs \(90, 32\)"
    ):
        load_weights(narrow, read_checkpoint(ckpt)["state_dict"], source=str(ckpt))


def test_init_from_loads_weights_and_tokenizer_and_refuses_misfits(tmp_path):
    hf = hf_model(tmp_path / "hf", **SHAPES[0])
    tok = CharTokenizer()
    tok.train(["abcdefgh ij\n"])
    (tmp_path / "tokenizer.json").write_text(tok.to_json())
    ckpt = import_hf(tmp_path / "hf", tmp_path / "m.ckpt", tokenizer=tmp_path / "tokenizer.json")
    arch = preset("nano", vocab_size=100, block_size=64, n_embd=32, n_head=2, n_layer=2, dropout=0.1)
    module = GPTLitModule(arch, init_from=str(ckpt))
    assert not torch.equal(module.model.wte.weight, hf.transformer.wte.weight)
    module.load_init_from()  # what the module does at setup, once
    assert torch.equal(module.model.wte.weight, hf.transformer.wte.weight)
    assert module.tokenizer == tok
    assert module.hparams["init_from"] == str(ckpt)
    misfit = GPTLitModule(preset("nano", vocab_size=100, block_size=64, n_embd=64), init_from=str(ckpt))
    with pytest.raises(GPT2KitError, match="do not fit this model.*make model.arch and the components match"):
        misfit.load_init_from()


def test_imported_checkpoint_validates_through_the_cli(tmp_path):
    """An imported model with a dataset's tokenizer is evaluated by `validate --ckpt_path`."""
    from conftest import RECIPES

    from gpt2kit.commands import lightning_main
    from gpt2kit.data import TextDataModule

    data = TextDataModule("tinyshakespeare")
    (tmp_path / "tokenizer.json").write_text(data.tokenizer.to_json())
    hf_model(tmp_path / "hf", n_layer=1, n_head=2, n_embd=32, vocab_size=data.vocab_size, n_positions=32)
    ckpt = import_hf(tmp_path / "hf", tmp_path / "m.ckpt", tokenizer=tmp_path / "tokenizer.json")
    cli = lightning_main(
        [
            "validate",
            "--config", str(RECIPES / "pretrain" / "shakespeare-char.yaml"),
            "--ckpt_path", str(ckpt),
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )  # fmt: skip
    assert cli.model.model.config.n_layer == 1  # the checkpoint's architecture, not the recipe's
    assert 3.0 < cli.trainer.callback_metrics["val_loss"].item() < 6.0


def test_gpt2_tokenizer_files_are_imported_and_streamed(tmp_path, capsys):
    bpe = Path(os.environ.get("GPT2KIT_DATA", SHARED_DATA)) / "gpt2-bpe"
    if not bpe.is_dir():
        pytest.skip(f"needs OpenAI's GPT-2 vocabulary in {bpe}")
    folder = tmp_path / "hf"
    hf_model(folder, n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=32)
    (folder / "vocab.json").write_bytes((bpe / "encoder.json").read_bytes())  # the same files, HF's names
    (folder / "merges.txt").write_bytes((bpe / "vocab.bpe").read_bytes())
    ckpt = import_hf(folder, tmp_path / "m.ckpt")
    tok = load_module(ckpt).tokenizer
    assert isinstance(tok, HFTokenizer) and tok.eot_id == 50256 and tok.vocab_size == 50257
    reference = transformers.GPT2Tokenizer.from_pretrained(folder)
    text = "Hello world!  It's 2024, naïve café 中文<|endoftext|>x\n\n"
    assert tok.encode(text, allowed_special="all") == reference.encode(text)  # HF reads specials in text
    assert tok.encode(text) == GPT2Tokenizer().encode(
        text
    )  # gpt2kit's policy: specials are text unless allowed
    main(["generate", "--ckpt", str(ckpt), "--prompt", "Hello", "--max_new_tokens", "8", "--seed", "0"])
    assert capsys.readouterr().out.startswith("Hello")
    exported = export_hf(ckpt, tmp_path / "out")
    assert transformers.GPT2Tokenizer.from_pretrained(exported).encode(text) == reference.encode(text)


def test_save_checkpoint_is_what_load_module_reads(tmp_path):
    module = GPTLitModule(preset("nano"))
    tok = CharTokenizer()
    tok.train(["hello"])
    module.tokenizer = tok
    loaded = load_module(save_checkpoint(module, tmp_path / "m.ckpt"))
    idx = torch.randint(0, 65, (1, 8))
    module.eval()
    assert torch.equal(loaded(idx), module(idx)) and loaded.tokenizer == tok
