"""Every JAX internal the interpreters lean on, in one place.

The executor, the tracer and the NIR writer read jaxprs: they need JAX's primitive, variable and
literal types, the sub-jaxprs of higher-order equations, an equation's bind parameters and its
source scope. These live in ``jax.extend.core`` and on jaxpr equations, outside JAX's stable API.
A JAX release that moves one breaks this file only; the versions it is tested with are the
floor pinned in ``.ci/floor-constraints.txt`` and the newest release.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
from jax.extend import core as _core

#: A JAX primitive (one operation of a jaxpr), made with a name.
Primitive = _core.Primitive
#: A jaxpr variable (an equation's input or output).
Var = _core.Var
#: A constant an equation reads in place (``.val`` holds it).
Literal = _core.Literal
#: The abstract value of an array: shape and dtype.
ShapedArray = jax.core.ShapedArray
#: A value under tracing (``jit``, ``grad``, ``vmap``).
Tracer = jax.core.Tracer


def sub_jaxprs(equation) -> Iterator[Any]:
    """The jaxprs inside a higher-order equation's parameters (``scan``'s body, ``cond``'s
    branches, ``pjit``'s callee)."""
    return iter(_core.jaxprs_in_params(equation.params))


def bind_params(equation) -> dict[str, Any]:
    """The keyword parameters that bind ``equation``'s primitive again (``primitive.bind``)."""
    return equation.primitive.get_bind_params(equation.params)


def name_stack(equation) -> str:
    """The module scope JAX recorded for ``equation`` (``"VGG/conv1"``; empty when none), without
    the transformations' own entries (``vmap()``, ``jvp()``)."""
    parts = str(equation.source_info.name_stack).split("/")
    return "/".join(part for part in parts if part and not part.endswith(")"))


def where(equation) -> str:
    """The line of the user's code that made ``equation`` (``"net.py:12 (f)"``): the innermost
    frame JAX recorded outside JAX, Flax and offsetjax themselves."""
    from jax._src import source_info_util

    for frame in source_info_util.user_frames(equation.source_info.traceback):
        if not any(f"{os.sep}{package}{os.sep}" in frame.file_name for package in _LIBRARIES):
            return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    return source_info_util.summarize(equation.source_info)


#: Packages whose frames are not the user's line.
_LIBRARIES = ("flax", "offsetjax", "equinox")


@contextlib.contextmanager
def without_flax_interceptors() -> Iterator[None]:
    """No Flax method interceptor active (a caller's ``nn.intercept_methods``), while tracing a
    user's function whose Flax modules must run as they are written."""
    from flax.linen import module

    stack = module._global_interceptor_stack
    saved, stack._storage = stack._storage, []
    try:
        yield
    finally:
        stack._storage = saved
