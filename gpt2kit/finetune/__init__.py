"""Fine-tuning: which parameters of a pretrained GPT train, at what share of the learning rate, and
the checkpoint a run starts from.

A :class:`FreezePolicy` is the ``model.finetune`` setting of a recipe (default :class:`FullFineTune`:
everything trains); ``model.init_from`` names the checkpoint whose weights the run starts from (see
:func:`load_pretrained`)::

    model:
      init_from: runs/shakespeare-char/checkpoints/last.ckpt
      finetune:
        class_path: LastNBlocks
        init_args: {n: 2}

The built-in policies:

* :class:`FullFineTune` — everything trains at the full LR (pretraining, and plain fine-tuning);
* :class:`LastNBlocks` — the last n blocks, the final norm and the head train; the rest is frozen;
* :class:`HeadOnly` — only the output head;
* :class:`PatternFreeze` — the parameters whose names match regular expressions;
* :class:`LayerwiseLRDecay` — everything trains, each block down from the top at ``lr × decay^depth``;
* :class:`GradualUnfreeze` — one more block joins every K optimizer steps (ULMFiT);
* :class:`LoRA` — low-rank adapters on chosen linear layers; the base weights stay frozen.

The package, one concept per module:

* :mod:`~gpt2kit.finetune.policies` — the model in parts, the policies, the parameter table;
* :mod:`~gpt2kit.finetune.lora` — LoRA;
* :mod:`~gpt2kit.finetune.pretrained` — starting from a checkpoint (``init_from``), adapters-only saving;
* :mod:`~gpt2kit.finetune.callback` — :class:`FineTuning`, which applies a policy during a Lightning run
  (imported from there: the rest needs only torch).
"""

from gpt2kit.finetune.lora import LoRA, LoRALinear
from gpt2kit.finetune.policies import (
    FREEZE,
    FreezePolicy,
    FullFineTune,
    GradualUnfreeze,
    HeadOnly,
    LastNBlocks,
    LayerwiseLRDecay,
    PatternFreeze,
    model_parts,
    parameter_table,
    set_trainable,
)
from gpt2kit.finetune.pretrained import added_special_tokens, kept_state, load_pretrained

__all__ = [
    "FREEZE",
    "FreezePolicy",
    "FullFineTune",
    "GradualUnfreeze",
    "HeadOnly",
    "LastNBlocks",
    "LayerwiseLRDecay",
    "LoRA",
    "LoRALinear",
    "PatternFreeze",
    "added_special_tokens",
    "kept_state",
    "load_pretrained",
    "model_parts",
    "parameter_table",
    "set_trainable",
]
