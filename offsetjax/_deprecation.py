"""Keeping an old call working for one release, with a warning that says what to write now."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable


def renamed_argument(old: str, new: str, *, since: str) -> Callable:
    """Accept ``old=`` as the keyword ``new=`` of the decorated function, with a
    DeprecationWarning naming both (passing both is a TypeError)."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{function.__name__}() got {old}= and {new}=: {old} is the old name of {new}")
                warnings.warn(
                    f"{function.__name__}({old}=...) is deprecated since offsetjax {since}: write {new}=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return call

    return decorate


def keyword_only_since(since: str) -> Callable:
    """Accept the decorated function's keyword-only options positionally too (their order in
    the signature), with a DeprecationWarning saying which keywords to write."""

    def decorate(function: Callable) -> Callable:
        parameters = inspect.signature(function).parameters.values()
        positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
        options = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]

        @functools.wraps(function)
        def call(*args, **kwargs):
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(options):
                    raise TypeError(f"{function.__name__}() takes {positional} positional arguments, got {len(args)}")
                names = options[: len(extra)]
                warnings.warn(
                    f"{function.__name__}(): {', '.join(names)} positionally is deprecated since offsetjax {since}: "
                    f"write {', '.join(f'{name}=...' for name in names)}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs.update(zip(names, extra))
                args = args[:positional]
            return function(*args, **kwargs)

        return call

    return decorate
