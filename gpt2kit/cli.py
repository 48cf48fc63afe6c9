"""``python -m gpt2kit``: LightningCLI (fit / validate / test / predict) plus gpt2kit's own commands.

    python -m gpt2kit fit --config recipes/pretrain/shakespeare-char.yaml
    python -m gpt2kit prepare --config recipes/pretrain/gutenberg-gpt2.yaml   # the data alone
    python -m gpt2kit generate --ckpt runs/shakespeare-char/.../last.ckpt --prompt "ROMEO:"
    python -m gpt2kit chat --ckpt runs/chat-topical/checkpoints/last.ckpt    # multi-turn chat REPL
    python -m gpt2kit predict --config recipes/predict/completions.yaml --ckpt_path CKPT --data.prompts FILE
    python -m gpt2kit import-hf HF_DIR OUT.ckpt        # Hugging Face GPT-2 folder → checkpoint
    python -m gpt2kit export-hf CKPT OUT_DIR           # and back
    python -m gpt2kit evaluate --ckpt CKPT_OR_hf:gpt2 --tasks shakespeare_mc,hellaswag [--limit N]
    python -m gpt2kit list [KIND] [PATTERN]
    python -m gpt2kit ablate --config recipes/ablations/position-encoding.yaml [--parallel N]

Plugins (``gpt2kit.plugins`` entry points, ``--plugins MOD[,MOD]``, ``GPT2KIT_PLUGINS``) are imported
before the command line is parsed, so their components can be named in a recipe.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from gpt2kit.ablate import ablate_command
from gpt2kit.chat.repl import chat_command  # and gpt2kit.chat: ChatDataModule by its short name
from gpt2kit.errors import GPT2KitError
from gpt2kit.evaluate import evaluate_command
from gpt2kit.registry import export_plugins, failed_plugins, kinds, list_components, load_plugins, registry

log = logging.getLogger("gpt2kit")


def _readable(message: str) -> str:
    """Turn jsonargparse's nested report into one line; name registered alternatives for a bad component."""
    key = re.search(r'Parser key "([\w.]+)"', message)
    bad = re.search(r"(?:dot import path string|import|class path)[^:]*: '?([\w.]+)'?", message)
    slot = key.group(1).split(".")[-1] if key else ""
    if key and bad and slot in kinds():
        try:
            entry = registry(slot).entry(bad.group(1))
        except GPT2KitError as exc:
            return f"{key.group(1)}: {exc}"
        if bad.group(1) != entry.cls.__name__:  # a registry name: recipes name the class
            return (
                f"{key.group(1)}: '{bad.group(1)}' is the registered name of {entry.cls.__name__}; recipes and "
                f"options take the class name: {entry.cls.__name__} (or class_path {entry.class_path})"
            )
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    return "; ".join(dict.fromkeys(lines)).replace(":; ", ": ")


@contextlib.contextmanager
def program_args(args: Sequence[str] = ()) -> Iterator[None]:
    """``sys.argv`` is the program name and ``args`` inside, restored after.

    LightningCLI reads ``sys.argv`` (and warns when it is given ``args`` while sys.argv has some too).
    """
    saved = sys.argv
    sys.argv = [*saved[:1], *args]
    try:
        yield
    finally:
        sys.argv = saved


def _user_error(exc: BaseException | None) -> GPT2KitError | None:
    """The GPT2KitError behind ``exc``, if any (jsonargparse wraps errors raised while instantiating)."""
    while exc is not None and not isinstance(exc, GPT2KitError):
        exc = exc.__cause__ or exc.__context__
    return exc


class GPT2KitArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with errors on one line (plus a pointer to --help)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        cause = _user_error(ex)
        text = str(cause) if cause is not None else _readable(message)
        sys.stderr.write(
            f"error: {text}\n(run `python -m gpt2kit {' '.join(sys.argv[1:2])} --help` for the options)\n"
        )
        sys.exit(2)


class GPT2KitCLI(LightningCLI):
    """LightningCLI wired for gpt2kit: the data decides vocab_size, the model decides block_size.

    The Trainer's hardware flags are checked first (one-line errors, :mod:`gpt2kit.hardware`), and its
    checkpoints are written atomically (:class:`gpt2kit.resume.AtomicCheckpointIO`) unless the recipe
    brings its own CheckpointIO.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.arch.block_size", "data.init_args.block_size")
        # Only data that has a tokenizer decides vocab_size: prompts for `predict` keep the checkpoint's.
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """``hf:NAME`` in ``model.init_from`` and a CheckpointTokenizer's ``path``: the imported checkpoint."""
        from gpt2kit.interop.hub import is_hub_name, resolve_checkpoint

        config = self.config[self.subcommand] if self.subcommand else self.config
        for key, value in config.items(branches=False):
            if key.split(".")[-1] in ("init_from", "path") and is_hub_name(value):
                config[key] = resolve_checkpoint(value)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.pytorch.plugins.io import CheckpointIO

        from gpt2kit.hardware import check_trainer_flags
        from gpt2kit.resume import AtomicCheckpointIO

        check_trainer_flags(
            *(config.get(k, "auto") for k in ("accelerator", "devices", "strategy")), config.get("precision")
        )
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except GPT2KitError:
            raise
        except (MisconfigurationException, ValueError) as exc:  # Lightning's own checks, on one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GPT2KitError(f"trainer settings: {first}") from None


def lightning_main(args: Sequence[str] | None = None, run: bool = True) -> GPT2KitCLI:
    import lightning as L

    import gpt2kit.callbacks  # noqa: F401  short class names in recipes (JSONLWriter)
    import gpt2kit.data  # noqa: F401  short class names in recipes (TextDataModule, PromptDataModule)
    from gpt2kit.lit import GPTLitModule

    return GPT2KitCLI(
        GPTLitModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        parser_class=GPT2KitArgumentParser,
    )


# --- gpt2kit's own subcommands ----------------------------------------------------------------------------


def list_command(kind: str | None = None, pattern: str = "*") -> None:
    """Print the registered components (optionally one kind, names matching a wildcard pattern), each with
    its source: ``built-in``, or the plugin and distribution it came from."""
    rows = [
        (e.kind, e.name, e.cls.__name__, e.source, e.summary)
        for entries in list_components(kind, pattern).values()
        for e in entries
    ]
    if not rows:
        print(f"no {kind or 'component'} matches '{pattern}'")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(
        "name, class, source, summary; recipes and options take the class (--model.attention MathAttention)"
    )
    current = None
    for r in rows:
        if r[0] != current:
            current = r[0]
            print(f"\n{current}:")
        print(f"  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}")
    if failed_plugins:
        print("\nplugins that failed to load (skipped):")
        for name, reason in failed_plugins.items():
            print(f"  {name}: {reason}")


def generate_command(
    ckpt: str,
    prompt: str = "",
    prompt_file: str | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: list[str] | None = None,
    stop_at_eot: bool = True,
    seed: int | None = None,
    device: str = "cpu",
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = "float32",
) -> None:
    """Sample text from a checkpoint, printing tokens as they are generated.

    Args:
        ckpt: path to a gpt2kit checkpoint (.ckpt), trained or from import-hf.
        prompt: text to continue; empty starts from the end-of-text token.
        prompt_file: a file of prompts (one per line, or .jsonl with {"prompt": ...}) instead of --prompt.
        num_samples: number of independent samples per prompt.
        max_new_tokens: tokens to generate per sample.
        temperature: softmax temperature; 0 is greedy.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling threshold in (0, 1] (None: off).
        repetition_penalty: > 1 makes tokens already in the context less likely (1: off).
        stop: stop strings; a sample ends before the first one it produces.
        stop_at_eot: end a sample at the end-of-text token.
        seed: seed for reproducible samples (sample i uses seed + i).
        device: torch device to run on (cpu, cuda, cuda:1, mps).
        dtype: weight dtype; bfloat16 halves the bytes read per token (faster decoding), int8 (CPU)
            quarters them and is faster still, at a small cost in accuracy.
    """
    from gpt2kit.data import read_prompts
    from gpt2kit.generate import SamplingConfig, encode_prompt, stream_text

    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=list(stop or []),
        stop_at_eot=stop_at_eot,
        seed=seed,
    )
    if num_samples < 1:
        raise GPT2KitError(f"num_samples={num_samples} must be >= 1")
    prompts = read_prompts(prompt_file) if prompt_file is not None else [prompt]
    module, model = load_for_decoding(ckpt, device, dtype)
    tok = module.tokenizer
    if tok is None:
        raise GPT2KitError(
            f"checkpoint {ckpt} carries no tokenizer to read the prompt with: "
            "re-import it with `import-hf ... --tokenizer gpt2kit_tokenizer.json`"
        )
    ids = [encode_prompt(tok, text) for text in prompts]  # every prompt is checked before sampling
    n = 0
    for i, (text, prompt_ids) in enumerate(zip(prompts, ids, strict=True)):
        for j in range(num_samples):
            if len(prompts) > 1:
                print(f"--- prompt {i + 1}, sample {j + 1} ---")
            elif num_samples > 1:
                print(f"--- sample {j + 1} ---")
            if seed is not None:
                cfg.seed = seed + n
            n += 1
            sys.stdout.write(text)
            for piece in stream_text(model, tok, prompt_ids, cfg):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")


def load_for_decoding(ckpt: str, device: str, dtype: str):
    """A checkpoint's module, and its model on ``device`` with weights in ``dtype`` (or int8) to decode with."""
    import torch

    from gpt2kit.checkpoint import load_module
    from gpt2kit.interop.hub import resolve_checkpoint
    from gpt2kit.quantize import quantize_int8

    module = load_module(resolve_checkpoint(ckpt), map_location=_device(device))  # hf:NAME too
    if dtype == "int8":
        return module, quantize_int8(module.model)
    return module, module.to(getattr(torch, dtype)).model


def _device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise GPT2KitError(f"device={name!r} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPT2KitError(f"device={name!r} but CUDA is not available here: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device={name!r} but MPS is not available here: use --device cpu")
    return name


def import_hf_command(hf_dir: str, out: str, tokenizer: str | None = None) -> None:
    """Turn a Hugging Face GPT-2 folder (config.json + model.safetensors) into a gpt2kit checkpoint.

    Args:
        hf_dir: the Hugging Face model folder (e.g. a downloaded `gpt2` snapshot), or a hub name:
            hf:gpt2, hf:ORG/NAME@REVISION.
        out: the checkpoint file to write (.ckpt).
        tokenizer: a gpt2kit tokenizer JSON to store instead of the folder's own tokenizer.
    """
    from gpt2kit.interop.hf import import_hf
    from gpt2kit.interop.hub import resolve_folder

    print(f"wrote {import_hf(resolve_folder(hf_dir), out, tokenizer)}")


def export_hf_command(ckpt: str, out_dir: str) -> None:
    """Write a gpt2kit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors).

    Args:
        ckpt: a gpt2kit checkpoint (.ckpt).
        out_dir: the folder to write.
    """
    from gpt2kit.interop.hf import export_hf

    print(f"wrote {export_hf(ckpt, out_dir)}")


def prepare_command(args: Sequence[str]) -> None:
    """Prepare a recipe's data (tokenizer training, token shards) without training, with a progress bar.

    Only the recipe's ``data:`` section is read; its other sections are accepted and ignored, and
    ``--data.*`` overrides work as for ``fit``.
    """
    import argparse

    from jsonargparse import ActionConfigFile
    from lightning import LightningDataModule

    from gpt2kit.data import TextDataModule

    parser = GPT2KitArgumentParser(prog="python -m gpt2kit prepare", description=prepare_command.__doc__)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a recipe; its data: section is used")
    parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=True)
    for section in ("seed_everything", "trainer", "model", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{section}", type=Any, default=None, help=argparse.SUPPRESS)
    cfg = parser.parse_args(list(args))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    data = instantiate(cfg).data
    if not isinstance(data, TextDataModule):
        data.prepare_data()
        return
    prepared = data.prepared(progress=True)
    meta = prepared.meta
    print(
        f"{prepared.path}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}, "
        f"{meta['val_bytes'] / meta['val_tokens']:.2f} bytes per token, split: {meta['split']})"
    )


def _run_function(fn: Callable[..., None], args: Sequence[str], prog: str) -> None:
    parser = ArgumentParser(prog=f"python -m gpt2kit {prog}", description=(fn.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(fn, as_group=False, as_positional=fn in POSITIONAL)
    cfg = parser.parse_args(list(args))
    fn(**{k: v for k, v in cfg.as_dict().items() if not k.startswith("__")})


COMMANDS: dict[str, Callable[..., None]] = {
    "list": list_command,
    "generate": generate_command,
    "chat": chat_command,
    "prepare": prepare_command,
    "import-hf": import_hf_command,
    "export-hf": export_hf_command,
    "ablate": ablate_command,
    "evaluate": evaluate_command,
}
POSITIONAL = {import_hf_command, export_hf_command}
"""Commands whose required arguments are positional (``import-hf HF_DIR OUT``)."""


def _pop_plugins(argv: list[str]) -> list[str]:
    modules: list[str] = []
    for i, arg in reversed(list(enumerate(argv))):
        if arg == "--plugins" and i + 1 < len(argv):
            modules += argv[i + 1].split(",")
            del argv[i : i + 2]
        elif arg.startswith("--plugins="):
            modules += arg.split("=", 1)[1].split(",")
            del argv[i]
    return [m for m in modules if m]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        explicit = _pop_plugins(argv)
        load_plugins(explicit)
        export_plugins(explicit)  # DDP ranks and ablation runs load them too
        if argv and argv[0] in COMMANDS:
            if argv[0] == "list":
                list_command(*argv[1:3])
            elif argv[0] in ("prepare", "ablate"):  # parse their own arguments
                COMMANDS[argv[0]](argv[1:])
            else:
                _run_function(COMMANDS[argv[0]], argv[1:], argv[0])
        else:
            with program_args(argv):
                lightning_main()
    except Exception as exc:
        if (cause := _user_error(exc)) is None:
            raise
        sys.stderr.write(f"error: {cause}\n")
        sys.exit(1)
