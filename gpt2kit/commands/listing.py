"""``python -m gpt2kit list [KIND] [PATTERN]``: the registered components, with where each came from."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gpt2kit.components import list_components
from gpt2kit.errors import GPT2KitError
from gpt2kit.registry import failed_plugins


def list_command(kind: str | None = None, pattern: str = "*") -> None:
    """Print the registered components (optionally one kind, names matching a wildcard pattern), each with
    its source: ``built-in``, or the plugin and distribution it came from."""
    rows = [
        (e.kind, e.name, e.cls.__name__, e.source, e.summary)
        for entries in list_components(kind, pattern).values()
        for e in entries
    ]
    if not rows:
        sys.stdout.write(f"no {kind or 'component'} matches '{pattern}'\n")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    sys.stdout.write(
        "name, class, source, summary; recipes and options take the name or the class "
        "(--model.attention math or MathAttention)\n"
    )
    current = None
    for r in rows:
        if r[0] != current:
            current = r[0]
            sys.stdout.write(f"\n{current}:\n")
        sys.stdout.write(f"  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}\n")
    if failed_plugins:
        sys.stdout.write("\nplugins that failed to load (skipped):\n")
        for name, reason in failed_plugins.items():
            sys.stdout.write(f"  {name}: {reason}\n")


def list_main(args: Sequence[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(f"usage: python -m gpt2kit list [KIND] [PATTERN]\n\n{list_command.__doc__}\n")
        return
    flags = [a for a in args if a.startswith("-")]
    if flags or len(args) > 2:
        what = f"no option {flags[0]}" if flags else f"at most two arguments, not {len(args)}"
        raise GPT2KitError(
            f"list takes {what}: python -m gpt2kit list [KIND] [PATTERN], e.g. list attention '*window*'"
        )
    list_command(*args)
