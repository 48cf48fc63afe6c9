"""The one exception type for mistakes a user can fix.

Its message is a single line that names the bad value and the fix; the CLI prints it without a
traceback. Internal invariants use ``assert`` instead.
"""


class GPT2KitError(ValueError):
    """A user-facing error: bad configuration, missing data, incompatible checkpoint ..."""
