"""gpt2kit: a GPT-2 toolkit where every part is one line of YAML away."""

from gpt2kit import _moved
from gpt2kit.components import build, list_components, registry
from gpt2kit.config import PRESETS, GPTConfig, preset
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT
from gpt2kit.registry import register
from gpt2kit.version import __version__

_moved.install()  # the former module names (gpt2kit.lit, gpt2kit.optim, ...) still import

__all__ = [
    "GPT",
    "GPT2KitError",
    "GPTConfig",
    "PRESETS",
    "build",
    "list_components",
    "preset",
    "register",
    "registry",
    "__version__",
]
