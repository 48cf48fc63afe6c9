"""Command-line parsing that answers in one line: jsonargparse's reports made readable, and did-you-mean.

Every parser of gpt2kit (LightningCLI's, in :mod:`gpt2kit.training.cli`, and those of gpt2kit's own
commands) reports a bad argument as ``error: ...`` plus one line pointing to ``--help``, exit code 2,
instead of a usage block or a nested report.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

from jsonargparse import ArgumentParser

from gpt2kit.errors import GPT2KitError, user_error
from gpt2kit.registry import kinds, registry


def readable(message: str) -> str:
    """Turn jsonargparse's nested report into one line; name registered alternatives for a bad component."""
    key = re.search(r'Parser key "([\w.]+)"', message)
    bad = re.search(r"(?:dot import path string|import|class path)[^:]*: '?([\w.]+)'?", message)
    slot = key.group(1).split(".")[-1] if key else ""
    if key and bad and slot in kinds():
        try:
            registry(slot).entry(bad.group(1))
        except GPT2KitError as exc:
            return f"{key.group(1)}: {exc}"
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    return "; ".join(dict.fromkeys(lines)).replace(":; ", ": ")


def did_you_mean(message: str, options: Iterable[str]) -> str:
    """``message`` with the closest real option (or subcommand) named for a misspelt one."""
    choice = re.search(r"invalid choice: '([^']+)' \(choose from (.*)\)", message)
    if choice:
        names = re.findall(r"'([^']+)'", choice.group(2))
        close = difflib.get_close_matches(choice.group(1), names, n=1, cutoff=0.5)
        hint = f": did you mean {close[0]}?" if close else ""
        return f"unknown command '{choice.group(1)}'{hint} (commands: {', '.join(names)})"
    found = re.search(r"unrecognized arguments: (.*)", message)
    if not found:
        return message
    known = sorted({o for o in options if o.startswith("--")})
    flags = [arg.split("=", 1)[0] for arg in found.group(1).split() if arg.startswith("-")]
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if close:
            return f"unknown option {flag}: did you mean {close[0]}?"
    return f"unknown option {flags[0]}" if flags else message.strip()


class OneLineErrors:
    """Mixin for a jsonargparse parser: a parse error is ``error: ...`` + a ``--help`` pointer, exit 2.

    A GPT2KitError behind the error (raised while instantiating a class) is said as it is; jsonargparse's
    own reports become one line (:func:`readable`), with a did-you-mean for a misspelt option.
    """

    exit_on_error: bool

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)  # type: ignore[misc]
        cause = user_error(ex)
        text = str(cause) if cause is not None else did_you_mean(readable(message), self._option_names())
        command = " ".join(a for a in sys.argv[1:2] if not a.startswith("-"))
        if "invalid choice" in message and "subcommand" in message:
            command = ""
        sys.stderr.write(
            f"error: {text}\n(run `python -m gpt2kit {command + ' ' if command else ''}--help`)\n"
        )
        sys.exit(2)

    def _option_names(self) -> list[str]:
        names = list(getattr(self, "_option_string_actions", {}))
        for action in getattr(self, "_actions", []):  # a subcommand's parser, when the error is the parent's
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):  # subcommands (an option's choices are a plain sequence)
                for sub in choices.values():
                    names += list(getattr(sub, "_option_string_actions", {}))
        return names


class CommandParser(OneLineErrors, ArgumentParser):
    """jsonargparse's ArgumentParser with one-line errors: the parser of gpt2kit's own commands."""


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
