"""Imports every built-in component module, so that each registers itself."""

import gpt2kit.chat.template  # noqa: F401  chat templates
import gpt2kit.finetune  # noqa: F401  freeze policies, LoRA
import gpt2kit.nn  # noqa: F401  attention, position, norm, mlp, head
import gpt2kit.optim  # noqa: F401  optimizers, schedules
import gpt2kit.tokenizers  # noqa: F401
