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

    ``calibration`` is a data-level correction computed once per T on training images
    (:func:`offsetjax.data_potential` or :func:`offsetjax.data_bias`), so the row is evaluated at
    every T = 1..``max_steps`` separately; without one, a single run of ``max_steps`` steps gives
    every T.
    """

    family: str
    max_steps: int
    presim_steps: int = 0
    iterations: int = 0
    saturated: str = "fire"
    srp_steps: int = 0
    calibration: Callable | None = None

    @property
    def extra_steps(self) -> int:
        """Steps each sample spends before its T steps: rho * k (COS), tau (SRP)."""
        return self.presim_steps * self.iterations + self.srp_steps


def methods(config: ExperimentConfig) -> dict[str, Method]:
    """Row name -> :class:`Method`. ``qcfs`` is the uncalibrated baseline, run to the largest
    total budget of the equal-budget table, ``max_steps + presim_steps``."""
    budget = config.max_steps + config.presim_steps
    per_t = min(config.max_steps, config.data_max_steps)  # data-level rows: one calibration per T
    rows = {"qcfs": Method("qcfs", budget)}
    families = set(config.methods)
    if "cos" in families:
        for rule in config.saturated:
            suffix = "" if rule == "fire" else f"_{rule}"
            rows.update(
                {
                    f"cos_k{k}{suffix}": Method("cos", config.max_steps, config.presim_steps, k, rule)
                    for k in config.iterations
                }
            )
    if "data_v0" in families:
        rows["data_v0"] = Method("data_v0", per_t, calibration=CALIBRATIONS["data_v0"])
    if "data_bias" in families:
        rows["data_bias"] = Method("data_bias", per_t, calibration=CALIBRATIONS["data_bias"])
    if "warm_cos" in families:
        rows.update(
            {
                f"warm_cos_r{rho}": Method("warm_cos", per_t, rho, 1, calibration=CALIBRATIONS["data_v0"])
                for rho in config.warm_presim_steps
            }
        )
    if "srp" in families:
        rows["srp"] = Method("srp", config.max_steps, srp_steps=config.srp_steps)
    return rows


def snn_for(model, method: Method, num_steps: int):
    """The SNN that evaluates ``method`` at T = ``num_steps``. COS needs rho <= T: at T < rho the
    network runs rho steps and is read at t = T (the steps after T change nothing before it)."""
    return oj.spiking_model(
        model,
        num_steps=max(num_steps, method.presim_steps),
        presim_steps=method.presim_steps,
        iterations=method.iterations,
        saturated=method.saturated,
        srp_steps=method.srp_steps,
    )
