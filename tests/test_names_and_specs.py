"""One name per component (registered names wherever class names work) and one spec format."""

from __future__ import annotations

import functools
import importlib
import inspect

import pytest
import torch
import yaml
from conftest import RECIPES, TINY

from gpt2kit.chat.template import ChatMLTemplate, ChatTemplate, RoleTokensTemplate
from gpt2kit.checkpoint import load_module, read_checkpoint, save_checkpoint
from gpt2kit.errors import GPT2KitError
from gpt2kit.finetune import FreezePolicy, LastNBlocks
from gpt2kit.model import BASES, GPT2, SLOTS
from gpt2kit.names import canonical
from gpt2kit.nn import Attention, CausalSelfAttention, RMSNorm, SlidingWindowAttention
from gpt2kit.parsing import program_args
from gpt2kit.registry import add_kind, build, kinds, registry
from gpt2kit.spec import build_factory, build_instance, describe, normalized, resolve_class, spec_of
from gpt2kit.tokenizers import CharTokenizer, Tokenizer
from gpt2kit.training.cli import GPT2KitArgumentParser, lightning_main

SHAKESPEARE = str(RECIPES / "pretrain" / "shakespeare-char.yaml")


def fit(*args: str):
    """The CLI on the Shakespeare recipe, shrunk, parsed and instantiated but not run."""
    with program_args():
        return lightning_main(["--config", SHAKESPEARE, *TINY, *args], run=False)


def is_path_of(path: str, cls: type) -> bool:
    """A full class path (jsonargparse writes the shortest public module) that imports ``cls``."""
    module, _, name = path.rpartition(".")
    return bool(module) and getattr(importlib.import_module(module), name) is cls


def cli_error(capsys, *args: str) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        fit(*args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


class Greeter:
    """A kind of component a plugin adds (registered with add_kind)."""

    def __init__(self, loud: bool = False) -> None:
        self.loud = loud


class Shout(Greeter):
    """Says it loudly."""


add_kind("test_greeter", Greeter).add(Shout, "shout")


# -- names on the command line and in YAML -----------------------------------------------------------------
def test_cli_short_name_then_dotted_init_args():
    cli = fit(
        "--model.attention", "sliding_window", "--model.attention.window", "12", "--model.position", "none"
    )
    attn = cli.model.model.blocks[0].attn
    assert type(attn) is SlidingWindowAttention and attn.window == 12
    assert type(cli.model.model.position).__name__ == "NoPosition"  # the name "none" is not YAML's null
    assert cli.config.model.attention.class_path == "gpt2kit.nn.SlidingWindowAttention"


def test_yaml_name_form(tmp_path):
    overlay = tmp_path / "names.yaml"
    overlay.write_text(
        "model:\n"
        "  attention: {name: sliding_window, window: 8}\n"
        "  norm: {name: rmsnorm}\n"
        "  finetune: {name: last_n_blocks, n: 1}\n"
        "data:\n"
        "  init_args:\n"
        "    tokenizer: {name: char}\n"
    )
    cli = fit("--config", str(overlay))
    model = cli.model.model
    assert type(model.blocks[0].attn) is SlidingWindowAttention and model.blocks[0].attn.window == 8
    assert type(model.ln_f) is RMSNorm
    assert isinstance(cli.model.finetune, LastNBlocks) and cli.model.finetune.n == 1
    assert type(cli.datamodule.tokenizer) is CharTokenizer
    assert is_path_of(cli.config.data.init_args.tokenizer.class_path, CharTokenizer)


def test_class_path_may_be_a_name_and_class_names_still_work():
    cli = fit(
        "--model.attention",
        "{class_path: sliding_window, init_args: {window: 5}}",
        "--model.mlp",
        "SwiGLUMLP",
    )
    assert cli.model.model.blocks[0].attn.window == 5
    assert type(cli.model.model.blocks[0].mlp).__name__ == "SwiGLUMLP"


def test_print_config_and_checkpoint_hold_full_class_paths(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        fit("--model.attention", "sliding_window", "--model.attention.window", "4", "--print_config")
    assert exit_.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["attention"] == {
        "class_path": "gpt2kit.nn.SlidingWindowAttention",
        "init_args": {"window": 4},
    }
    assert is_path_of(cfg["data"]["init_args"]["tokenizer"]["class_path"], CharTokenizer)

    cli = fit("--model.attention", "sliding_window", "--model.attention.window", "4")
    cli.datamodule.setup("fit")
    cli.model.tokenizer = cli.datamodule.tokenizer
    path = save_checkpoint(cli.model, tmp_path / "names.ckpt")
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    assert hp["attention"]["class_path"] == "gpt2kit.nn.SlidingWindowAttention"
    assert hp["attention"]["init_args"] == {"window": 4}
    assert all("." in hp[slot]["class_path"] for slot in SLOTS)
    assert ckpt["gpt2kit"]["tokenizer"]["class_path"] == "gpt2kit.tokenizers.char.CharTokenizer"
    again = load_module(path)
    assert (
        type(again.model.blocks[0].attn) is SlidingWindowAttention and again.model.blocks[0].attn.window == 4
    )


def test_unknown_name_is_one_line_with_close_matches(capsys, tmp_path):
    errors = cli_error(capsys, "--model.attention", "sliding_windw")
    assert len(errors) == 1
    assert "unknown attention 'sliding_windw'" in errors[0] and "did you mean sliding_window" in errors[0]
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("data:\n  init_args:\n    tokenizer: {name: chr}\n")
    errors = cli_error(capsys, "--config", str(overlay))
    assert len(errors) == 1 and "unknown tokenizer 'chr'" in errors[0] and "char" in errors[0]


def test_help_takes_a_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        fit("--model.attention.help", "sliding_window")
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "SlidingWindowAttention" in out and "--model.attention.window" in out


def test_the_shorthand_is_rewritten_by_the_yaml_loader_alone():
    """jsonargparse's public set_loader: a plain jsonargparse parser in gpt2kit's mode (no RegistryNames
    hook) reads the shorthand in a config and on the command line; what is not a component is untouched."""
    from jsonargparse import ArgumentParser

    from gpt2kit.names import PARSER_MODE, expand_shorthand

    def job(attention: Attention, greeter: Greeter | None = None, logger: dict | None = None):
        """A function with component-typed arguments and a plain mapping."""

    parser = ArgumentParser(exit_on_error=False, parser_mode=PARSER_MODE)
    parser.add_function_arguments(job)
    cfg = parser.parse_string(
        "attention: {name: sliding_window, window: 7}\n"
        "greeter: {name: shout, loud: true}\n"  # a plugin's kind, under a key that is not its kind's name
        "logger: {class_path: CSVLogger, init_args: {name: char}}\n"  # a class's `name` argument
    )
    assert cfg.attention.class_path == "gpt2kit.nn.attention.SlidingWindowAttention"
    assert cfg.attention.init_args.window == 7
    assert cfg.greeter.class_path == f"{__name__}.Shout" and cfg.greeter.init_args.loud is True
    assert cfg.logger == {"class_path": "CSVLogger", "init_args": {"name": "char"}}
    cfg = parser.parse_args(["--attention", "{name: math}"])
    assert cfg.attention.class_path.endswith("MathAttention")

    assert expand_shorthand({"tokenizer": {"name": "chr"}}) == {
        "tokenizer": {"class_path": "chr"}
    }  # for canonical's error
    assert expand_shorthand({"run": {"name": "baseline", "seed": 1}}) == {
        "run": {"name": "baseline", "seed": 1}
    }
    assert expand_shorthand(
        {"position": "none", "norm": {"name": "rmsnorm", "init_args": {"eps": 1e-6}}}
    ) == {
        "position": "none",  # bare names are the type-aware step's
        "norm": {"class_path": "gpt2kit.nn.norm.RMSNorm", "init_args": {"eps": 1e-6}},
    }


def test_names_for_every_component_typed_argument():
    """Chat templates, tokenizers and a plugin's new kind, by the argument's type (not its name)."""

    def job(
        template: ChatTemplate | None = None,
        tokenizer: Tokenizer | None = None,
        greeter: Greeter | None = None,
    ):
        """A function with component-typed arguments."""

    parser = GPT2KitArgumentParser(exit_on_error=False)
    parser.add_function_arguments(job)
    cfg = parser.parse_args(
        [
            "--template",
            "chatml",
            "--tokenizer",
            "{name: bpe, vocab_size: 300}",
            "--greeter",
            "shout",
            "--greeter.loud",
            "true",
        ]
    )
    assert is_path_of(cfg.template.class_path, ChatMLTemplate)
    assert (
        cfg.tokenizer.class_path.endswith("ByteLevelBPETokenizer")
        and cfg.tokenizer.init_args.vocab_size == 300
    )
    assert cfg.greeter.class_path == f"{__name__}.Shout" and cfg.greeter.init_args.loud is True
    objs = parser.instantiate_classes(cfg)
    assert isinstance(objs.template, ChatMLTemplate) and isinstance(objs.greeter, Shout)
    assert canonical("none", str | Attention) == "none"  # a type that takes strings keeps them


def test_build_list_and_errors_speak_one_namespace():
    from gpt2kit.config import preset

    cfg = preset("nano")
    assert type(build("attention", "sliding_window", cfg, window=3)) is SlidingWindowAttention
    assert type(build("attention", "SlidingWindowAttention", cfg, window=3)) is SlidingWindowAttention
    assert (
        type(build("attention", "gpt2kit.nn.attention.SlidingWindowAttention", cfg)) is SlidingWindowAttention
    )
    with pytest.raises(GPT2KitError, match="did you mean sliding_window"):
        build("attention", "slidingwindow", cfg)


# -- specs -------------------------------------------------------------------------------------------------
def _constructible(cls: type) -> bool:
    params = list(inspect.signature(cls).parameters.values())
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


@pytest.mark.parametrize(
    "kind",
    ["attention", "position", "norm", "mlp", "head", "tokenizer", "chat_template", "freeze", "sampler"],
)
def test_spec_round_trip_for_every_registered_component(kind):
    reg = registry(kind)
    assert kind in kinds() and len(reg) > 0
    for entry in reg.entries():
        spec = spec_of(entry.cls)
        assert spec == {"class_path": entry.class_path}
        assert resolve_class(spec["class_path"], reg.base) is entry.cls
        assert resolve_class(entry.name, reg.base) is entry.cls  # names resolve too
        if kind in SLOTS:  # factories: the class, or a partial with init_args
            assert build_factory(spec, BASES[kind]) is entry.cls
            factory = functools.partial(entry.cls, some_arg=3)
            rebuilt = build_factory(spec_of(factory), BASES[kind])
            assert rebuilt.func is entry.cls and rebuilt.keywords == {"some_arg": 3}
        elif _constructible(entry.cls):  # instances: init_args (and state) round-trip
            obj = entry.cls()
            again = build_instance(spec_of(obj), reg.base)
            assert type(again) is entry.cls and spec_of(again) == spec_of(obj)


def test_instance_specs_keep_arguments_and_state():
    tok = CharTokenizer(special_tokens=["<|endoftext|>"])
    tok.train(["hello world"])
    spec = spec_of(tok)
    assert spec["class_path"] == "gpt2kit.tokenizers.char.CharTokenizer"
    assert spec["init_args"] == {"special_tokens": ["<|endoftext|>"]} and spec["state"] == {
        "chars": " dehlorw"
    }
    assert Tokenizer.from_dict(spec) == tok and Tokenizer.from_json(tok.to_json()).encode(
        "hello"
    ) == tok.encode("hello")
    policy = LastNBlocks(n=3)
    assert spec_of(policy) == {
        "class_path": "gpt2kit.finetune.LastNBlocks",
        "init_args": {"n": 3, "train_embedding": False},
    }
    assert isinstance(build_instance(spec_of(policy), FreezePolicy), LastNBlocks)
    assert ChatTemplate.from_dict(RoleTokensTemplate().to_dict()) == RoleTokensTemplate()


def test_specs_rebuild_only_subclasses_of_the_expected_base():
    with pytest.raises(GPT2KitError, match="not a gpt2kit.nn.attention.Attention"):
        build_factory({"class_path": "gpt2kit.nn.RMSNorm"}, Attention)
    with pytest.raises(GPT2KitError, match="not a gpt2kit.tokenizers.base.Tokenizer"):
        Tokenizer.from_dict({"class_path": "collections.OrderedDict", "init_args": {}, "state": {}})
    with pytest.raises(GPT2KitError, match="not a gpt2kit.chat.template.ChatTemplate"):
        ChatTemplate.from_dict({"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}})
    with pytest.raises(GPT2KitError, match="install the plugin that provides it"):
        build_factory({"class_path": "gpt2kit_talkingheads.TalkingHeadsAttention"}, Attention)


def test_describe_and_normalized():
    spec = {"class_path": "gpt2kit.nn.SlidingWindowAttention", "init_args": {"window": 64}}
    assert describe(spec) == "SlidingWindowAttention(window=64)"
    assert describe({"name": "sliding_window", "window": 16}) == "sliding_window(window=16)"
    assert describe("gpt2kit.nn.RotaryPosition") == "RotaryPosition" and describe(0.003) == "0.003"
    assert normalized({"class_path": "gpt2kit.nn.SlidingWindowAttention"}) == normalized(
        {"class_path": "gpt2kit.nn.attention.SlidingWindowAttention", "init_args": {"window": 512}}
    )
    assert normalized(spec) != normalized({"class_path": "gpt2kit.nn.SlidingWindowAttention"})


def test_gpt2_is_the_one_default():
    assert SLOTS == ("attention", "position", "norm", "mlp", "head")
    assert GPT2.attention is CausalSelfAttention
    from gpt2kit.model import GPT
    from gpt2kit.training.lit import GPTLitModule

    for fn in (GPT.__init__, GPTLitModule.__init__):
        params = inspect.signature(fn).parameters
        assert {slot: params[slot].default for slot in SLOTS} == GPT2.as_dict()


# -- checkpoints written before class paths ------------------------------------------------------------------
def test_old_tokenizer_and_template_format_still_loads(tmp_path):
    """Checkpoints (and prepared data) written before class paths hold ``{name, config, state}``."""
    from gpt2kit.config import preset
    from gpt2kit.training.lit import GPTLitModule

    tok = CharTokenizer()
    tok.train(["To be, or not to be"])
    module = GPTLitModule(preset("nano", vocab_size=tok.vocab_size))
    module.tokenizer = tok
    module.chat_template = RoleTokensTemplate().to_dict()
    path = save_checkpoint(module, tmp_path / "new.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["gpt2kit"]["tokenizer"] = {
        "name": "char",
        "config": {"special_tokens": []},
        "state": {"chars": tok.state()["chars"]},
    }
    ckpt["gpt2kit"]["chat_template"] = {"name": "role_tokens", "config": {}}
    torch.save(ckpt, tmp_path / "old.ckpt")

    old = load_module(tmp_path / "old.ckpt")
    assert old.tokenizer == tok and old.tokenizer.encode("not to be") == tok.encode("not to be")
    assert ChatTemplate.from_dict(old.chat_template) == RoleTokensTemplate()
    assert (
        Tokenizer.from_json('{"name": "char", "config": {}, "state": {"chars": "ab"}}').decode([1, 0]) == "ba"
    )
    with pytest.raises(GPT2KitError, match="unknown tokenizer 'nope'"):
        Tokenizer.from_dict({"name": "nope", "config": {}, "state": {}})


def test_ablation_grids_take_names():
    """Ablation variants are resolved by the CLI's parser: names there become class paths too."""
    from pathlib import Path

    from gpt2kit.ablate.study import Resolver, value_label

    resolver = Resolver(Path(SHAKESPEARE), {})
    config = resolver.resolve({"model.attention": {"name": "sliding_window", "window": 8}})
    assert config["model"]["attention"] == {
        "class_path": "gpt2kit.nn.SlidingWindowAttention",
        "init_args": {"window": 8},
    }
    config = resolver.resolve({"model.position": "rotary"})
    assert config["model"]["position"]["class_path"] == "gpt2kit.nn.RotaryPosition"
    with pytest.raises(GPT2KitError, match="did you mean sliding_window"):
        resolver.resolve({"model.attention": "slidng_window"})
    assert value_label({"name": "sliding_window", "window": 8}) == "sliding_window(window=8)"
    assert value_label(config["model"]["position"]) == "RotaryPosition(base=10000.0)"


def test_a_model_with_an_old_format_template_accepts_the_same_template_in_the_data():
    from types import SimpleNamespace

    from gpt2kit.config import preset
    from gpt2kit.training.lit import GPTLitModule

    module = GPTLitModule(preset("nano"))
    module.chat_template = {"name": "role_tokens", "config": {}}  # as an old checkpoint left it
    data = SimpleNamespace(chat_template=RoleTokensTemplate(), tokenizer=None, val_bytes_per_token=None)
    module._trainer = SimpleNamespace(datamodule=data)
    module.setup("fit")
    assert module.chat_template == RoleTokensTemplate().to_dict()
    data.chat_template = ChatMLTemplate()
    with pytest.raises(GPT2KitError, match="prepare the data with the model's template"):
        module.setup("fit")
