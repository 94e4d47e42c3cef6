"""The version of tinylora (pyproject.toml reads it from here)."""

__version__ = "0.1.0"
