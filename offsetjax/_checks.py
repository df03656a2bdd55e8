"""Argument validation shared by the public functions.

Every check runs before any compute and raises ``ValueError`` naming the argument and what
was expected. Value checks on arrays only run when the array is concrete (outside ``jit``);
under tracing the shapes are still checked.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offsetjax import _jax_internals as internals


def is_abstract(x) -> bool:
    """Whether ``x``'s values cannot be read here: a tracer, or an array other processes hold parts of."""
    return isinstance(x, internals.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable)


def concrete_value(x) -> np.ndarray | None:
    """Return ``x`` as a NumPy array, or ``None`` when its values cannot be read (:func:`is_abstract`)."""
    return None if is_abstract(x) else np.asarray(x)


def check_int(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
    """Check that ``value`` is a Python/NumPy integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_steps(*, num_steps, presim_steps, iterations) -> None:
    """Check a simulation schedule: T >= 1, 0 <= rho <= T, k >= 0, rho > 0 when k > 0."""
    check_int("num_steps", num_steps, minimum=1)
    check_int("presim_steps", presim_steps, minimum=0, maximum=num_steps)
    check_int("iterations", iterations, minimum=0)
    if iterations > 0 and presim_steps == 0:
        raise ValueError(
            f"presim_steps must be >= 1 when iterations > 0 (got iterations={iterations}): "
            "the offset spike is judged from a pre-simulation"
        )


def check_choice(name: str, value, choices: tuple) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value) -> None:
    """Check that every element of a concrete array is finite and > 0."""
    array = concrete_value(value)
    if array is None:
        return
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got min {np.min(array)}")


def check_finite(name: str, value) -> None:
    """Check that every element of a concrete array is finite (no NaN or Inf).

    Device arrays are reduced on the device; only a count comes back to the host.
    """
    if is_abstract(value):
        return
    if isinstance(value, jax.Array):
        bad = int(jnp.size(value) - jnp.count_nonzero(jnp.isfinite(value)))
    else:
        array = np.asarray(value)
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} must be finite, found {bad} NaN or Inf values")


#: What an integer input is refused with: offsetjax never guesses a scale for raw pixels.
CAST_HINT = (
    "cast and normalise them as the network was trained on them, e.g. "
    "(images.astype(np.float32) / 255 - mean) / std; offsetjax does not guess the scale of integer inputs"
)


def check_image_batch(images, axis: str = "B", name: str = "images"):
    """Check and return ``images``: a batch ``[B, ...]`` with B >= 1, floating (integer inputs
    are refused, :data:`CAST_HINT`) and finite (a NumPy batch is checked on the host, a device
    array on its device; a tracer only by shape and dtype)."""
    if images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"{name} must be a batch [{axis}, ...] with {axis} >= 1, got shape {images.shape}")
    check_float(name, images, hint=CAST_HINT)
    check_finite(name, images)
    return images


def check_float(name: str, value, hint: str = "") -> None:
    """Check that an array has a floating dtype; ``hint`` says what to do instead."""
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {value.dtype}" + (f": {hint}" if hint else ""))


def compute_dtype(model, params) -> np.dtype:
    """The dtype ``model`` computes in: its ``dtype`` field when the user set one (e.g.
    ``jnp.bfloat16``), else the widest floating dtype of ``params`` (float32 normally). Never
    inferred from the images."""
    chosen = getattr(model, "dtype", None)
    if chosen is not None:
        return jnp.dtype(chosen)
    dtypes = [jnp.dtype(jnp.result_type(leaf)) for leaf in jax.tree.leaves(params)]
    floating = [dtype for dtype in dtypes if jnp.issubdtype(dtype, jnp.floating)]
    return max(floating, key=lambda dtype: dtype.itemsize) if floating else jnp.dtype(jnp.float32)


def widen_half(images, dtype):
    """``images`` cast up to ``dtype`` when they are of a narrower floating dtype below 32 bits
    (float16, bfloat16): half-precision inputs never turn a float32 network into a half-precision
    one. Other images are returned as they are (NumPy stays NumPy)."""
    dtype = jnp.dtype(dtype)
    if images.dtype.itemsize < min(4, dtype.itemsize) and jnp.issubdtype(dtype, jnp.floating):
        return images.astype(dtype)
    return images


def leaf_label(name: str, collection: str, path) -> str:
    """``variables['params']['conv0']['Conv_0']['kernel']``: a leaf as the user indexes it;
    ``path`` is a tuple of keys or a ``"a/b"`` string."""
    keys = path.split("/") if isinstance(path, str) else path
    return f"{name}[{collection!r}]" + "".join(f"[{key!r}]" for key in keys)


def nonfinite(value) -> str | None:
    """``None`` when every element of the concrete array ``value`` is finite, else what it holds
    (``"NaN"``, ``"3 inf"``...). Read on the host (no program compiled); ``None`` for a tracer."""
    array = concrete_value(value)
    if array is None or not jnp.issubdtype(array.dtype, jnp.inexact) or bool(np.all(np.isfinite(array))):
        return None
    nans = int(np.count_nonzero(np.isnan(array)))
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    kinds = " and ".join(kind for count, kind in ((nans, "NaN"), (bad - nans, "inf")) if count)
    return kinds if array.size == 1 else f"{kinds} ({bad} of {array.size} values)"


def check_broadcastable(name: str, shape: tuple[int, ...], target: tuple[int, ...], target_name: str):
    """Check that ``shape`` broadcasts to ``target`` (without growing it)."""
    try:
        result = np.broadcast_shapes(shape, target)
    except ValueError:
        result = None
    if result != tuple(target):
        raise ValueError(f"{name} of shape {shape} must broadcast to {target_name} {tuple(target)}")


def images_must_fit(run, images, what: str = "the network"):
    """Call ``run()``; re-raise a parameter-shape error as a ValueError naming the image shape."""
    from flax.errors import ScopeParamShapeError

    try:
        return run()
    except (ScopeParamShapeError, TypeError, ZeroDivisionError) as error:
        if isinstance(error, TypeError) and "shape" not in str(error):
            raise
        # (a layer whose input has no elements left, e.g. channels-first images pooled to nothing,
        # makes flax's initialiser divide by a fan-in of zero)
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not fit {what}: expected one batch [B, H, W, C], "
            f"channels last, of the size it was built for (channels first? one unbatched image?): {error!r}"
        ) from error


def check_same_tree(name: str, actual, expected: dict[str, tuple[int, ...]], what: str, *, shapes: bool = True) -> None:
    """Check that the pytree ``actual`` has exactly the leaves ``expected`` (``{"a/b": shape}``,
    from :func:`trace_network`), with those shapes when ``shapes``; the error names up to
    four missing, extra and misshaped leaves."""
    from flax import traverse_util

    if not hasattr(actual, "items"):
        raise ValueError(f"{name} must be a mapping of arrays, got {type(actual).__name__}")
    actual_shapes = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(dict(actual)).items()}
    missing = sorted(set(expected) - set(actual_shapes))
    extra = sorted(set(actual_shapes) - set(expected))
    misshaped = [
        f"{k} {actual_shapes[k]} (expected {expected[k]})"
        for k in sorted(set(actual_shapes) & set(expected))
        if shapes and tuple(actual_shapes[k]) != tuple(expected[k])
    ]
    if missing or extra or misshaped:
        listed = lambda items: ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")  # noqa: E731
        parts = [
            f"{label} {listed(items)}"
            for label, items in (("missing", missing), ("unexpected", extra), ("misshaped", misshaped))
            if items
        ]
        raise ValueError(
            f"{name} do not fit {what}: " + "; ".join(parts) + " (images of another size or number of channels "
            "than the network was built for, or variables of another network or number of classes?)"
        )


def thresholds_as_given(expected: dict, variables: Any, neurons: dict | None, name: str = "variables") -> dict:
    """``expected`` params (``{"a/b": shape}``, from :func:`trace_network`, every site's
    threshold a scalar) with each site's threshold shaped as ``variables`` give it when that is
    one per channel ``[C]`` or one per neuron: with ``neurons`` (each site's neuron shape) the
    shape must be the site's channels (its neurons' last axis) or its neurons, else any array is
    let through here (the site checks its shape when it runs)."""
    from flax import traverse_util

    given = variables.get("params") if hasattr(variables, "get") else None
    if not hasattr(given, "items"):
        return expected
    flat = {"/".join(path): np.shape(leaf) for path, leaf in traverse_util.flatten_dict(dict(given)).items()}
    adjusted = dict(expected)
    for path, shape in flat.items():
        site, _, key = path.rpartition("/")
        if key != "threshold" or expected.get(path) != () or shape == ():
            continue
        if neurons is not None and site in neurons:
            neuron = tuple(neurons[site])
            if tuple(shape) not in (neuron[-1:], neuron):
                raise ValueError(
                    f"{leaf_label(name, 'params', path)} has shape {tuple(shape)}: a site's threshold is a scalar, "
                    f"one per channel {neuron[-1:]} or one per neuron {neuron} (its neurons)"
                )
        adjusted[path] = tuple(shape)
    return adjusted
