"""Chat fine-tuning: the recipes run from a pretrained base, the vocabulary grows to the chat tokens,
the validation loss is over assistant tokens only, and LoRA and resuming work with the grown vocabulary.

The base is a tiny untrained GPT-2-tokenizer model saved where the recipes look for it; the CLI runs in
this process (``gpt2kit.commands.main``).
"""

from __future__ import annotations

import csv
import functools
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES, cwd

from gpt2kit import GPT2KitError, GPTConfig
from gpt2kit.chat import ChatDataModule
from gpt2kit.chat.template import RoleTokensTemplate
from gpt2kit.checkpoint import load_module, read_checkpoint, save_checkpoint
from gpt2kit.commands import main
from gpt2kit.data.chat import IGNORE_INDEX
from gpt2kit.finetune import LoRA
from gpt2kit.nn import LayerNorm, UntiedLMHead
from gpt2kit.tokenizers import CharTokenizer, CheckpointTokenizer, GPT2Tokenizer
from gpt2kit.training.lit import GPTLitModule, OptimConfig

BASE = "runs/gutenberg-gpt2/checkpoints/last.ckpt"  # where both chat recipes find their base
TINY_CHAT = [
    "--model.arch.n_layer=2",
    "--model.arch.n_head=2",
    "--model.arch.n_embd=32",
    "--model.arch.block_size=64",
    "--trainer.max_steps=3",
    "--trainer.val_check_interval=3",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.max_conversations=20",
    "--data.init_args.batch_size=4",
]


def tiny_module(vocab_size: int, **kwargs) -> GPTLitModule:
    arch = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=vocab_size, bias=False)
    return GPTLitModule(arch, norm=functools.partial(LayerNorm, bias=False), **kwargs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding a tiny 'pretrained' base with GPT-2's tokenizer, then both recipes' runs."""
    tmp = tmp_path_factory.mktemp("chat-train")
    torch.manual_seed(0)
    base = tiny_module(50257)
    base.tokenizer = GPT2Tokenizer()
    save_checkpoint(base, tmp / BASE)
    argv = sys.argv[:]  # main() hands its arguments to LightningCLI through sys.argv
    try:
        with cwd(tmp):
            for recipe in ("smoke", "topical-chat"):
                main(["fit", "--config", str(RECIPES / "chat" / f"{recipe}.yaml"), *TINY_CHAT])
    finally:
        sys.argv = argv
    return tmp


def metrics(run_dir):
    with open(next(run_dir.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("val_loss")]


@pytest.mark.parametrize("recipe,run", [("smoke", "chat-smoke"), ("topical-chat", "chat-topical")])
def test_recipe_fine_tunes_the_base_into_a_chat_model(recipe, run, workdir):
    ckpt = read_checkpoint(workdir / "runs" / run / "checkpoints" / "last.ckpt")
    assert ckpt["gpt2kit"]["chat_template"] == RoleTokensTemplate().to_dict()
    assert ckpt["hyper_parameters"]["arch"]["vocab_size"] == 50257 + 4
    assert ckpt["state_dict"]["model.wte.weight"].shape == (50261, 32)
    assert ckpt["gpt2kit"]["tokenizer"]["init_args"]["special_tokens"] == [
        "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    ]  # fmt: skip
    assert metrics(workdir / "runs" / run)[-1]["step"] == "2"  # validated at the last of 3 steps


def test_val_loss_is_over_assistant_tokens_only(workdir):
    with cwd(workdir):
        module = load_module("runs/chat-smoke/checkpoints/last.ckpt")
        dm = ChatDataModule(
            "topical-chat",
            CheckpointTokenizer(BASE),
            block_size=64,
            batch_size=4,
            max_conversations=20,
            pack=True,
        )  # the smoke recipe's data: prepared data reused
        reported = float(metrics(workdir / "runs" / "chat-smoke")[-1]["val_loss"])
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        validated = trainer.validate(module, dm, verbose=False)[0]["val_loss"]
    learned = other = 0.0
    n_learned = n_other = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits = module.model(x).flatten(0, 1)
            is_learned = y != IGNORE_INDEX
            learned += F.cross_entropy(logits, y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
            # every other next token that is not padding: the user's turns, the role markers
            nll = F.cross_entropy(logits, x.roll(-1, 1).flatten(), reduction="none").view_as(y)
            is_other = ~is_learned & (x.roll(-1, 1) != dm.tokenizer.eot_id)
            is_other[:, -1] = False
            other += nll[is_other].sum().item()
            n_learned, n_other = n_learned + is_learned.sum().item(), n_other + is_other.sum().item()
    assert n_learned > 0 and n_other > 0
    assert validated == pytest.approx(learned / n_learned, rel=1e-5)
    assert reported == pytest.approx(validated, rel=1e-4)  # the recipe run's logged val_loss is that loss
    assert abs(other / n_other - validated) > 1e-3  # and not the loss over the user's tokens


# --- the vocabulary grows from init_from ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_base(tmp_path_factory):
    """A tiny char-level base checkpoint and an extended copy of its tokenizer (chat tokens added)."""
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train(["abcdefghijklmnopqrstuvwxyz ?!.,'ABCDEFGHIJKLMNOPQRSTUVWXYZ"])
    torch.manual_seed(0)
    base = tiny_module(tok.vocab_size)
    base.tokenizer = tok
    path = tmp_path_factory.mktemp("char-base") / "base.ckpt"
    save_checkpoint(base, path)
    return str(path), tok


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_init_from_loads_the_base_rows_and_keeps_new_rows_fresh(char_base, head):
    path, tok = char_base
    extra = {} if head == "tied" else {"head": UntiedLMHead}
    if head == "untied":  # a base with its own head weight
        torch.manual_seed(1)
        base = tiny_module(tok.vocab_size, **extra)
        base.tokenizer = tok
        path = path.replace(".ckpt", "-untied.ckpt")
        save_checkpoint(base, path)
    chat_tok = CheckpointTokenizer(path)
    chat_tok.add_special_tokens(["<|user|>", "<|assistant|>", "<|end|>"])
    V = tok.vocab_size
    torch.manual_seed(2)
    module = tiny_module(V + 3, init_from=path, **extra)
    fresh = {k: v.clone() for k, v in module.model.state_dict().items()}
    module.load_init_from(chat_tok)
    state, saved = module.model.state_dict(), read_checkpoint(path)["state_dict"]
    vocab_tensors = ["wte.weight"] + (["head.lm_head.weight"] if head == "untied" else [])
    for name in vocab_tensors:
        assert torch.equal(state[name][:V], saved[f"model.{name}"])  # the base's rows
        assert torch.equal(state[name][V:], fresh[name][V:])  # the new tokens keep their initialisation
    assert torch.equal(state["blocks.1.mlp.c_fc.weight"], saved["model.blocks.1.mlp.c_fc.weight"])
    assert module.tokenizer == chat_tok and module.tokenizer.vocab_size == V + 3


def test_growth_needs_the_checkpoints_tokenizer_plus_special_tokens(char_base):
    path, tok = char_base
    other = CharTokenizer(special_tokens=["<|endoftext|>"])
    other.train(["zyxwvutsrqponmlkjihgfedcba ?!.,'ABCDEFGHIJKLMNOPQRSTUVWXYZ+++"])  # other ids
    module = tiny_module(other.vocab_size, init_from=path)
    with pytest.raises(GPT2KitError, match="is not the tokenizer of init_from .* with special tokens added"):
        module.load_init_from(other)
    with pytest.raises(GPT2KitError, match=r"shape mismatch \(file vs model\): wte.weight"):
        tiny_module(tok.vocab_size + 3, init_from=path).load_init_from()  # no tokenizer: no growth


def write_chats(path, n=24):
    import json

    lines = [
        {
            "messages": [
                {"role": "user", "content": f"hi {'abc'[i % 3]}?"},
                {"role": "assistant", "content": "hello there."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))


def test_lora_adapters_only_and_resume_keep_the_grown_vocabulary(char_base, tmp_path):
    path, _ = char_base
    write_chats(tmp_path / "chats.jsonl")

    def data():
        return ChatDataModule(
            str(tmp_path / "chats.jsonl"), CheckpointTokenizer(path), block_size=64, batch_size=4,
            cache=str(tmp_path / "prepared"),
        )  # fmt: skip

    def module():
        return tiny_module(
            data().vocab_size,
            init_from=path,
            finetune=LoRA(save_adapters_only=True),
            optim=OptimConfig(warmup_steps=0),
        )

    def trainer(steps):
        return L.Trainer(
            max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path,
        )  # fmt: skip

    first, t = module(), trainer(1)
    t.fit(first, data())
    t.save_checkpoint(tmp_path / "lora.ckpt")
    ckpt = read_checkpoint(tmp_path / "lora.ckpt")
    assert ckpt["gpt2kit"]["adapters_only"] and "model.wte.weight" in ckpt["state_dict"]  # new rows kept
    loaded = load_module(tmp_path / "lora.ckpt")
    assert torch.equal(loaded.model.wte.weight, first.model.wte.weight)
    assert loaded.chat_template == RoleTokensTemplate().to_dict()
    resumed, t = module(), trainer(2)
    t.fit(resumed, data(), ckpt_path=tmp_path / "lora.ckpt")  # --ckpt_path: growth, then the run's own state
    assert t.global_step == 2 and resumed.tokenizer.token_id("<|end|>") is not None
