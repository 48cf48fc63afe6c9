"""Training: the LightningModule, its callbacks, optimizers and schedules, exact resume, and the recipe CLI.

* :mod:`~gpt2kit.training.lit` — :class:`GPTLitModule`: a GPT built from a recipe's components, its loss,
  optimizer groups and schedule, validation and ``predict_step`` (a client of :mod:`gpt2kit.decoding`);
* :mod:`~gpt2kit.training.optim` — optimizers (GPT-2's AdamW, Muon + AdamW) and LR schedules;
* :mod:`~gpt2kit.training.callbacks` — progress, sample generation, final full validation, JSONL writer;
* :mod:`~gpt2kit.training.resume` — atomic checkpoints and the exact resume after a kill;
* :mod:`~gpt2kit.training.hardware`, :mod:`~gpt2kit.training.perf` — precision and device checks, speed;
* :mod:`~gpt2kit.training.cli` — LightningCLI wired for gpt2kit (fit / validate / test / predict).

Nothing is imported here, so ``import gpt2kit.training.optim`` does not load Lightning's Trainer.
"""
