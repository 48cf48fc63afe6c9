"""`hf:NAME` wherever a checkpoint path goes, against a hand-built hub cache (no network).

The cache holds a tiny random GPT-2 with the real GPT-2 vocabulary (tests/hubcache.py); HF_HUB_OFFLINE
is set, so nothing is ever fetched.
"""

import pytest
import torch
from conftest import RECIPES as RECIPE_DIR
from conftest import SHARED_DATA, cwd
from hubcache import COMMIT, build_hub_cache, tiny_overrides

from gpt2kit import GPT2KitError
from gpt2kit.checkpoint import load_module
from gpt2kit.commands import main
from gpt2kit.interop import hub

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    model = build_hub_cache(home, SHARED_DATA)
    return home, model


@pytest.fixture(autouse=True)
def offline(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(hf_home[0]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_names_map_to_repositories_and_revisions():
    assert hub.parse("hf:gpt2") == ("openai-community/gpt2", None)
    assert hub.parse("hf:openai-community/gpt2-medium") == ("openai-community/gpt2-medium", None)
    assert hub.parse("hf:ORG/NAME@v1.0") == ("ORG/NAME", "v1.0")
    assert hub.resolve_checkpoint("runs/x/last.ckpt") == "runs/x/last.ckpt"  # paths pass through
    with pytest.raises(GPT2KitError, match="not a Hugging Face model name"):
        hub.parse("hf:a/b/c")


def test_hf_gpt2_resolves_from_the_cache_to_the_same_model(hf_home, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    ckpt = hub.resolve_checkpoint("hf:gpt2")
    assert ckpt.endswith(f"{COMMIT}.ckpt")
    assert hub.resolve_checkpoint(f"hf:openai-community/gpt2@{COMMIT}") == ckpt  # pinned: the same file
    module = load_module(ckpt)
    idx = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert (module.model(idx) - hf_home[1](idx).logits).abs().max() < 1e-4
    assert module.tokenizer.encode("Hello world") == [15496, 995]  # GPT-2's ids, from the vocabulary files


def test_generate_and_import_hf_take_hub_names(hf_home, tmp_path, capsys):
    """hf:gpt2 generates what the same weights give through import-hf, and what transformers gives."""
    greedy = ["--prompt", "Hello", "--max_new_tokens", "8", "--temperature", "0", "--stop_at_eot", "false"]
    main(["generate", "--ckpt", "hf:gpt2", *greedy])
    from_hub = capsys.readouterr().out
    main(["import-hf", "hf:gpt2", str(tmp_path / "gpt2.ckpt")])
    imported = load_module(tmp_path / "gpt2.ckpt")
    assert imported.model.config.n_layer == 2
    capsys.readouterr()
    main(["generate", "--ckpt", str(tmp_path / "gpt2.ckpt"), *greedy])
    assert capsys.readouterr().out == from_hub
    ids = torch.tensor([imported.tokenizer.encode("Hello")])
    with torch.no_grad():
        reference = hf_home[1].generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=8, min_new_tokens=8, pad_token_id=0)  # fmt: skip
    assert from_hub == "Hello" + imported.tokenizer.decode(reference[0, ids.shape[1] :].tolist()) + "\n"


def test_offline_and_not_cached_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", "hf:gpt2-medium", "--prompt", "Hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (
        "hf:gpt2-medium" in err[0]
        and "HF_HUB_OFFLINE" in err[0]
        and "hf download openai-community/gpt2-medium" in err[0]
    )


RECIPES = [
    ("finetune/gpt2-partial.yaml", ["--model.finetune.n=1", "--data.init_args.source={corpus}"]),
    ("chat/gpt2-topical-chat.yaml", ["--data.init_args.batch_size=2", "--data.init_args.val_max_samples=4"]),
]


@pytest.mark.parametrize("recipe,extra", RECIPES, ids=[r for r, _ in RECIPES])
def test_gpt2_recipes_start_from_hf_gpt2(hf_home, tmp_path, recipe, extra):
    """The recipes with init_from: hf:gpt2 train a few steps from the (tiny) hub model."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:20000])
    args = [
        "fit",
        "--config",
        str(RECIPE_DIR / recipe),
        *tiny_overrides(),
        *(e.format(corpus=corpus) for e in extra),
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    with cwd(tmp_path):
        main(args)
    run = next((tmp_path / "runs").iterdir())
    last = load_module(run / "checkpoints" / "last.ckpt")
    base = load_module(hub.resolve_checkpoint("hf:gpt2"))
    n = base.model.config.vocab_size
    assert last.model.config.vocab_size >= n
    assert last.tokenizer.encode("Hello world") == [15496, 995]
    changed = not torch.equal(last.model.blocks[-1].mlp.c_fc.weight, base.model.blocks[-1].mlp.c_fc.weight)
    assert changed, "the last block did not train"
    if "finetune" in recipe:  # only the last block trains: the first is GPT-2's
        assert torch.equal(last.model.blocks[0].mlp.c_fc.weight, base.model.blocks[0].mlp.c_fc.weight)
    else:
        assert last.chat_template is not None and last.model.config.vocab_size == n + 4


def test_a_hub_name_in_python_says_how_to_resolve_it(hf_home):
    """Only the command line fetches hf: names; in Python the error names the function that does."""
    from gpt2kit import GPTConfig
    from gpt2kit.training.lit import GPTLitModule

    module = GPTLitModule(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257, bias=True),
                          init_from="hf:gpt2")  # fmt: skip
    with pytest.raises(
        GPT2KitError, match=r"in Python, give gpt2kit.interop.hub.resolve_checkpoint\('hf:gpt2'\)"
    ):
        module.load_init_from()
    local = hub.resolve_checkpoint("hf:gpt2")  # what the message says to do works
    module = GPTLitModule(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257, bias=True),
                          init_from=local)  # fmt: skip
    module.load_init_from()
    assert module.tokenizer is not None and module.tokenizer.vocab_size == 50257
