"""Fine-tuning: freeze policies, layer-wise LRs, gradual unfreezing, LoRA, init_from, recipes, resume.

One tiny pretraining run (the Shakespeare recipe, TINY) provides the checkpoint everything starts
from. The CLI runs in this process (``gpt2kit.commands.main``), to keep the file well under a minute.
"""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from conftest import RECIPES, TINY, cwd

from gpt2kit import GPT, GPT2KitError, preset
from gpt2kit.checkpoint import load_module, read_checkpoint
from gpt2kit.commands import main
from gpt2kit.data import TextDataModule
from gpt2kit.finetune import (
    GradualUnfreeze,
    HeadOnly,
    LastNBlocks,
    LayerwiseLRDecay,
    LoRA,
    LoRALinear,
    PatternFreeze,
    load_pretrained,
)
from gpt2kit.nn import LayerNorm
from gpt2kit.tokenizers import CheckpointTokenizer
from gpt2kit.training.lit import GPTLitModule, OptimConfig, lr_factor

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")
NANO = preset("nano", bias=False)  # the shape TINY gives the recipe: 2 blocks of width 32, no biases


def tiny(**kwargs) -> GPTLitModule:
    """A module shaped like the TINY pretraining run (its LayerNorms have no bias either)."""
    return GPTLitModule(NANO, norm=functools.partial(LayerNorm, bias=False), **kwargs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder in which the pretraining recipe has run: runs/shakespeare-char/checkpoints/last.ckpt."""
    tmp = tmp_path_factory.mktemp("finetune")
    with cwd(tmp):
        main(["fit", "--config", SHAKESPEARE, *TINY])
    assert (tmp / "runs/shakespeare-char/checkpoints/last.ckpt").is_file()
    return tmp


@pytest.fixture(scope="module")
def base(workdir):
    return str(workdir / "runs/shakespeare-char/checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def base_weights(base):
    sd = read_checkpoint(base)["state_dict"]
    return {k.removeprefix("model."): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def data():
    return TextDataModule("tinyshakespeare", block_size=32, batch_size=4, val_max_windows=4)


def fit(module, data, steps, tmp_path, callbacks=(), ckpt_path=None):
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


class Probe(L.Callback):
    """Calls ``fn(trainer, module)`` just before each optimizer step (gradients computed, not yet applied)."""

    def __init__(self, fn):
        self.fn = fn

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.fn(trainer, pl_module)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# --- recipes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["partial-last2", "full", "lora"])
def test_recipe_runs_from_pretrain_checkpoint(recipe, workdir, base_weights):
    with cwd(workdir):  # the recipe finds runs/shakespeare-char/checkpoints/last.ckpt here
        main(["fit", "--config", str(RECIPES / "finetune" / f"{recipe}.yaml"), *TINY])
    path = workdir / "runs" / f"finetune-{recipe}" / "checkpoints" / "last.ckpt"
    with cwd(workdir):  # an adapters-only checkpoint finds its base through the relative init_from
        module = load_module(path)
    assert module.tokenizer.to_dict() == read_checkpoint(path)["gpt2kit"]["tokenizer"]
    weights = module.model.state_dict()
    # partial-last2 and lora keep the (tied) embedding frozen; full fine-tuning changes it
    frozen_embedding = torch.equal(weights["wte.weight"], base_weights["wte.weight"])
    assert frozen_embedding == (recipe != "full")
    if recipe == "lora":
        stored = read_checkpoint(path)["state_dict"]
        assert stored and all(k.endswith(("lora_A", "lora_B")) for k in stored)


def test_full_fine_tuning_checkpoint_is_not_overwritten_by_init_from_when_run_again(base, data, tmp_path):
    module = tiny(init_from=base, optim=OptimConfig(lr=1e-2, warmup_steps=0))  # no policy: all trains
    fit(module, data, 2, tmp_path).save_checkpoint(tmp_path / "full.ckpt")
    loaded = load_module(tmp_path / "full.ckpt")
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1
    )
    trainer.validate(loaded, data, verbose=False)  # setup() must not load init_from over the checkpoint
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(
        before["model.blocks.0.attn.c_attn.weight"],
        read_checkpoint(base)["state_dict"]["model.blocks.0.attn.c_attn.weight"],
    )


# --- freezing ---------------------------------------------------------------------------------------------


def test_frozen_params_bit_identical_trainable_changed_and_not_in_optimizer(
    base, base_weights, data, tmp_path
):
    module = tiny(finetune=LastNBlocks(1), init_from=base, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    trainer = fit(module, data, 3, tmp_path)
    frozen = {n for n, _ in module.model.named_parameters()} - trainable(module.model)
    assert frozen == {"wte.weight", "position.wpe.weight"} | {
        n for n in base_weights if n.startswith("blocks.0.")
    }
    after = module.model.state_dict()
    for name in frozen:
        assert torch.equal(after[name], base_weights[name]), name  # init_from loaded, then never touched
    for name in trainable(module.model):
        assert not torch.equal(after[name], base_weights[name]), name
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters() if p.requires_grad}


def test_head_only_trains_the_tied_embedding_and_pattern_picks_by_name():
    module = tiny(finetune=HeadOnly())
    assert trainable(module.model) == {"wte.weight"}  # GPT-2's head owns no weight: it is wte's
    module = tiny(finetune=PatternFreeze([r"mlp\.c_fc", r"^ln_f\."]))
    assert trainable(module.model) == {"blocks.0.mlp.c_fc.weight", "blocks.1.mlp.c_fc.weight", "ln_f.weight"}


def test_layerwise_lr_decay_groups_follow_the_formula(base, data, tmp_path):
    lr, decay, warmup, steps = 1e-3, 0.5, 2, 4
    module = tiny(
        finetune=LayerwiseLRDecay(decay),
        init_from=base,
        optim=OptimConfig(lr=lr, min_lr=1e-4, warmup_steps=warmup),
    )
    depth = {"ln_f": 0, "blocks.1": 1, "blocks.0": 2, "wte": 3, "position": 3}  # top = 0, embeddings deepest
    seen = []

    def check(trainer, m):
        step = trainer.global_step
        factor = lr_factor(step, warmup=warmup, decay=steps, min_ratio=0.1)
        for name, p in m.model.named_parameters():
            (group,) = [g for g in trainer.optimizers[0].param_groups if any(q is p for q in g["params"])]
            d = next(v for k, v in depth.items() if name.startswith(k))
            assert group["lr"] == pytest.approx(lr * factor * decay**d, rel=1e-9), (step, name)
        seen.append(step)

    fit(module, data, steps, tmp_path, [Probe(check)])
    assert seen == [0, 1, 2, 3]


def test_gradual_unfreezing_changes_the_trainable_set_exactly_at_scheduled_steps(
    base, base_weights, data, tmp_path
):
    module = tiny(finetune=GradualUnfreeze(every_k_steps=2, start_n=0), init_from=base)
    with_grad: dict[int, set[str]] = {}
    emb_unchanged: dict[int, bool] = {}

    def record(trainer, m):
        with_grad[trainer.global_step] = {n for n, p in m.model.named_parameters() if p.grad is not None}
        emb_unchanged[trainer.global_step] = torch.equal(m.model.wte.weight, base_weights["wte.weight"])

    fit(module, data, 7, tmp_path, [Probe(record)])
    names = [n for n, _ in module.model.named_parameters()]
    top = {"ln_f.weight"}
    block1 = {n for n in names if n.startswith("blocks.1.")}
    block0 = {n for n in names if n.startswith("blocks.0.")}
    expected = [
        top,
        top,
        top | block1,
        top | block1,
        top | block1 | block0,
        top | block1 | block0,
        set(names),
    ]
    assert [with_grad[s] for s in range(7)] == expected
    assert all(emb_unchanged[s] for s in range(7))  # in the optimizer from step 0, untouched until it trains


# --- LoRA ------------------------------------------------------------------------------------------------


def test_lora_starts_as_the_base_model():
    torch.manual_seed(0)
    base_model = GPT(NANO).eval()
    lora_model = copy.deepcopy(base_model)
    LoRA(rank=4, targets=["attn.c_attn", "mlp"]).setup(lora_model)
    assert sum(isinstance(m, LoRALinear) for m in lora_model.modules()) == 6
    idx = torch.randint(0, NANO.vocab_size, (2, 16))
    assert torch.equal(base_model(idx), lora_model(idx))
    assert trainable(lora_model) == {n for n, _ in lora_model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def lora_run(base, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    policy = LoRA(rank=4, alpha=8, targets=["attn", "mlp.c_fc"], save_adapters_only=True)
    module = tiny(finetune=policy, init_from=base, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    trainer = fit(module, data, 3, tmp)
    path = tmp / "adapters.ckpt"
    trainer.save_checkpoint(path)
    return module.eval(), path


def test_lora_merged_weights_give_the_adapter_model_logits(lora_run):
    module, _ = lora_run
    assert any(m.lora_B.abs().sum() > 0 for m in module.modules() if isinstance(m, LoRALinear))  # it trained
    merged = copy.deepcopy(module.model)
    assert LoRA.merge(merged) == 6
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    idx = torch.randint(0, NANO.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), module.model(idx), atol=1e-5, rtol=0)


def test_adapter_only_checkpoint_plus_base_reproduces_the_model(lora_run, base):
    module, path = lora_run
    ckpt = read_checkpoint(path)
    assert ckpt["gpt2kit"]["adapters_only"] and all("lora_" in k for k in ckpt["state_dict"])
    assert len(ckpt["state_dict"]) == 2 * 6
    loaded = load_module(path)  # rebuilt, base weights from init_from, adapters from the checkpoint
    idx = torch.randint(0, NANO.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded(idx), module(idx))
    from gpt2kit.decoding import load_for_inference

    decoding = load_for_inference(path)  # the same, without Lightning: what generate, chat and serve load
    with torch.no_grad():
        assert torch.equal(decoding.model(idx), module(idx))


# --- resume -----------------------------------------------------------------------------------------------


def test_resume_restores_optimizer_scheduler_and_freeze_state(base, base_weights, data, tmp_path):
    def make():
        return tiny(
            finetune=GradualUnfreeze(every_k_steps=2, start_n=0),
            init_from=base,
            optim=OptimConfig(warmup_steps=1, decay_steps=3),  # one schedule across both runs (<= max_steps)
        )

    first = fit(make(), data, 3, tmp_path / "a")
    path = tmp_path / "step3.ckpt"
    first.save_checkpoint(path)
    saved = read_checkpoint(path)
    checks = []

    def check(trainer, m):
        assert trainer.global_step == 3
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        assert scheduler.last_epoch == 3
        assert scheduler.state_dict() == saved["lr_schedulers"][0]
        expected_lr = 6e-4 * lr_factor(3, warmup=1, decay=3, min_ratio=0.1)
        assert all(g["lr"] == pytest.approx(expected_lr) for g in trainer.optimizers[0].param_groups)
        state = trainer.optimizers[0].state_dict()["state"]  # not yet updated by step 3
        assert state.keys() == saved["optimizer_states"][0]["state"].keys()
        for i, s in state.items():
            for k, v in s.items():
                assert torch.equal(v, saved["optimizer_states"][0]["state"][i][k]), (i, k)
        # the freeze schedule is at step 3: the top and block 1 train; block 0 and embeddings wait
        assert trainable(m.model) == {"ln_f.weight"} | {
            n for n, _ in m.model.named_parameters() if n.startswith("blocks.1.")
        }
        assert torch.equal(m.model.blocks[0].attn.c_attn.weight, base_weights["blocks.0.attn.c_attn.weight"])
        checks.append(True)

    fit(make(), data, 4, tmp_path / "b", [Probe(check)], ckpt_path=path)
    assert checks == [True]


# --- bad input: one clear line each ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy,message",
    [
        (LastNBlocks(3), "LastNBlocks n=3 but the model has 2 blocks: choose 0 to 2"),
        (PatternFreeze(["nowhere"]), "PatternFreeze pattern 'nowhere' matches no parameter"),
        (PatternFreeze([]), "leaves nothing to train"),
        (LoRA(targets=["nowhere"]), "LoRA target 'nowhere' matches no linear layer"),
        (GradualUnfreeze(every_k_steps=5, start_n=9), "start_n=9 but the model has 2 blocks"),
    ],
)
def test_bad_policy_is_one_clear_line(policy, message):
    with pytest.raises(GPT2KitError, match=message) as err:
        tiny(finetune=policy)
    assert "\n" not in str(err.value)


def test_init_from_with_mismatched_shapes_lists_them(base):
    with pytest.raises(GPT2KitError) as err:
        load_pretrained(GPT(preset("nano", n_embd=64)), base)
    text = str(err.value)
    assert "\n" not in text and "do not fit this model" in text
    assert "wte.weight (65, 32) vs (65, 64)" in text and "n_embd=32" in text


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model.finetune.n=3"], "error: LastNBlocks n=3 but the model has 2 blocks"),
        (
            ["--model.arch.n_embd=64"],
            "error: the weights in init_from runs/shakespeare-char/checkpoints/last.ckpt do not fit",
        ),
    ],
)
def test_cli_bad_finetune_input_is_one_error_line(args, expected, workdir, capsys):
    recipe = str(RECIPES / "finetune" / "partial-last2.yaml")
    with cwd(workdir), pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", recipe, *TINY, *args])
    assert exit_.value.code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), errors


# --- the checkpoint's tokenizer for new data -------------------------------------------------------------


def test_checkpoint_tokenizer_is_the_checkpoints_and_can_skip_unknown_characters(base):
    strict = CheckpointTokenizer(base)
    lenient = CheckpointTokenizer(base, skip_unknown=True)
    assert strict == lenient == load_module(base).tokenizer  # it saves and compares as the original
    assert lenient.encode("\u201cWhat\u201d\u20143 said she.") == strict.encode("What3 said she.")
    with pytest.raises(GPT2KitError, match="not in this char tokenizer's vocabulary"):
        strict.encode("\u201cWhat\u201d")


def test_checkpoint_tokenizer_keeps_added_special_tokens_whole(base):
    """Chat markers added for fine-tuning survive skip_unknown, and count only where allowed."""
    tok = CheckpointTokenizer(base, skip_unknown=True)
    (user,) = tok.add_special_tokens(["<|user|>"])
    assert user == tok.vocab_size - 1
    assert tok.encode("<|user|>Hi\u2014", allowed_special="all") == [user, *tok.encode("Hi")]
    assert user not in tok.encode("<|user|>Hi")  # not allowed: the marker's characters are text
