"""The ``pybus`` command (``pybus.cli:main``)."""

from .commands import main

__all__ = ["main"]
