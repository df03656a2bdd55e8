"""The methods a run evaluates: one :class:`Method` per row of ``results.json``.

``docs/method.md`` section 8 describes each family; :func:`methods` expands a configuration's
``--methods`` into rows (``cos_k1``, ``cos_k2_hold``, ``warm_cos_r1``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import offsetjax as oj

if TYPE_CHECKING:
    from experiments.config import ExperimentConfig

#: Method families, in the order of the results' rows.
METHOD_FAMILIES = ("qcfs", "cos", "data_v0", "data_bias", "warm_cos", "srp")
#: The data-level calibration of each family that has one, by the family's name (warm_cos starts
#: from data_v0's).
CALIBRATIONS = {"data_v0": oj.data_potential, "data_bias": oj.data_bias}


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of results: how the SNN is calibrated and at which T it is evaluated.

    ``schedule`` is the SNN's at the row's largest T, ``max_steps`` (at least rho steps: see
    :func:`snn_for`). ``calibration`` is a data-level correction computed once per T on training
    images (:func:`offsetjax.data_potential` or :func:`offsetjax.data_bias`), so the row is
    evaluated at every T = 1..``max_steps`` separately; without one, a single run of
    ``max_steps`` steps gives every T.
    """

    family: str
    max_steps: int
    schedule: oj.Schedule
    calibration: Callable | None = None

    @property
    def extra_steps(self) -> int:
        """Steps each sample spends before its T steps: rho * k (COS), tau (SRP)."""
        return self.schedule.latency_steps - self.schedule.num_steps


def method(
    family: str,
    max_steps: int,
    calibration: Callable | None = None,
    *,
    presim_steps: int = oj.Schedule.presim_steps,
    **fields,
) -> Method:
    """A :class:`Method` of ``family`` evaluated up to T = ``max_steps``; ``presim_steps`` and
    ``fields``: the :class:`offsetjax.Schedule` fields other than T."""
    num_steps = max(max_steps, presim_steps)
    return Method(family, max_steps, oj.Schedule(num_steps=num_steps, presim_steps=presim_steps, **fields), calibration)


def methods(config: ExperimentConfig) -> dict[str, Method]:
    """Row name -> :class:`Method`. ``qcfs`` is the uncalibrated baseline, run to the largest
    total budget of the equal-budget table, ``max_steps + presim_steps``."""
    budget = config.max_steps + config.presim_steps
    per_t = min(config.max_steps, config.data_max_steps)  # data-level rows: one calibration per T
    rows = {"qcfs": method("qcfs", budget)}
    families = set(config.methods)
    if "cos" in families:
        for rule in config.saturated:
            suffix = "" if rule == "fire" else f"_{rule}"
            rows.update(
                {
                    f"cos_k{k}{suffix}": method(
                        "cos", config.max_steps, presim_steps=config.presim_steps, iterations=k, saturated=rule
                    )
                    for k in config.iterations
                }
            )
    if "data_v0" in families:
        rows["data_v0"] = method("data_v0", per_t, CALIBRATIONS["data_v0"])
    if "data_bias" in families:
        rows["data_bias"] = method("data_bias", per_t, CALIBRATIONS["data_bias"])
    if "warm_cos" in families:
        rows.update(
            {
                f"warm_cos_r{rho}": method("warm_cos", per_t, CALIBRATIONS["data_v0"], presim_steps=rho, iterations=1)
                for rho in config.warm_presim_steps
            }
        )
    if "srp" in families:
        rows["srp"] = method("srp", config.max_steps, srp_steps=config.srp_steps)
    return rows


def snn_for(model, row: Method, num_steps: int):
    """The SNN that evaluates ``row`` at T = ``num_steps``. COS needs rho <= T: at T < rho the
    network runs rho steps and is read at t = T (the steps after T change nothing before it)."""
    schedule = row.schedule
    return oj.spiking_model(model, schedule=schedule.replace(num_steps=max(num_steps, schedule.presim_steps)))
