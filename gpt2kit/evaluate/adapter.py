"""lm-eval's language-model interface answered by a gpt2kit model (registered with lm-eval as ``gpt2kit``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch

from gpt2kit.errors import GPT2KitError

log = logging.getLogger(__name__)

try:  # lm-eval is an optional dependency (pip install 'gpt2kit[eval]')
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the adapter is defined only with lm-eval installed
    TemplateLM = object  # type: ignore[assignment,misc]

    def register_model(*names: str):  # type: ignore[no-redef]
        return lambda cls: cls


def _require_lm_eval() -> None:
    if TemplateLM is object:
        raise GPT2KitError("evaluation needs lm-evaluation-harness: pip install 'gpt2kit[eval]' (lm-eval)")


@register_model("gpt2kit")
class GPT2KitLM(TemplateLM):
    """A gpt2kit model as an lm-evaluation-harness language model."""

    def __init__(
        self,
        ckpt: str | None = None,
        batch_size: int | str = 8,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_gen_toks: int = 256,
        max_batch_size: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """
        Args:
            ckpt: a gpt2kit checkpoint (.ckpt), or a hub name (hf:gpt2).
            batch_size: requests per forward pass (lm-eval's "auto" means 8).
            device: torch device (cpu, cuda, cuda:1, mps).
            dtype: weight dtype to evaluate in.
            max_gen_toks: generate_until's token budget when a task names none.
            max_batch_size: accepted for lm-eval's command line; unused.
            model: a :class:`gpt2kit.model.GPT` to evaluate instead of a checkpoint (with ``tokenizer``).
            tokenizer: the model's gpt2kit tokenizer.
        """
        _require_lm_eval()
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s but CUDA is not available here: evaluating on the CPU", device)
            device = "cpu"  # as lm-eval's hf backend does (its command line asks for cuda by default)
        if model is None:
            if ckpt is None:
                raise GPT2KitError("give the checkpoint to evaluate: ckpt=PATH (or hf:NAME)")
            model, tokenizer = load_language_model(ckpt, device, dtype)
        if tokenizer is None:
            raise GPT2KitError(
                "the model has no tokenizer to read the tasks' text with: evaluate a checkpoint saved by a "
                "gpt2kit run (or import-hf one with --tokenizer)"
            )
        check_language_model(model, str(ckpt or "the model"))
        self.model = model
        self.gpt2kit_tokenizer = tokenizer
        self.batch_size_per_gpu = 8 if str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise GPT2KitError(f"batch_size={batch_size} must be >= 1")
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device

    # -- what lm-eval asks of a model ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        tok = self.gpt2kit_tokenizer
        if tok.eot_id is not None:
            return tok.eot_id
        return self.tok_encode("\n")[0]  # as generate's empty prompt: a tokenizer without <|endoftext|>

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return type(self.gpt2kit_tokenizer).__name__

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.gpt2kit_tokenizer.encode(string)  # special-token strings are text, as in a corpus

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.gpt2kit_tokenizer.decode(list(tokens))

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: Sequence[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), greedy?) per (key, context ids, continuation ids)."""
        too_long = next((len(c) for _, _, c in requests if len(c) > self.max_length), None)
        if too_long is not None:
            raise GPT2KitError(
                f"a continuation of {too_long} tokens does not fit the model's context of {self.max_length} "
                "tokens: evaluate a model with a longer block_size, or a task with shorter answers"
            )
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size_per_gpu):
            batch = order[start : start + self.batch_size_per_gpu]
            rows = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in batch]
            width = max(len(r) for r in rows)  # the longest first: the first row sets the width
            idx = torch.zeros(len(rows), width, dtype=torch.long)
            for b, row in enumerate(rows):
                idx[b, : len(row)] = torch.tensor(row)  # right padding: causal positions never see it
            logits = self.model(idx.to(self._device))  # (B, T, vocab)
            for b, i in enumerate(batch):
                cont, n = requests[i][2], len(rows[b])
                logp = logits[b, n - len(cont) : n].float().log_softmax(-1)  # (len(cont), vocab)
                target = torch.tensor(cont, device=logp.device)
                score = logp.gather(-1, target[:, None]).sum().item()
                results[i] = (score, bool((logp.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in lm-eval's windows of the model's context."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for n, request in enumerate(requests):
            (text,) = request.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[n] += score
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, up to the first stop string (greedy unless the task samples)."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from gpt2kit.config import SamplingConfig
        from gpt2kit.decoding import generate

        eos = self.tok_decode([self.eot_token_id]) if self.gpt2kit_tokenizer.eot_id is not None else None
        groups: dict[str, list[int]] = {}
        for n, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
        out: list[str] = [""] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise GPT2KitError(
                    f"the task asks for {max_gen_toks} new tokens, but the model's context is only "
                    f"{self.max_length}: lower the task's max_gen_toks"
                )
            cfg = SamplingConfig(
                max_new_tokens=max_gen_toks,
                temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                top_k=None,
                top_p=kwargs.get("top_p") if kwargs.get("do_sample") else None,
                stop=[s for s in until if s],
                seed=0,
            )
            room = self.max_length - max_gen_toks
            for start in range(0, len(members), self.batch_size_per_gpu):
                chunk = members[start : start + self.batch_size_per_gpu]
                prompts = [self.tok_encode(requests[n].args[0])[-room:] or [self.eot_token_id] for n in chunk]
                for n, done in zip(
                    chunk, generate(self.model, prompts, cfg, self.gpt2kit_tokenizer), strict=True
                ):
                    text = done.text or ""
                    for stop in until:  # as lm-eval's hf backend: cut at every stop string
                        if stop:
                            text = text.split(stop)[0]
                    out[n] = text
        return out


# -- loading and checking ---------------------------------------------------------------------------------


def load_language_model(ckpt: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """A checkpoint's model (eval mode, on ``device`` in ``dtype``) and its tokenizer; hf: names too."""
    from gpt2kit.decoding import load_for_inference
    from gpt2kit.interop.hub import resolve_checkpoint

    loaded = load_for_inference(resolve_checkpoint(ckpt), device, dtype)
    return loaded.model, loaded.require_tokenizer("to read the tasks' text with")


@torch.no_grad()
def check_language_model(model: Any, source: str) -> None:
    """Refuse a model whose head does not give next-token logits over its vocabulary."""
    param = next(model.parameters())
    probe = model(torch.zeros(1, 2, dtype=torch.long, device=param.device))
    vocab = model.config.vocab_size
    if probe.ndim != 3 or probe.shape[-1] != vocab:
        raise GPT2KitError(
            f"{source} is not a language model: its head ({type(model.head).__name__}) gives outputs of shape "
            f"{tuple(probe.shape)} for 2 tokens, not next-token logits over {vocab} tokens; evaluate a "
            "checkpoint with a language-model head (TiedLMHead, UntiedLMHead)"
        )
