import sys
import textwrap

import pytest

from gpt2kit import GPT2KitError, build, registry
from gpt2kit.components import kinds
from gpt2kit.config import GPTConfig
from gpt2kit.nn import Attention, CausalSelfAttention, Norm
from gpt2kit.registry import Registry, load_plugins


def test_builtin_kinds_are_registered():
    assert kinds()[:6] == ["tokenizer", "attention", "position", "norm", "mlp", "head"]
    assert registry("attention").get("causal") is CausalSelfAttention


def test_register_get_build_and_wildcards():
    reg = Registry("thing", Norm)

    @reg.register("layer2")
    class A(Norm):
        pass

    @reg.register("layer10")
    class B(Norm):
        pass

    @reg.register("other")
    class C(Norm):
        pass

    assert reg.names("layer*") == ["layer2", "layer10"]  # natural sort, not lexicographic
    assert reg.get("B") is B  # class names resolve too
    assert isinstance(reg.build("other", GPTConfig()), C)


def test_duplicate_name_names_both_modules():
    reg = Registry("thing", Norm)
    reg.add(type("First", (Norm,), {"__module__": "pkg_one"}), "same")
    with pytest.raises(GPT2KitError, match=r"pkg_one\.First.*pkg_two\.Second"):
        reg.add(type("Second", (Norm,), {"__module__": "pkg_two"}), "same")


def test_wrong_base_class_is_refused():
    with pytest.raises(GPT2KitError, match="must subclass"):
        registry("attention").add(type("NotAttention", (Norm,), {}), "nope")


def test_unknown_name_lists_close_matches():
    with pytest.raises(GPT2KitError) as err:
        build("attention", "casual", GPTConfig())
    message = str(err.value)
    assert "did you mean causal" in message and "registered:" in message and "\n" not in message


def test_unknown_kind():
    with pytest.raises(GPT2KitError, match="did you mean attention"):
        registry("attentoin")


def test_plugin_module_from_env_registers(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text(
        textwrap.dedent(
            """
            from gpt2kit.nn import CausalSelfAttention
            from gpt2kit.registry import register

            @register("attention", "plugin_attention_for_test")
            class PluginAttention(CausalSelfAttention):
                '''An attention added by a test plugin.'''
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GPT2KIT_PLUGINS", "my_plugin_mod")
    loaded = load_plugins(entry_points=False)
    assert "my_plugin_mod" in loaded
    entry = registry("attention").entry("plugin_attention_for_test")
    assert entry.source == "plugin module my_plugin_mod"
    assert issubclass(entry.cls, Attention)
    sys.modules.pop("my_plugin_mod", None)


def test_missing_plugin_module_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GPT2KIT_PLUGINS", "no_such_plugin_module_xyz")
    with pytest.raises(GPT2KitError, match="plugin module 'no_such_plugin_module_xyz' was not found"):
        load_plugins(entry_points=False)
