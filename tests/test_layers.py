"""The layers of README's "How it fits together": every module has one, and imports point down.

A module imports only from its own layer or below — lazy imports inside functions included, since they
hide a cycle without removing it; ``if TYPE_CHECKING:`` imports (annotations only) do not count. A new
module must be given its layer here, and in the README's table.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from gpt2kit._moved import MOVED

ROOT = Path(__file__).resolve().parents[1] / "gpt2kit"

LAYERS = {
    # the former module names (gpt2kit.lit, ...) are aliases, see gpt2kit/_moved.py; it imports nothing
    1: [
        "errors",
        "registry",
        "config",
        "corpora",
        "ckptfile",
        "parsing",
        "version",
        "spec",
        "names",
        "_moved",
    ],
    2: ["nn"],
    3: ["model"],
    4: ["tokenizers"],
    5: ["data", "chat.template", "chat.conversations", "chat.context"],
    # decoding: a checkpoint loaded for inference, the one engine, sampling, int8; the freeze policies and
    # LoRA shape the model a checkpoint holds (the loader rebuilds them), so they sit here too; `chat` is
    # the chat package's front (templates, conversations and, on first use, the session)
    6: ["decoding", "chat.session", "chat", "finetune"],
    7: ["training", "finetune.callback", "components"],
    # training.cli is the LightningCLI subclass: it resolves hf: checkpoint names (interop)
    8: ["checkpoint", "training.cli", "interop"],
    9: ["ablate", "evaluate", "serve", "testing"],
    10: ["commands", "__main__", ""],  # "" is the package itself: gpt2kit/__init__.py, the public API
}
"""Layer → module prefixes (relative to ``gpt2kit``); the longest matching prefix decides."""

UPWARD: dict[tuple[str, str], str] = {}
"""The imports that still point up (no cycle), each with its reason (none left: predict_step calls the
engine, which sits below training)."""


def layer_of(module: str) -> int:
    best = max(
        (p for ps in LAYERS.values() for p in ps if module == p or module.startswith(p + ".") or p == ""),
        key=len,
    )
    return next(n for n, ps in LAYERS.items() if best in ps)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[str]:
    """The gpt2kit modules ``path`` imports (relative to ``gpt2kit``), lazy ones too."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
               for child in node.body for n in ast.walk(child)}  # fmt: skip
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        ):  # `from gpt2kit import x` too
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    known = modules()
    return sorted({n.removeprefix("gpt2kit.") for n in names if n.startswith("gpt2kit.") and
                   n.removeprefix("gpt2kit.") in known})  # fmt: skip


def test_every_module_has_a_layer():
    for module in modules():
        assert layer_of(module) in LAYERS, module


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down(module):
    here = layer_of(module)
    up = [
        f"gpt2kit.{module} (layer {here}) imports gpt2kit.{target} (layer {layer_of(target)})"
        for target in imports(modules()[module])
        if layer_of(target) > here and (module, target.split(".")[0]) not in UPWARD
    ]
    assert not up, "; ".join(up)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test itself: a lazy import of the CLI from a component is caught."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from gpt2kit.commands import main\n")
    assert imports(path) == ["commands"] and layer_of("commands") > layer_of("nn.attention")


def test_the_folders_show_the_layers():
    """Decoding, training and the commands are packages; what sits loose in gpt2kit/ is the foundations,
    the model, and the three modules that join bands (the registry's built-ins, whole training modules in
    files, the plugin authors' test helpers)."""
    loose = {p.stem for p in ROOT.glob("*.py")} - {"__init__", "__main__"}
    assert loose <= set(LAYERS[1]) | {"model", "components", "checkpoint", "testing"}, loose
    for band in ("decoding", "training", "commands", "serve", "evaluate", "ablate"):
        assert (ROOT / band / "__init__.py").is_file(), band


@pytest.mark.parametrize("old", sorted(MOVED))
def test_former_module_names_still_import(old):
    """Recipes, saved configs and checkpoints name classes by path (gpt2kit.optim.WarmupCosine): a moved
    module imports under its former name as the same module object."""
    import importlib

    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert sys.modules[old] is module


def test_a_checkpoint_written_before_the_move_loads(tmp_path):
    """Checkpoints written before the layout change name gpt2kit.optim.GPT2AdamW and
    gpt2kit.optim.WarmupCosine in their hyperparameters: they load, for training and for inference, in a
    fresh process (where nothing has imported the new modules yet)."""
    import subprocess
    import textwrap

    import torch

    from gpt2kit.checkpoint import save_checkpoint
    from gpt2kit.ckptfile import read_checkpoint
    from gpt2kit.testing import tiny_config
    from gpt2kit.training.lit import GPTLitModule

    path = save_checkpoint(GPTLitModule(tiny_config()), tmp_path / "new.ckpt")
    ckpt = read_checkpoint(path)
    old = {**ckpt["hyper_parameters"]}
    for key, module in (
        ("optimizer", "gpt2kit.training.optim."),
        ("schedule", "gpt2kit.training.schedules."),
    ):
        assert old[key]["class_path"].startswith(module)
        old[key] = {**old[key], "class_path": old[key]["class_path"].replace(module, "gpt2kit.optim.")}
    torch.save({**ckpt, "hyper_parameters": old}, tmp_path / "old.ckpt")
    script = textwrap.dedent(f"""
        from gpt2kit.checkpoint import load_module
        from gpt2kit.decoding import load_for_inference
        module = load_module({str(tmp_path / "old.ckpt")!r})
        print(type(module.schedule).__module__)
        print(load_for_inference({str(tmp_path / "old.ckpt")!r}).model.config.n_layer)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["gpt2kit.training.schedules", str(tiny_config().n_layer)]
