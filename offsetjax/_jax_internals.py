"""Every JAX internal the interpreters lean on, in one place.

The executor, the tracer and the NIR writer read jaxprs: they need JAX's primitive, variable and
literal types, the sub-jaxprs of higher-order equations, an equation's bind parameters and its
source scope. These live in ``jax.extend.core`` and on jaxpr equations, outside JAX's stable API.
A JAX release that moves one breaks this file only; the versions it is tested with are the
floor pinned in ``.ci/floor-constraints.txt`` and the newest release.
"""

from __future__ import annotations

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
    """The module scope JAX recorded for ``equation`` (``"VGG/conv1"``; empty when none)."""
    return str(equation.source_info.name_stack)


def where(equation) -> str:
    """The line of user code that made ``equation``, as JAX recorded it (``"net.py:12 (f)"``)."""
    from jax._src import source_info_util

    return source_info_util.summarize(equation.source_info)
