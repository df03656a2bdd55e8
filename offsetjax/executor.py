"""A converted network run causally, tick by tick, as a neuromorphic chip runs it.

:func:`offsetjax.simulate` runs layer by layer: each site sees its whole input sequence
``[T, B, ...]`` at once. Here every site is a small state machine that takes at most one
input and does at most one IF update per tick, and the linear layers between sites pass on
what the sites emitted (``docs/method.md`` section 9, "Latency"):

* ``qcfs`` and the data-level methods (``data_potential``, ``data_bias``): one IF update per
  input, emitted at once;
* COS (rho, k): the site buffers its inputs; the first rho pass through pre-simulation round
  1 as they arrive, rounds 2..k replay them from the buffer, and only then does the T-step
  run start, replaying the buffered inputs: the site's output lags its input by k * rho ticks;
* SRP (tau): the first tau inputs are simulated and passed straight on, then the neurons
  without residual potential are silenced for the T steps: no lag.

With a per-layer delay ``delay`` (d, 0 or 1) a spike reaches the next site d ticks after it was
emitted. Where paths of different lags meet (a residual addition) the earlier path is held in
a delay line until the later one arrives. All of it is static, fixed by the network and the
schedule, so a step is a pure function: :func:`step_by_step` traces the network once and
returns a :class:`StepProgram` whose ``init()`` and ``step(state, frame)`` work under
``jit`` and ``lax.scan``; :func:`run_step_by_step` scans it and returns the outputs beside the
tick at which each appeared (it jits too, with the network and its options static).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from offsetjax import _jax_internals as internals
from offsetjax._checks import (
    CAST_HINT,
    check_choice,
    check_finite,
    check_float,
    check_image_batch,
    check_int,
    is_abstract,
    widen_half,
)
from offsetjax._trace import SiteOperands, site_p, trace_sites
from offsetjax.activation import at_least_float32
from offsetjax.convert import schedule
from offsetjax.neuron import if_initial_state, if_step
from offsetjax.offset import calibration_round, presim_magnitude, srp_keep
from offsetjax.schedule import Schedule
from offsetjax.simulation import check_frames, check_network, input_dtype, running_mean
from offsetjax.site import add_bias_current

__all__ = ["DELAYS", "SiteTiming", "StepOutput", "StepProgram", "StepRun", "run_step_by_step", "step_by_step"]

#: Per-layer delays the chip model supports: 0 (a spike is used in the tick it is emitted) or 1.
DELAYS = (0, 1)


@dataclasses.dataclass(frozen=True)
class SiteTiming:
    """When one site works: its ``k`` th input arrives at tick ``input_lag + k`` and its
    ``k`` th output is emitted at tick ``output_lag + k`` (k = 1..``num_outputs``), ticks
    counted from 1, the image's first frame entering at tick 1."""

    path: str
    input_lag: int
    output_lag: int
    num_outputs: int


@dataclasses.dataclass(frozen=True, eq=False)
class StepProgram:
    """A network traced for the step-by-step executor (:func:`step_by_step`).

    Attributes:
      init: ``init()`` -> the state before tick 1 (a pytree of arrays).
      step: ``step(state, frame)`` -> ``(state, StepOutput)``: one tick; ``frame`` is this
        tick's input ``[B, H, W, C]`` (the same image every tick for a static input), of the
        batch size and image shape the program was traced for and a floating dtype (cast to
        the program's); a frame of another shape is refused with a ``ValueError`` naming both
        shapes, and a concrete frame holding NaN or inf too (under ``jit`` or ``lax.scan`` its
        values cannot be read: only its shape and dtype are checked).
      sites: each site's :class:`SiteTiming`, in network order.
      output_lag: the network's ``k`` th output appears at tick ``output_lag + k``.
      num_outputs: outputs the network emits (``T``, or ``tau + T`` with SRP).
      readout_start: outputs before this one are SRP's pre-simulation, not read out.
      num_ticks: ticks until the last output, ``output_lag + num_outputs``.
      plan, variables: the traced program (cached, shared by programs of the same network and
        shapes) and the variables' leaves ``step`` runs with.
    """

    plan: _Plan = dataclasses.field(repr=False)
    variables: tuple = dataclasses.field(repr=False)  # the leaves ``step`` runs with

    @property
    def init(self) -> Callable[[], Any]:
        return self.plan.init

    @property
    def step(self) -> Callable[[Any, Array], tuple[Any, StepOutput]]:
        return functools.partial(_checked_step, self.plan, self.variables)

    @property
    def sites(self) -> tuple[SiteTiming, ...]:
        return self.plan.sites

    @property
    def output_lag(self) -> int:
        return self.plan.output_lag

    @property
    def num_outputs(self) -> int:
        return self.plan.num_outputs

    @property
    def readout_start(self) -> int:
        return self.plan.readout_start

    @property
    def num_ticks(self) -> int:
        return self.plan.num_ticks


# A pytree (the variables' leaves its children, the traced plan static), so that a jitted
# run_step_by_step can return the program it ran.
jax.tree_util.register_pytree_node(
    StepProgram,
    lambda program: (program.variables, program.plan),
    lambda plan, leaves: StepProgram(plan, tuple(leaves)),
)


def _checked_step(plan: _Plan, leaves: tuple, state, frame):
    """``plan.step`` on ``frame`` checked: the traced shape, a floating dtype, finite values
    (where they can be read)."""
    frame = jnp.asarray(frame)
    if tuple(frame.shape) != plan.frame_shape:
        raise ValueError(
            f"frame must have shape {plan.frame_shape}, [batch_size, *image_shape] as step_by_step traced this "
            f"program, got {tuple(frame.shape)}: trace another program, step_by_step(..., image_shape, "
            "batch_size=...), for other frames"
        )
    check_float("frame", frame, hint=CAST_HINT)
    check_finite("frame", frame)
    return plan.step(leaves, state, frame)


class StepOutput(NamedTuple):
    """What a tick emits: the network's output ``[B, classes]`` (valid when ``valid``), each
    site's emission ``{path: [B, ...]}`` (valid when the site's timing says so), and the spikes
    each site fired this tick per sample, ``{path: [B]}``, pre-simulation rounds included (what
    :func:`offsetjax.count_operations` charges)."""

    output: Array
    valid: Array
    sites: dict
    spikes: dict


class StepRun(NamedTuple):
    """A run of :func:`run_step_by_step`.

    Attributes:
      logits: running mean of the read-out outputs, ``[T, B, classes]``, as :func:`offsetjax.simulate`.
      output_ticks: the tick at which each read-out output appeared, ``[T]`` (int).
      site_outputs: each site's emissions in order, ``{path: [n, B, ...]}`` (its ``theta * s(t)``).
      site_spikes: the spikes each site fired over the run, per sample, ``{path: [B]}``,
        pre-simulation included.
      program: the :class:`StepProgram` that ran.
    """

    logits: Array
    output_ticks: np.ndarray
    site_outputs: dict
    site_spikes: dict
    program: StepProgram


def step_by_step(
    snn: nn.Module,
    variables: Any,
    image_shape: tuple[int, ...],
    *,
    batch_size: int,
    delay: int = 0,
    dtype: Any = jnp.float32,
) -> StepProgram:
    """Trace ``snn`` (from :func:`offsetjax.spiking_model`, with its variables) for the
    step-by-step executor, for batches of ``batch_size`` (an int >= 1) images of
    ``image_shape`` (one image's shape, e.g. ``(H, W, C)``, without the batch axis) of ``dtype``
    and a per-layer delay ``delay`` of 0 or 1 tick.

    ``dtype`` is the frames' dtype and must be floating: an integer dtype is refused (each frame
    is cast to it, which would truncate it). A half-precision dtype (float16, bfloat16) is
    widened to the network's compute dtype (its ``dtype`` field, else its parameters'), as
    :func:`offsetjax.simulate` casts half-precision images: the frames never choose the
    network's precision. The variables are checked as :func:`offsetjax.simulate` checks them,
    for a batch of ``batch_size`` (a per-sample v(0) must be for that many images).

    Any Flax network built of linear layers and :class:`offsetjax.IFActivation` sites is
    traced: the sites become state machines, everything else runs once per tick on what the
    sites emitted. The traced program depends on the network, the variables' shapes, the
    image shape, batch size, dtype and delay, not on the variables' values: it is cached, so a
    second call (other variables of the same network, the next batch) compiles nothing new.
    ``program.step`` closes over these variables.
    """
    _check_static(snn=snn, batch_size=batch_size, delay=delay)
    check_choice("delay", delay, DELAYS)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not isinstance(image_shape, (tuple, list)) or not image_shape:
        raise ValueError(f"image_shape must be one image's shape, e.g. (H, W, C), got {image_shape!r}")
    image_shape = tuple(check_int("image_shape's sizes", n, minimum=1) for n in image_shape)
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"dtype must be a floating dtype (the frames'), got {dtype!r}") from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"dtype must be a floating dtype (the frames'), got {dtype}: each frame is cast to it, and an integer "
            "dtype would truncate the frames; pass frames of a floating dtype"
        )
    check_network(snn, variables, jax.ShapeDtypeStruct((batch_size, *image_shape), dtype), images_name="image_shape")
    dtype = widen_half(np.empty(0, dtype), input_dtype(snn, variables)).dtype
    leaves, treedef = jax.tree.flatten(variables)
    structure = (treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves))
    return StepProgram(_plan(snn, structure, image_shape, batch_size, delay, dtype), tuple(leaves))


def run_step_by_step(
    snn: nn.Module, variables: Any, images: Float[ArrayLike, "..."], *, frames: bool = False, delay: int = 0
) -> StepRun:
    """Run ``snn`` tick by tick until its last output and collect what it emitted.

    Args:
      snn, variables: as :func:`offsetjax.simulate`.
      images: ``[B, H, W, C]`` presented at every tick, or with ``frames=True`` one frame per
        tick, ``[steps, B, H, W, C]`` (``steps`` = T, or tau + T with SRP); a site fed by
        frames takes its k-th input when frame k has passed the layers before it.
      delay: ticks a spike takes to reach the next site, 0 or 1.

    Returns:
      :class:`StepRun`: its ``logits`` equal :func:`offsetjax.simulate`'s (same spikes at every
      site), and ``output_ticks`` is the latency of every output.

    Raises:
      ValueError: images or variables as :func:`offsetjax.simulate` refuses them (checked before
        anything is compiled; half-precision images are cast up to the network's compute dtype).
      MemoryError: before anything runs, when the record of the run (every tick's output and
        every site's emission, ``ticks x B x neurons``, :func:`record_bytes`) would not fit in the
        memory left on the device (:func:`available_memory`), where the run would otherwise
        thrash or wait: run fewer steps or a smaller batch, or drive ``program.step`` yourself.

    Under ``jit`` the network and the options are static: ``jax.jit(run_step_by_step,
    static_argnums=0, static_argnames=("frames", "delay"))``; there the variables' values are
    not checked (:func:`offsetjax.simulation.check_network`). To jit one tick, jit
    ``step_by_step(...).step``.
    """
    _check_static(snn=snn, frames=frames, delay=delay)
    images = check_frames(snn, images) if frames else check_image_batch(jnp.asarray(images))
    image_shape = images.shape[2:] if frames else images.shape[1:]
    batch_size = images.shape[1] if frames else images.shape[0]
    program = step_by_step(snn, variables, image_shape, batch_size=batch_size, delay=delay, dtype=images.dtype)
    check_memory(program.plan, images)
    outputs = _scan(program.plan, program.variables, images, frames)
    # the network's k-th output appears at tick output_lag + k: fixed by the network and schedule
    ticks = np.arange(program.output_lag + 1, program.num_ticks + 1)
    read = slice(program.readout_start, None)
    out = outputs.output[ticks - 1][read]
    site_outputs = {
        timing.path: outputs.sites[timing.path][timing.output_lag : timing.output_lag + timing.num_outputs]
        for timing in program.sites
    }
    site_spikes = {path: jnp.sum(fired, axis=0) for path, fired in outputs.spikes.items()}
    return StepRun(running_mean(out), ticks[read], site_outputs, site_spikes, program)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _scan(plan: _Plan, leaves: tuple, images: Array, frames: bool) -> StepOutput:
    def tick(state, index):
        frame = images[jnp.minimum(index, images.shape[0] - 1)] if frames else images
        return plan.step(leaves, state, frame)

    _, outputs = jax.lax.scan(tick, plan.init(), jnp.arange(plan.num_ticks))
    return outputs


def _check_static(**arguments) -> None:
    """The network and options are Python values: under ``jax.jit`` they must be static."""
    for name, value in arguments.items():
        if isinstance(value, internals.Tracer) or (name == "snn" and not isinstance(value, nn.Module)):
            raise TypeError(
                f"{name} must be a static Python value (the network: a flax Module), got {type(value).__name__}: "
                "to jit run_step_by_step, make the network and its options static, jax.jit(run_step_by_step, "
                "static_argnums=0, static_argnames=('frames', 'delay')), or jit one tick, step_by_step(...).step"
            )


def record_bytes(plan: _Plan) -> int:
    """Bytes :func:`run_step_by_step` records over the run: every tick's :class:`StepOutput`."""
    return plan.num_ticks * plan.tick_bytes


def check_memory(plan: _Plan, images) -> None:
    """Refuse a run whose record (twice: the scan's output and the per-site slices taken from
    it) exceeds the memory left on the images' device, before anything is compiled."""
    needed = 2 * record_bytes(plan)
    devices = getattr(images, "devices", None)
    device = next(iter(images.devices())) if callable(devices) and not is_abstract(images) else jax.devices()[0]
    left = available_memory(device)
    if left is not None and needed > left:
        raise MemoryError(
            f"run_step_by_step would record {plan.num_ticks} ticks of every site's output for a batch of "
            f"{plan.frame_shape[0]}: about {needed / 2**30:.2f} GiB, more than the {max(left, 0) / 2**30:.2f} GiB "
            f"left on {device.platform}: run fewer steps or a smaller batch, or drive step_by_step(...).step yourself "
            "(lax.scan or a loop), keeping only what you need (offsetjax.simulate keeps only the logits)"
        )


def available_memory(device) -> int | None:
    """Bytes still free on ``device``, or ``None`` when unknown. An accelerator reports its own
    (``memory_stats``); on the CPU, the host's available memory and, under an address-space limit
    (``ulimit -v``), what the limit leaves this process."""
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except (RuntimeError, NotImplementedError, AttributeError):
            return None
        if not stats or "bytes_limit" not in stats:
            return None
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    left = [value for value in (_proc_kib("/proc/meminfo", "MemAvailable:"),) if value is not None]
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        soft = None
    if soft is not None and soft != resource.RLIM_INFINITY:
        used = _proc_kib("/proc/self/status", "VmSize:")
        left.append(soft - (used or 0))
    return min(left) if left else None


def _proc_kib(path: str, key: str) -> int | None:
    """A ``kB`` entry of a ``/proc`` file in bytes, or ``None``."""
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """The traced network's step for given variable shapes: ``step(leaves, state, frame)``."""

    init: Callable[[], Any]
    step: Callable[[tuple, Any, Array], tuple[Any, StepOutput]]
    sites: tuple[SiteTiming, ...]
    output_lag: int
    num_outputs: int
    readout_start: int
    frame_shape: tuple[int, ...]  # [B, ...], one tick's frame
    tick_bytes: int  # one tick's StepOutput

    @property
    def num_ticks(self) -> int:
        return self.output_lag + self.num_outputs


@functools.lru_cache(maxsize=64)
def _plan(snn: nn.Module, structure, image_shape: tuple[int, ...], batch_size: int, delay: int, dtype) -> _Plan:
    """Trace ``snn`` with its variables' leaves as inputs (``structure``: their tree and shapes)."""
    treedef, shapes = structure

    abstract_leaves = [jax.ShapeDtypeStruct(shape, leaf_dtype) for shape, leaf_dtype in shapes]
    closed = trace_sites(snn, treedef, abstract_leaves, jax.ShapeDtypeStruct((1, batch_size, *image_shape), dtype))
    return _program(closed, len(shapes), schedule(snn), delay)


def _program(closed, num_leaves: int, sched: Schedule, delay: int) -> _Plan:
    """Lags of every value of the traced network, then the step function over them. The
    jaxpr's inputs are the variables' ``num_leaves`` leaves, then the frame."""
    jaxpr = closed.jaxpr
    steps = sched.input_steps
    leaf_vars, frame_var = jaxpr.invars[:num_leaves], jaxpr.invars[num_leaves]
    lags: dict[Any, int | None] = {var: None for var in (*jaxpr.constvars, *leaf_vars)}
    lags[frame_var] = 0
    delay_lines: dict[tuple[Any, int], str] = {}  # (value, ticks) -> state key
    sites: list[SiteTiming] = []
    plan = []  # per equation: (equation, input reads, site index or None)
    for equation in jaxpr.eqns:
        for sub in internals.sub_jaxprs(equation):
            if any(inner.primitive is site_p for inner in sub.eqns):
                raise ValueError("an IF site inside a nested transformation cannot be run step by step")
        known = [lags[v] for v in equation.invars if isinstance(v, internals.Var) and lags[v] is not None]
        lag = max(known) if known else None
        reads = []
        for v in equation.invars:
            if isinstance(v, internals.Var) and lags[v] is not None and lags[v] < lag:
                key = delay_lines.setdefault((v, lag - lags[v]), f"line{len(delay_lines)}")
                reads.append((v, key))
            else:
                reads.append((v, None))
        site = None
        if equation.primitive is site_p:
            if lag is None:
                raise ValueError(f"site {equation.params['path']} is fed by no input")
            out_lag = lag + sched.site_lag + delay
            site = len(sites)
            sites.append(SiteTiming(equation.params["path"], lag, out_lag, steps))
            lag = out_lag
        for out in equation.outvars:
            lags[out] = lag
        plan.append((equation, reads, site))
    output_var = jaxpr.outvars[0]
    output_lag = lags[output_var]
    lines = {key: (var, ticks) for (var, ticks), key in delay_lines.items()}

    site_inputs = {sites[site].path: equation.invars[0].aval for equation, _, site in plan if site is not None}

    def init():
        return {
            "tick": jnp.zeros((), jnp.int32),
            "lines": {key: jnp.zeros((ticks, *var.aval.shape), var.aval.dtype) for key, (var, ticks) in lines.items()},
            "sites": {path: _site_init(aval, sched, delay) for path, aval in site_inputs.items()},
        }

    def step(leaves, state, frame):
        tick = state["tick"] + 1
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
        env.update(zip(leaf_vars, leaves))
        env[frame_var] = frame[None].astype(frame_var.aval.dtype)
        new_lines, new_sites, emitted, spikes = {}, {}, {}, {}

        def read(v, key):
            if isinstance(v, internals.Literal):
                return v.val
            if key is None:
                return env[v]
            return state["lines"][key][0]

        for equation, reads, site in plan:
            values = [read(v, key) for v, key in reads]
            if site is not None:
                timing = sites[site]
                new_sites[timing.path], out, spikes[timing.path] = _site_step(
                    state["sites"][timing.path],
                    SiteOperands.of_equation(equation, values),
                    tick - timing.input_lag,
                    sched,
                    delay,
                )
                emitted[timing.path] = out[0]
                outs = [out]
            else:
                outs = equation.primitive.bind(*values, **internals.bind_params(equation))
                outs = outs if equation.primitive.multiple_results else [outs]
            for v, value in zip(equation.outvars, outs):
                env[v] = value
        for key, (var, _) in lines.items():
            _, new_lines[key] = _shift_in(state["lines"][key], env[var])
        token = tick - output_lag
        valid = (token >= 1) & (token <= steps)
        state = {"tick": tick, "lines": new_lines, "sites": new_sites}
        return state, StepOutput(env[output_var][0], valid, emitted, spikes)

    def nbytes(aval) -> int:
        return int(np.prod(aval.shape, dtype=np.int64)) * jnp.dtype(aval.dtype).itemsize

    tick_bytes = (
        nbytes(output_var.aval)
        + 1
        + sum(  # output, valid, each site's emission and spike count
            nbytes(aval) + aval.shape[1] * jnp.dtype(at_least_float32(aval.dtype)).itemsize
            for aval in site_inputs.values()
        )
    )
    frame_shape = tuple(frame_var.aval.shape[1:])
    return _Plan(init, step, tuple(sites), output_lag, steps, sched.srp_steps, frame_shape, tick_bytes)


def _site_init(currents, sched: Schedule, delay: int) -> dict:
    """A site's state before tick 1; ``currents`` is the abstract value of its input ``[1, B, ...]``."""
    neuron_shape = currents.shape[1:]
    dtype = at_least_float32(currents.dtype)
    zeros = jnp.zeros(neuron_shape, dtype)
    state = {"run": if_initial_state(zeros), "shifted": zeros, "magnitude": zeros, "keep": zeros}
    buffered = sched.site_lag
    if buffered:
        state["buffer"] = jnp.zeros((buffered, *neuron_shape), currents.dtype)
    if delay:
        state["out"] = jnp.zeros((delay, 1, *neuron_shape), currents.dtype)
    return state


def _site_step(state, operands: SiteOperands, token, sched: Schedule, delay):
    """One tick of a site; ``token`` is the index (from 1) of the input arriving this tick."""
    currents, theta, v0, bias = operands
    dtype = at_least_float32(currents.dtype)
    theta = theta.astype(dtype)
    if bias is not None:
        currents = add_bias_current(currents, bias, theta.dtype)
    x = currents[0]  # [B, ...]
    neuron_shape = x.shape
    theta = jnp.broadcast_to(theta, neuron_shape)
    v0 = jnp.broadcast_to(jnp.asarray(v0, dtype), neuron_shape)
    rho, rounds, tau = sched.presim_steps, sched.iterations, sched.srp_steps
    num_steps = sched.num_steps
    buffered = rho * rounds
    op = token - 1  # ops run one per tick from the first input on
    state = dict(state)
    state["shifted"] = jnp.where(op <= 0, v0, state["shifted"])  # calibration starts from v(0)
    if buffered:
        buffer = state["buffer"]
        in_presim = (op >= 0) & (op < buffered)
        in_run = (op >= buffered) & (op < buffered + num_steps)
        round_index, position = op // rho, op % rho
        replayed = jax.lax.dynamic_index_in_dim(buffer, jnp.clip(position, 0, rho - 1), keepdims=False)
        presim_current = jnp.where(round_index == 0, x, replayed).astype(dtype)
        start = position == 0
        presim_state = jax.tree.map(
            lambda fresh, carried: jnp.where(start, fresh, carried), if_initial_state(state["shifted"]), state["run"]
        )
        presim_state, presim_spike = if_step(presim_state, presim_current, theta)
        magnitude = state["magnitude"]
        if rounds > 1:  # the later rounds' rounding bound, from all rho currents of round 1
            magnitude = jnp.where(
                (round_index == 0) & (position == rho - 1),
                presim_magnitude(v0, jnp.concatenate([buffer[: rho - 1], x[None]]).astype(dtype), theta),
                magnitude,
            )
        round_end = in_presim & (position == rho - 1)
        corrected = [  # round 1's correction, and (k > 1) the later rounds'
            calibration_round(
                state["shifted"],
                v0,
                presim_state,
                theta,
                magnitude,
                first_round=first_round,
                presim_steps=rho,
                eps=sched.eps,
                saturated=sched.saturated,
            )
            for first_round in (True, False)[:rounds]
        ]
        if rounds > 1:
            corrected = [jnp.where(round_index == 0, *corrected)]
        shifted = jnp.where(round_end, corrected[0], state["shifted"])
        run_index = op - buffered
        run_current = jax.lax.dynamic_index_in_dim(buffer, jnp.clip(run_index, 0, None) % buffered, keepdims=False)
        run_state = jax.tree.map(
            lambda fresh, carried: jnp.where(run_index == 0, fresh, carried), if_initial_state(shifted), state["run"]
        )
        run_state, spike = if_step(run_state, run_current.astype(dtype), theta)
        state["run"] = jax.tree.map(
            lambda p, r, old: jnp.where(in_presim, p, jnp.where(in_run, r, old)), presim_state, run_state, state["run"]
        )
        state["shifted"], state["magnitude"] = shifted, magnitude
        stored = jax.lax.dynamic_update_index_in_dim(buffer, x, jnp.clip(op, 0, None) % buffered, 0)
        state["buffer"] = jnp.where((op >= 0) & (token <= num_steps), stored, buffer)
        emit = in_run
        out = spike.astype(currents.dtype)
        fired = jnp.where(in_presim, presim_spike, jnp.where(in_run, spike, 0.0))
    else:
        fresh = (op == 0) | (tau > 0) & (op == tau)
        run = jax.tree.map(lambda f, c: jnp.where(fresh, f, c), if_initial_state(v0), state["run"])
        run, spike = if_step(run, x.astype(dtype), theta)
        emit = (op >= 0) & (op < tau + num_steps)
        state["run"] = jax.tree.map(lambda new, old: jnp.where(emit, new, old), run, state["run"])
        out = spike.astype(currents.dtype)
        if tau:
            keep = jnp.where(op == tau - 1, srp_keep(run.v, theta, currents.dtype), state["keep"])
            state["keep"] = keep
            out = jnp.where(op >= tau, out * keep.astype(currents.dtype), out)
        fired = jnp.where(emit, out, 0.0)
    per_sample = tuple(range(1, fired.ndim))
    fired = jnp.sum(fired.astype(dtype), axis=per_sample)
    out = jnp.where(emit, (out * theta).astype(currents.dtype), jnp.zeros_like(x))[None]
    if delay:
        out, state["out"] = _shift_in(state["out"], out)
    return state, out, fired


def _shift_in(line: Array, value: Array) -> tuple[Array, Array]:
    """A delay line ``[n, ...]`` of the last n ticks' values: returns the value from n ticks
    ago and the line with ``value`` pushed in."""
    return line[0], jnp.concatenate([line[1:], value[None]])


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
StepOutput.__new__.__module__ = __name__
StepRun.__new__.__module__ = __name__
