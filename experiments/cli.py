"""The value types of every command-line flag of the experiment scripts.

Each flag of a ``python -m experiments.NAME`` script is parsed by one of these ``argparse``
types (or by ``choices=`` / a switch), so a value outside its domain is refused by the parser
itself: one ``error:`` line, exit status 2, before anything is loaded or written. Each type
states its domain (``Ints(1, 4096)``), which ``tests/test_cli.py`` reads to try values outside
it on every flag of every script.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also refuses ``--flag=--`` (argparse reads it as no value
    at all, so the flag would silently take an empty list)."""

    def _get_values(self, action, arg_strings):
        if action.option_strings and action.nargs in (None, "+") and all(arg == "--" for arg in arg_strings):
            self.error(f"argument {action.option_strings[0]}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


#: Upper bound of a time-step count: far beyond any use here, small enough to refuse a typo.
MAX_STEPS = 4096


class Ints:
    """Integers in ``[minimum, maximum]``."""

    def __init__(self, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum
        self.__name__ = "integer"  # argparse names the type in its messages

    def __call__(self, text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not self.minimum <= value <= self.maximum:
            raise argparse.ArgumentTypeError(f"{value} is not in [{self.minimum}, {self.maximum}]")
        return value

    def __repr__(self) -> str:
        return f"Ints({self.minimum}, {self.maximum})"


class Floats:
    """Finite floats in ``[minimum, maximum]`` (``(minimum, maximum]`` with ``open_below``)."""

    def __init__(self, minimum: float, maximum: float, *, open_below: bool = False):
        self.minimum, self.maximum, self.open_below = minimum, maximum, open_below
        self.__name__ = "number"

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value <= self.minimum if self.open_below else value < self.minimum
        if not math.isfinite(value) or below or value > self.maximum:
            bracket = "(" if self.open_below else "["
            raise argparse.ArgumentTypeError(f"{value} is not in {bracket}{self.minimum}, {self.maximum}]")
        return value

    def __repr__(self) -> str:
        return f"Floats({self.minimum}, {self.maximum}, open_below={self.open_below})"


class Name:
    """A plain name (letters, digits, ``_``, ``-``, ``.`` inside): no path separator, no ``..``,
    not hidden, none of ``reserved``. Used for names that become file or directory names."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self.reserved = reserved
        self.__name__ = "name"

    def __call__(self, text: str) -> str:
        plain = text and all(c.isalnum() or c in "_-." for c in text) and not text.startswith(".")
        if not plain or text in self.reserved:
            also = f", not one of {', '.join(self.reserved)}" if self.reserved else ""
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a plain name (letters, digits, '_', '-', '.', not hidden, no path{also})"
            )
        return text

    def __repr__(self) -> str:
        return f"Name(reserved={self.reserved})"


class Directory:
    """A directory path: with ``exists``, one that exists; otherwise one that can be created
    (no existing file at it or above it)."""

    def __init__(self, *, exists: bool):
        self.exists = exists
        self.__name__ = "directory"

    def __call__(self, text: str) -> Path:
        if not text or "\0" in text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a directory path")
        path = Path(text)
        if self.exists and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not an existing directory")
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise argparse.ArgumentTypeError(f"{text} cannot be a directory: {blocking} is a file")
        return path

    def __repr__(self) -> str:
        return f"Directory(exists={self.exists})"


class Choice:
    """One of ``values``."""

    def __init__(self, values):
        self.values = tuple(values)
        self.__name__ = "choice"

    def __call__(self, text: str) -> str:
        if text not in self.values:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(self.values)}")
        return text

    def __repr__(self) -> str:
        return f"Choice({self.values})"


class PathText:
    """A path given as text (empty: the default); no NUL byte, no line break."""

    def __init__(self):
        self.__name__ = "path"

    def __call__(self, text: str) -> str:
        if "\0" in text or "\n" in text:
            raise argparse.ArgumentTypeError(f"{text!r} is not a path")
        return text

    def __repr__(self) -> str:
        return "PathText()"


class NewFile:
    """A file path to write: its directory exists, and it is not itself a directory."""

    def __init__(self):
        self.__name__ = "file"

    def __call__(self, text: str) -> Path:
        path = Path(text)
        if not text or "\0" in text or path.is_dir() or not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is not a file path in an existing directory")
        return path

    def __repr__(self) -> str:
        return "NewFile()"


#: Time-step counts (T, rho, tau, ...).
STEPS = Ints(1, MAX_STEPS)
#: Sizes and counts that must be positive (images, batches, repeats).
COUNT = Ints(1, 10**9)
#: Seeds.
SEED = Ints(0, 2**32 - 1)
