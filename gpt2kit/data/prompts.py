"""Prompts to complete: the data of ``python -m gpt2kit predict``.

A prompt file is either plain text, one prompt per line (write a newline inside a prompt as ``\\n``),
or JSON Lines whose objects have a ``"prompt"`` string (a ``.jsonl`` file). Each batch is a
:class:`PromptBatch` — the prompts' text and how to complete them; the model tokenizes them with its
own tokenizer (from the checkpoint) in ``predict_step``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from gpt2kit.config import SamplingConfig
from gpt2kit.errors import GPT2KitError


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: JSON Lines with a "prompt" key (.jsonl), or one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise GPT2KitError(f"prompt file '{path}' does not exist: give a text file with one prompt per line")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line.replace("\\n", "\n") for line in lines]
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompts.append(json.loads(line)["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GPT2KitError(
                f'{path}:{n} is not a JSON object with a "prompt" string: write {{"prompt": "..."}} per line'
            ) from None
        if not isinstance(prompts[-1], str):
            raise GPT2KitError(f'{path}:{n}: "prompt" must be a string, got {prompts[-1]!r}')
    return prompts


@dataclass
class PromptBatch:
    """Prompts to complete together, and how."""

    ids: list[int]
    """Line number (from 0) of each prompt in the prompt file."""
    samples: list[int]
    """Which sample of its prompt each row is (0 .. num_samples - 1)."""
    prompts: list[str]
    """The prompts' text."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling options shared by the batch."""


class PromptDataModule(L.LightningDataModule):
    """Serves the prompts of a file in batches, for ``predict``."""

    def __init__(
        self,
        prompts: str,
        sampling: SamplingConfig = SamplingConfig(),
        num_samples: int = 1,
        batch_size: int = 8,
    ) -> None:
        """
        Args:
            prompts: a text file with one prompt per line, or a .jsonl file of {"prompt": ...} objects.
            sampling: how completions are sampled (the seed gives each batch its own reproducible stream).
            num_samples: completions per prompt.
            batch_size: prompts completed together (left-padded to a common length).
        """
        super().__init__()
        if num_samples < 1 or batch_size < 1:
            raise GPT2KitError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
        self.prompts = prompts
        self.sampling = sampling
        self.num_samples = num_samples
        self.batch_size = batch_size
        self._rows: list[tuple[int, int, str]] | None = None

    def setup(self, stage: str | None = None) -> None:
        texts = read_prompts(self.prompts)
        self._rows = [(i, n, text) for i, text in enumerate(texts) for n in range(self.num_samples)]

    def _collate(self, rows: list[tuple[int, int, str]]) -> PromptBatch:
        ids, samples, texts = (list(col) for col in zip(*rows, strict=True))
        return PromptBatch(ids, samples, texts, self.sampling)

    def predict_dataloader(self) -> DataLoader:
        if self._rows is None:
            self.setup("predict")
        return DataLoader(self._rows, batch_size=self.batch_size, shuffle=False, collate_fn=self._collate)
