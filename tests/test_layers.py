"""The layers of README's "How it fits together": every module has one, and imports point down.

A module imports only from its own layer or below — lazy imports inside functions included, since they
hide a cycle without removing it; ``if TYPE_CHECKING:`` imports (annotations only) do not count. A new
module must be given its layer here, and in the README's table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gpt2kit"

LAYERS = {
    1: ["errors", "registry", "config", "corpora", "ckptfile", "parsing", "version", "spec", "names"],
    2: ["nn"],
    3: ["model"],
    4: ["tokenizers"],
    5: ["data", "chat.template", "chat.conversations", "chat.context"],
    # decoding: a checkpoint loaded for inference, the one engine, sampling, int8; the freeze policies and
    # LoRA shape the model a checkpoint holds (the loader rebuilds them), so they sit here too
    6: ["decoding", "generate", "batching", "quantize", "chat.session", "finetune"],
    7: [
        "lit",
        "callbacks",
        "finetune.callback",
        "optim",
        "schedules",
        "resume",
        "hardware",
        "perf",
        "components",
    ],
    8: ["checkpoint", "lightning_cli", "interop"],
    9: ["ablate", "chat.repl", "chat", "evaluate", "serve", "testing"],
    10: ["cli", "__main__", ""],  # "" is the package itself: gpt2kit/__init__.py, the public API
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
    path.write_text("def f():\n    from gpt2kit.cli import main\n")
    assert imports(path) == ["cli"] and layer_of("cli") > layer_of("nn.attention")
