"""Renamed public options and attributes: the old spelling keeps working for one release.

Every renamed parameter or attribute of a public class goes through here, so the warning says
the same thing everywhere: what to write instead, and that the old name goes in the next
release.
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import ValidationError

__all__ = ["DeprecatedAlias", "deprecated_attribute", "renamed"]


def renamed(
    cls: str, old: str, old_value: Any, new: str, new_value: Any, default: Any, depth: int = 0
) -> Any:
    """The value of option ``new``, given under its deprecated name ``old`` or its own.

    ``old_value`` None: the old name was not used. Used: a DeprecationWarning naming the new
    spelling, and a ValidationError when both spellings carry a value. ``depth``: how many
    helper calls stand between ``__init__`` and this function (the warning names the caller).
    """
    if old_value is None:
        return new_value
    # stacklevel: this function, any helpers (depth), __init__, the caller
    warnings.warn(
        f"{cls}({old}=) is deprecated: use {new}= (the same value); the old name will be "
        "removed in the next release",
        DeprecationWarning,
        stacklevel=3 + depth,
    )
    if new_value != default:
        raise ValidationError(f"{cls}: pass {new}= only ({old}= is its deprecated old name)")
    return old_value


def deprecated_attribute(obj: Any, old: str, new: str) -> Any:
    """Read ``obj.<new>`` for the deprecated attribute ``old``, with a DeprecationWarning."""
    warnings.warn(
        f"{type(obj).__name__}.{old} is deprecated: use .{new}; the old name will be removed "
        "in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(obj, new)


class DeprecatedAlias:
    """A class attribute that reads (and writes) another under its deprecated old name:
    ``initial = DeprecatedAlias("initial_s")``."""

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        warnings.warn(
            f"{type(obj).__name__}.{self.old} is deprecated: use .{self.new}; the old name will "
            "be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(obj, self.new)

    def __set__(self, obj: Any, value: Any) -> None:
        warnings.warn(
            f"{type(obj).__name__}.{self.old} is deprecated: use .{self.new}; the old name will "
            "be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        setattr(obj, self.new, value)
