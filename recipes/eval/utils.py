"""Offline lm-eval tasks built from the corpora gpt2kit already has (GPT2KIT_DATA, the cache, or a
checked download): no dataset from the Hugging Face Hub is needed.

Every task reads gpt2kit's *validation* split of its corpus, so a model trained by a gpt2kit recipe on
that corpus is scored on text it did not train on:

- Tiny Shakespeare: one document, its last 10% of bytes (val_fraction 0.1, nanoGPT's split);
- chinese-poetry: every 10th poem (val_fraction 0.1, whole documents), as ``prepare`` holds them out.

Distractors are drawn with a fixed seed, so a task is the same on every machine.
"""

from __future__ import annotations

import random
import re

import datasets

from gpt2kit.data.prepare import held_out

VAL_FRACTION = 0.1
CHOICES = 4
SEED = 1234


def _documents(corpus: str) -> list[str]:
    from gpt2kit.data import TextSource

    return ["".join(doc.pieces) for doc in TextSource.resolve(corpus).documents()]


def _split(rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def _choices(rng: random.Random, answer: str, pool: list[str]) -> tuple[list[str], int]:
    others = [p for p in rng.sample(pool, min(len(pool), 4 * CHOICES)) if p != answer][: CHOICES - 1]
    options = [answer, *others]
    rng.shuffle(options)
    return options, options.index(answer)


def shakespeare_val() -> str:
    """Tiny Shakespeare's validation text, from the first speech that starts inside it."""
    data = _documents("tinyshakespeare")[0].encode("utf-8")
    tail = data[int(len(data) * (1 - VAL_FRACTION)) :].decode("utf-8", errors="ignore")
    return tail[tail.index("\n\n") + 2 :]


def shakespeare_mc(**kwargs) -> datasets.DatasetDict:
    """Which line comes next? A speech's opening (speaker and first lines), the true next line and
    three lines from other speeches of the validation split."""
    speeches = [s.split("\n") for s in shakespeare_val().split("\n\n") if s.count("\n") >= 2]
    pool = [line for lines in speeches for line in lines[1:] if len(line) >= 15]
    rng = random.Random(SEED)
    rows = []
    for lines in speeches:
        k = 1 + rng.randrange(len(lines) - 2)  # the speaker's line and k-1 lines of context
        answer = lines[k]
        if len(answer) < 15:
            continue
        choices, label = _choices(rng, answer, pool)
        rows.append({"context": "\n".join(lines[:k]) + "\n", "choices": choices, "label": label})
    return _split(rows)


def shakespeare_ppl(**kwargs) -> datasets.DatasetDict:
    """The validation split's speeches, grouped into passages of about 1,000 characters, for perplexity."""
    passages, current = [], ""
    for speech in shakespeare_val().split("\n\n"):
        current = f"{current}\n\n{speech}" if current else speech
        if len(current) >= 1000:
            passages.append({"text": current})
            current = ""
    return _split(passages)


_COUPLET = re.compile(r"^([^，。？！；]{5}|[^，。？！；]{7})，([^，。？！；]+)[。？！；]$")


def zh_poetry_mc(**kwargs) -> datasets.DatasetDict:
    """Complete the couplet: a Tang poem's title, its lines so far and a line's first half; the true
    second half and three of the same length from other held-out poems."""
    poems = [
        doc.split("\n") for i, doc in enumerate(_documents("chinese-poetry")) if held_out(i, VAL_FRACTION)
    ]
    rng = random.Random(SEED)
    by_length: dict[int, list[str]] = {}
    items = []
    for poem in poems:
        title, lines = poem[0], poem[1:]
        for n, line in enumerate(lines[:4]):
            m = _COUPLET.match(line)
            if m:
                first, second = m.group(1), line[len(m.group(1)) + 1 :]
                by_length.setdefault(len(second), []).append(second)
                items.append((title, lines[:n], first, second))
                break  # one question per poem
    rows = []
    for title, before, first, second in items:
        pool = by_length[len(second)]
        if len(set(pool)) < CHOICES:
            continue
        choices, label = _choices(rng, second, pool)
        context = "\n".join([title, *before, first + "，"])
        rows.append({"context": context, "choices": choices, "label": label})
    return _split(rows)
