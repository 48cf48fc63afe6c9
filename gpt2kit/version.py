"""The version of gpt2kit (as in pyproject.toml), stored in every checkpoint."""

__version__ = "0.1.0"
