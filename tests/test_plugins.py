"""Plugins: the example packages by module name and installed with pip (entry point); listed, chosen
in YAML, trained, round-tripped through a checkpoint; broken, missing and clashing plugins."""

import functools
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY

from gpt2kit import GPT, GPT2KitError
from gpt2kit.checkpoint import load_module, read_checkpoint
from gpt2kit.commands import lightning_main, main
from gpt2kit.nn import ALiBiPosition, RotaryPosition
from gpt2kit.registry import load_plugins, registry
from gpt2kit.testing import check_cache_matches_forward, check_causal, tiny_config

PLUGINS = REPO / "plugins"
registry_module = importlib.import_module("gpt2kit.registry")  # (gpt2kit.registry is also a function)


@pytest.fixture
def isolated(monkeypatch):
    """Registries, loaded plugins and imported plugin modules as they were before the test."""
    registry("attention")  # the built-ins, registered
    saved = {kind: dict(reg._entries) for kind, reg in registry_module._REGISTRIES.items()}
    loaded, failed = dict(registry_module._loaded_plugins), dict(registry_module.failed_plugins)
    modules = set(sys.modules)
    monkeypatch.setenv("GPT2KIT_PLUGINS", "")  # restored afterwards, also if the CLI sets it
    monkeypatch.setattr(sys, "argv", ["gpt2kit"])
    yield
    for kind in list(registry_module._REGISTRIES):
        if kind in saved:
            registry_module._REGISTRIES[kind]._entries = saved[kind]
        else:
            del registry_module._REGISTRIES[kind]
    registry_module._loaded_plugins.clear()
    registry_module._loaded_plugins.update(loaded)
    registry_module.failed_plugins.clear()
    registry_module.failed_plugins.update(failed)
    for name in set(sys.modules) - modules:
        if name.startswith(("gpt2kit_", "fake_")):
            del sys.modules[name]
    registry_module._distributions.cache_clear()


def fake_distribution(site, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """What pip leaves in site-packages: modules and a dist-info folder with entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[gpt2kit.plugins]\n{lines}")
    for module, code in modules.items():
        (site / f"{module}.py").write_text(code)


def attention_plugin(name: str, cls: str) -> str:
    return (
        "from gpt2kit.nn import CausalSelfAttention\nfrom gpt2kit.registry import register\n\n"
        f"@register('attention', '{name}')\nclass {cls}(CausalSelfAttention):\n    '''A test plugin.'''\n"
    )


def test_plugins_by_module_name_listed_chosen_in_yaml_trained_and_round_tripped(
    tmp_path, monkeypatch, capsys, isolated
):
    for name in ("qknorm", "relu2"):
        monkeypatch.syspath_prepend(str(PLUGINS / name))
    main(["--plugins", "gpt2kit_qknorm,gpt2kit_relu2", "list"])
    listing = capsys.readouterr().out
    assert re.search(r"\n  qk_norm +QKNormAttention +plugin module gpt2kit_qknorm +Queries and keys", listing)
    assert re.search(r"\n  relu_squared +ReLUSquaredMLP +plugin module gpt2kit_relu2 ", listing)
    assert re.search(r"\n  causal +CausalSelfAttention +built-in ", listing)
    assert os.environ["GPT2KIT_PLUGINS"] == "gpt2kit_qknorm,gpt2kit_relu2"  # for the processes it starts

    from gpt2kit_qknorm import QKNormAttention
    from gpt2kit_relu2 import ReLUSquaredMLP

    monkeypatch.chdir(tmp_path)  # the recipes write under ./runs
    for name, slot, cls in (("qknorm", "attention", QKNormAttention), ("relu2", "mlp", ReLUSquaredMLP)):
        recipe = PLUGINS / name / "recipes" / f"shakespeare-{name}.yaml"
        cli = lightning_main(["fit", "--config", str(recipe), *TINY])  # the recipe names the short class name
        path = tmp_path / "runs" / f"shakespeare-{name}" / "checkpoints" / "last.ckpt"
        assert (
            read_checkpoint(path)["hyper_parameters"][slot]["class_path"] == f"gpt2kit_{name}.{cls.__name__}"
        )
        loaded = load_module(path)
        block = loaded.model.blocks[0]
        assert type(block.attn if slot == "attention" else block.mlp) is cls
        idx = torch.randint(0, loaded.model.config.vocab_size, (2, 16))
        assert torch.equal(loaded.model(idx), cli.model.model.eval()(idx))

    # The contract the plugins' own tests check (plugins/*/tests), here too.
    for make in (
        functools.partial(GPT, tiny_config(), attention=QKNormAttention, position=ALiBiPosition),
        functools.partial(GPT, tiny_config(), mlp=ReLUSquaredMLP, position=RotaryPosition),
    ):
        check_causal(make)
        check_cache_matches_forward(make)


CAN_BUILD = """
import sys
from importlib.metadata import version
import setuptools
major, minor = (int(part) for part in version("setuptools").split(".")[:2])
try:
    import setuptools.command.bdist_wheel
except ImportError:
    import wheel.bdist_wheel
sys.exit(0 if (major, minor) >= (68, 0) else 1)
"""


def can_build_offline(python) -> bool:
    """Whether `python` has the setuptools and bdist_wheel that the plugin's build-system asks for."""
    return subprocess.run([str(python), "-c", CAN_BUILD], capture_output=True, timeout=60).returncode == 0


def test_plugin_installed_with_pip_is_loaded_by_its_entry_point(tmp_path, monkeypatch, capsys, isolated):
    source = shutil.copytree(
        PLUGINS / "relu2", tmp_path / "relu2", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps"]
    # Offline when this interpreter can build the plugin itself (the build-system's setuptools>=68, and a
    # bdist_wheel: setuptools>=70.1 has its own, older ones need `wheel`); otherwise pip builds it in an
    # isolated environment from the package index, as it would for a user (a fresh venv has setuptools 65
    # without wheel on Python 3.11, no setuptools at all on 3.12).
    if can_build_offline(python):
        install += ["--no-build-isolation", "--no-index"]
    out = subprocess.run([*install, str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    site = next(venv.glob("lib/python*/site-packages"))
    assert (site / "gpt2kit_relu2").is_dir()
    monkeypatch.syspath_prepend(str(site))  # as that environment's python sees it, without starting one

    loaded = load_plugins()
    assert loaded["gpt2kit_relu2"] == "plugin relu2 (gpt2kit-relu2 0.1.0)"
    main(["list", "mlp"])
    assert re.search(
        r"relu_squared +ReLUSquaredMLP +plugin relu2 \(gpt2kit-relu2 0\.1\.0\)", capsys.readouterr().out
    )
    assert registry("mlp").entry("ReLUSquaredMLP").cls.__module__ == "gpt2kit_relu2"


def test_broken_plugin_warns_naming_it_or_fails_when_asked_for(
    tmp_path, monkeypatch, capsys, caplog, isolated
):
    fake_distribution(
        tmp_path, "gpt2kit-broken", {"broken": "fake_broken_plugin"},
        {"fake_broken_plugin": "raise ImportError('needs flash_attn')\n"},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="gpt2kit.registry"):
        load_plugins()  # installed: a warning, and gpt2kit goes on
    warning = caplog.messages[-1]
    assert "plugin 'broken'" in warning and "gpt2kit-broken" in warning and "needs flash_attn" in warning
    main(["list", "norm"])
    assert (
        "plugins that failed to load (skipped):\n  broken (gpt2kit-broken 1.0): ImportError: needs flash_attn"
        in (capsys.readouterr().out)
    )
    for args in (["--plugins", "fake_broken_plugin", "list"], ["--plugins", "no_such_plugin_xyz", "list"]):
        with pytest.raises(SystemExit) as exit_:  # asked for by name: an error, on one line
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
    assert err == (
        "error: plugin module 'no_such_plugin_xyz' was not found: install it, or put the folder that holds it on "
        "PYTHONPATH (--plugins and GPT2KIT_PLUGINS take importable module names, not files)"
    )
    with pytest.raises(
        GPT2KitError,
        match=r"plugin module 'fake_broken_plugin' failed to import: ImportError: needs flash_attn",
    ):
        load_plugins(["fake_broken_plugin"], entry_points=False)


def test_two_plugins_with_one_name_fail_naming_both(tmp_path, monkeypatch, isolated):
    fake_distribution(
        tmp_path, "gpt2kit-one", {"one": "fake_one"}, {"fake_one": attention_plugin("dup", "OneAttention")}
    )
    fake_distribution(
        tmp_path, "gpt2kit-two", {"two": "fake_two"}, {"fake_two": attention_plugin("dup", "TwoAttention")}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GPT2KitError) as err:
        load_plugins()
    message = str(err.value)
    assert "attention 'dup' is registered twice" in message
    for who in (
        "fake_one.OneAttention (plugin one (gpt2kit-one 1.0))",
        "fake_two.TwoAttention (plugin two (gpt2kit-two 1.0))",
    ):
        assert who in message


@pytest.mark.parametrize("name", ["qknorm", "relu2"])
def test_example_plugin_ablation_recipe_parses(name, monkeypatch, isolated):
    from gpt2kit.ablate import load_study, plan

    monkeypatch.syspath_prepend(str(PLUGINS / name))
    study = load_study(PLUGINS / name / "recipes" / "ablation.yaml")
    load_plugins(study.plugins, entry_points=False)
    runs = plan(study)
    assert len(runs) == 8 and not [r.error for r in runs if r.error]
