"""The schedule of a spiking network: how many steps it runs and how each site calibrates.

One frozen value, validated when it is made, defined here with its defaults and nowhere else.
:func:`offsetjax.spiking_model` builds it, the SNN carries it (every IF site holds it), and the
sites, the step-by-step executor, the data-level calibrations, the NIR export and the
operation counts read its fields. It is hashable, so a network holding it stays a valid static
``jit`` argument, and equal schedules share compiled programs.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

from offsetjax._checks import check_choice, check_int, check_steps
from offsetjax.neuron import resolve_unroll
from offsetjax.offset import SATURATION_RULES

__all__ = ["Schedule"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """A spiking network's schedule.

    Attributes:
      num_steps: T >= 1, the steps whose spikes make the output.
      presim_steps: rho, 0 <= rho <= T, the pre-simulation length of COS (0: none).
      iterations: k >= 0, COS's calibration rounds; ``presim_steps=0, iterations=0`` is the
        uncalibrated baseline, and ``presim_steps > 0`` needs ``iterations >= 1``.
      eps: relative margin of Theorem 2, a finite real >= 0.
      saturated: rule (ii) for a neuron that fired at every pre-simulation step: ``"fire"``
        (default, as the authors' code: it fires at every later step) or ``"hold"`` (left
        unshifted); see :func:`offsetjax.shift_initial_potential`.
      srp_steps: tau of SRP, 0 (default): off; excludes ``iterations``. The network then runs
        tau + T steps and its logits are the last T's (``docs/method.md`` section 8).
      unroll: ``jax.lax.scan`` unroll of each site's time loops, an int >= 1; ``None``
        (default): :func:`offsetjax.scan_unroll` of each loop's length, chosen to bound compile
        time.

    Raises:
      ValueError: at construction, naming the field and what was expected.

    >>> Schedule(num_steps=4, presim_steps=2, iterations=1).latency_steps
    6
    """

    num_steps: int
    presim_steps: int = 0
    iterations: int = 0
    eps: float = 1e-3
    saturated: str = "fire"
    srp_steps: int = 0
    unroll: int | None = None

    def __post_init__(self):
        check_steps(num_steps=self.num_steps, presim_steps=self.presim_steps, iterations=self.iterations)
        if self.presim_steps > 0 and self.iterations == 0:
            raise ValueError(
                f"presim_steps={self.presim_steps} with iterations=0 calibrates nothing: the network would run "
                "uncalibrated; pass iterations >= 1 (COS) or presim_steps=0 (the uncalibrated baseline)"
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, numbers.Real) or not math.isfinite(self.eps):
            raise ValueError(f"eps must be a finite real >= 0, got {self.eps!r}")
        if self.eps < 0:
            raise ValueError(f"eps must be a finite real >= 0, got {self.eps!r}")
        check_choice("saturated", self.saturated, SATURATION_RULES)
        check_int("srp_steps", self.srp_steps, minimum=0)
        if self.srp_steps and self.iterations:
            raise ValueError(
                f"srp_steps={self.srp_steps} and iterations={self.iterations}: SRP and COS are separate methods, "
                "set one of them to 0"
            )
        resolve_unroll(self.unroll, self.num_steps)

    @property
    def input_steps(self) -> int:
        """Steps of currents a site takes and emits: tau + T (T without SRP)."""
        return self.srp_steps + self.num_steps

    @property
    def site_lag(self) -> int:
        """Ticks a site's output lags its input when run step by step: COS buffers k * rho
        inputs; the other methods none."""
        return self.presim_steps * self.iterations

    @property
    def latency_steps(self) -> int:
        """Steps of input one image occupies, pre-simulation included: k * rho + T (COS),
        tau + T (SRP), T otherwise."""
        return self.site_lag + self.input_steps

    def replace(self, **changes: Any) -> Schedule:
        """This schedule with ``changes`` (field names), validated again."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ValueError(f"Schedule has no field {', '.join(unknown)}; its fields are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, for a file format (NIR metadata, ``results.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, name: str = "options") -> Schedule:
        """A schedule from field names and values (what a file format or a caller's keywords
        hold); an unknown name is refused, naming ``name`` and the valid fields."""
        unknown = sorted(set(options) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"{name} holds {', '.join(map(repr, unknown))}, not a schedule field ({', '.join(FIELDS)})"
            )
        if "num_steps" not in options:
            raise ValueError(f"{name} must give num_steps (T >= 1)")
        return cls(**options)

    def __getitem__(self, key: str) -> Any:
        """Deprecated (offsetjax 0.2, removed in 0.3): ``schedule(snn)["num_steps"]``, from when the schedule
        was a dict; read the field, ``schedule(snn).num_steps``."""
        warnings.warn(
            f"offsetjax.schedule(snn) is a Schedule now: read schedule(snn).{key}, not schedule(snn)[{key!r}]",
            DeprecationWarning,
            stacklevel=2,
        )
        if key not in FIELDS:
            raise KeyError(key)
        return getattr(self, key)


#: The field names of :class:`Schedule`, in order.
FIELDS = tuple(field.name for field in dataclasses.fields(Schedule))
