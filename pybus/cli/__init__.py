"""The ``pybus`` command (``pybus.cli:main``)."""

from .main import main

__all__ = ["main"]
