"""GPT-2 weights in and out of the Hugging Face layout, with no network and no pickled code.

A Hugging Face GPT-2 folder (what ``save_pretrained`` writes, or a downloaded ``gpt2`` snapshot) holds
``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read with ``weights_only``), and
usually its tokenizer (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``).

The two layouts differ only in names and in one transposition: Hugging Face's GPT-2 keeps its linear
layers as ``Conv1D`` modules whose weight is stored (in, out), where ``nn.Linear`` stores (out, in)::

    transformer.wte.weight               model.wte.weight
    transformer.wpe.weight               model.position.wpe.weight
    transformer.h.N.ln_1.*               model.blocks.N.ln_1.*
    transformer.h.N.attn.c_attn.*        model.blocks.N.attn.c_attn.*     (weight transposed)
    transformer.h.N.attn.c_proj.*        model.blocks.N.attn.c_proj.*     (weight transposed)
    transformer.h.N.ln_2.*               model.blocks.N.ln_2.*
    transformer.h.N.mlp.c_fc.*           model.blocks.N.mlp.c_fc.*        (weight transposed)
    transformer.h.N.mlp.c_proj.*         model.blocks.N.mlp.c_proj.*      (weight transposed)
    transformer.ln_f.*                   model.ln_f.*
    lm_head.weight                       (tied to wte: not stored)

An imported checkpoint is what training leaves (weights, hyperparameters with class paths, the
tokenizer), so ``generate``, ``validate --ckpt_path`` and ``model.init_from`` accept it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpt2kit.config import GPTConfig
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT2, SLOTS
from gpt2kit.nn import LayerNorm
from gpt2kit.tokenizers import HFTokenizer, Tokenizer
from gpt2kit.training.lit import GPTLitModule

log = logging.getLogger(__name__)

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILE = "gpt2kit_tokenizer.json"
"""Written by export next to the Hugging Face files, so that import restores a gpt2kit tokenizer exactly."""

HF_CONFIG = "hf_config"
"""The key, under a checkpoint's ``gpt2kit`` entry, of the config.json an imported model came with."""

_CONV1D = re.compile(r"blocks\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of old checkpoints
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


# -- reading a Hugging Face folder -------------------------------------------------------------------


def read_hf_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``config.json`` and the weights of a Hugging Face GPT-2 folder, without running its code."""
    path = Path(path)
    if not path.is_dir():
        raise GPT2KitError(
            f"'{path}' is not a folder: give the Hugging Face model folder (config.json + model.safetensors)"
        )
    if not (path / "config.json").is_file():
        raise GPT2KitError(f"{path} is not in the Hugging Face GPT-2 layout: config.json is missing")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise GPT2KitError(
            f"{path}/config.json describes model_type={config.get('model_type')!r}, not 'gpt2': "
            "only GPT-2 checkpoints can be imported"
        )
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return config, load_file(path / "model.safetensors")
    if (path / "model.safetensors.index.json").is_file():  # sharded safetensors
        from safetensors.torch import load_file

        shards = sorted(
            set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
        )
        return config, {k: v for shard in shards for k, v in load_file(path / shard).items()}
    if (path / "pytorch_model.bin").is_file():
        from gpt2kit.checkpoint import read_checkpoint

        return config, read_checkpoint(path / "pytorch_model.bin")
    raise GPT2KitError(
        f"{path} is not in the Hugging Face GPT-2 layout: model.safetensors (or pytorch_model.bin) is missing"
    )


def gpt_config(hf: dict[str, Any]) -> tuple[GPTConfig, int, float]:
    """gpt2kit sizes, MLP expansion and LayerNorm epsilon of a Hugging Face GPT-2 config."""
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new") not in _GELU_TANH, "gelu_new"),
        "scale_attn_weights": (not hf.get("scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), False),
        "add_cross_attention": (hf.get("add_cross_attention", False), False),
    }
    for key, (bad, supported) in unsupported.items():
        if bad:
            raise GPT2KitError(
                f"config.json has {key}={hf.get(key)!r}; gpt2kit's GPT-2 supports only {supported!r}"
            )
    n_embd = hf["n_embd"]
    hidden = hf.get("n_inner") or 4 * n_embd
    if hidden % n_embd:
        raise GPT2KitError(
            f"config.json has n_inner={hidden}, not a multiple of n_embd={n_embd}: GeluMLP cannot express it"
        )
    arch = GPTConfig(
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"],
        dropout=hf.get("resid_pdrop", 0.1),
        bias=True,
    )
    return arch, hidden // n_embd, hf.get("layer_norm_epsilon", 1e-5)


def state_from_hf(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face GPT-2 tensors → the state_dict of a :class:`GPTLitModule` (``model.`` names)."""
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    head = weights.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, weights.get("wte.weight", head)):
        raise GPT2KitError("lm_head.weight differs from wte.weight: untied GPT-2 heads are not supported")
    state = {}
    for key, value in weights.items():
        if _BUFFERS.fullmatch(key):
            continue
        name = re.sub(r"^h\.", "blocks.", key).replace("wpe.", "position.wpe.", 1)
        if _CONV1D.search(name):
            value = value.t()
        state[f"model.{name}"] = value.contiguous()
    return state


def state_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`state_from_hf` (``transformer.`` names, Conv1D weights, no lm_head)."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("model.")
        if _CONV1D.search(name):
            value = value.t()
        name = re.sub(r"^blocks\.", "h.", name).replace("position.wpe.", "wpe.", 1)
        out[f"transformer.{name}"] = value.contiguous()
    return out


def read_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer saved in a Hugging Face folder (gpt2kit's own file first), or None."""
    path = Path(path)
    if (path / TOKENIZER_FILE).is_file():
        return Tokenizer.from_json((path / TOKENIZER_FILE).read_text(encoding="utf-8"))
    return HFTokenizer.from_dir(path)


# -- commands -------------------------------------------------------------------------------------------


def import_hf(hf_dir: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Turn a Hugging Face GPT-2 folder into a gpt2kit checkpoint; returns its path.

    Args:
        hf_dir: folder with config.json and model.safetensors (or pytorch_model.bin).
        out: the checkpoint file to write (.ckpt).
        tokenizer: a gpt2kit tokenizer JSON (e.g. a prepared dataset's gpt2kit_tokenizer.json) to store
            instead of the folder's own tokenizer.
    """
    from gpt2kit.checkpoint import load_weights, save_checkpoint

    hf, weights = read_hf_dir(hf_dir)
    arch, expansion, eps = gpt_config(hf)
    parts = dataclasses.replace(
        GPT2,
        norm=functools.partial(GPT2.norm, bias=True, eps=eps),
        mlp=functools.partial(GPT2.mlp, expansion=expansion),
    )
    module = GPTLitModule(arch, **parts.as_dict())
    load_weights(module, state_from_hf(weights), source=str(hf_dir))
    from gpt2kit.interop.hf_tokenizer import read_chat_template

    module.chat_template = read_chat_template(hf_dir)
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise GPT2KitError(
                f"tokenizer file '{path}' does not exist: give a gpt2kit tokenizer JSON "
                "(a prepared dataset's gpt2kit_tokenizer.json)"
            )
        module.tokenizer = Tokenizer.from_json(path.read_text(encoding="utf-8"))
    else:
        module.tokenizer = read_tokenizer(hf_dir)
    if module.tokenizer is None:
        log.warning(
            "%s has no tokenizer files (tokenizer.json, or vocab.json + merges.txt): the checkpoint has no "
            "tokenizer, so generate cannot read text prompts; pass --tokenizer to add one",
            hf_dir,
        )
    elif module.tokenizer.vocab_size > arch.vocab_size:
        raise GPT2KitError(
            f"the tokenizer has {module.tokenizer.vocab_size} tokens but the model only {arch.vocab_size}: "
            "use the tokenizer the model was trained with"
        )
    path = save_checkpoint(module, out)
    # The folder's config.json rides along, so that export writes back every field it had.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.setdefault("gpt2kit", {})[HF_CONFIG] = hf
    torch.save(ckpt, path)
    return path


def _check_gpt2(module: GPTLitModule) -> float:
    """The LayerNorm epsilon, after checking that the model is a plain GPT-2 (what the layout can hold)."""
    model = module.model
    for slot in SLOTS:
        part, cls = model.component(slot), getattr(GPT2, slot)
        if type(part) is not cls:
            raise GPT2KitError(
                f"{slot} is {type(part).__name__}; the Hugging Face GPT-2 layout holds only {cls.__name__}: "
                "export a model built from GPT-2's components"
            )
    return model.ln_f.eps


def export_hf(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write a gpt2kit checkpoint as a Hugging Face GPT-2 folder (safetensors); returns the folder.

    Args:
        ckpt: a gpt2kit checkpoint (.ckpt).
        out_dir: the folder to write config.json, model.safetensors and the tokenizer into.
    """
    from safetensors.torch import save_file

    from gpt2kit.checkpoint import load_module, read_checkpoint
    from gpt2kit.interop.hf_tokenizer import save_hf_tokenizer

    saved = read_checkpoint(ckpt).get("gpt2kit", {})
    module = load_module(ckpt)
    eps = _check_gpt2(module)
    arch = module.model.config
    state = module.state_dict()
    # A model without biases is GPT-2 with zero biases: write the zeros the layout expects.
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear | LayerNorm) and sub.bias is None:
            state[f"{name}.bias"] = torch.zeros(sub.weight.shape[0], dtype=sub.weight.dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_to_hf(state), out_dir / "model.safetensors", metadata={"format": "pt"})
    tok = module.tokenizer
    eot = tok.eot_id if tok is not None else None
    hidden = module.model.blocks[0].mlp.c_fc.out_features
    # What the weights decide; the rest keeps the values an imported model came with (its config.json).
    fixed = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": arch.vocab_size,
        "n_positions": arch.block_size,
        "n_embd": arch.n_embd,
        "n_layer": arch.n_layer,
        "n_head": arch.n_head,
        "n_inner": None if hidden == 4 * arch.n_embd else hidden,
        "resid_pdrop": arch.dropout,
        "layer_norm_epsilon": eps,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
    }
    defaults = {
        "activation_function": "gelu_new",
        "embd_pdrop": arch.dropout,
        "attn_pdrop": arch.dropout,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
    }
    imported = saved.get(HF_CONFIG) or {}
    if imported.get("n_inner") == hidden:
        fixed["n_inner"] = hidden  # written out although it is the default: keep it as it was
    config = {**defaults, **imported, **fixed}
    if eot is not None:
        config["bos_token_id"] = config["eos_token_id"] = eot
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tok is not None:
        (out_dir / TOKENIZER_FILE).write_text(tok.to_json(), encoding="utf-8")
        save_hf_tokenizer(tok, out_dir, module.chat_template)  # what AutoTokenizer reads
        if eot is None:
            log.warning("%s", _no_end_of_text_hint(tok, out_dir))
    return out_dir


def _no_end_of_text_hint(tok: Tokenizer, out_dir: Path) -> str:
    """What lm-eval's ``hf`` backend needs for a tokenizer without an end-of-text token (no eos, no bos)."""
    head = f"the tokenizer has no <|endoftext|>, so {out_dir}'s tokenizer has no eos/bos token: "
    try:
        newline = tok.encode("\n")
    except GPT2KitError:
        newline = []
    if len(newline) != 1:
        return head + (
            "lm-eval's hf backend can score only tasks whose contexts are never empty, and no generate_until "
            "task; use --model gpt2kit (python -m gpt2kit evaluate) for the others"
        )
    return head + (
        f"for lm-eval's hf backend pass --model_args pretrained={out_dir},prefix_token_id={newline[0]} (the "
        "newline, which gpt2kit's backend starts an empty context with); generate_until tasks need an eos "
        "token: run those with --model gpt2kit (python -m gpt2kit evaluate)"
    )
