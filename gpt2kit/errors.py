"""The one exception type for mistakes a user can fix, and how to find it behind other exceptions.

Its message is a single line that names the bad value and the fix; the command line prints it without
a traceback (:func:`gpt2kit.commands.main`, the one place that does). Internal invariants use ``assert``.
"""

from __future__ import annotations


class GPT2KitError(ValueError):
    """A user-facing error: bad configuration, missing data, incompatible checkpoint ..."""


def user_error(exc: BaseException | None) -> GPT2KitError | None:
    """The GPT2KitError behind ``exc``, if any: ``exc`` itself, or its cause or context, at any depth.

    jsonargparse and Lightning wrap what a constructor or hook raises; this finds the user's mistake in it.
    """
    seen: set[int] = set()
    while exc is not None and not isinstance(exc, GPT2KitError) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc if isinstance(exc, GPT2KitError) else None
