"""Every method of a run at every T: the ``results.json`` schema (docs/results.md)."""

from __future__ import annotations

import io
import time
from typing import NamedTuple

import numpy as np

import offsetjax as oj
from experiments.config import ExperimentConfig
from experiments.datasets import calibration_set
from experiments.latency import latency_ticks
from experiments.methods import Method, methods, snn_for
from experiments.results import STEPS, progress_bar
from offsetjax import evaluate, parallel
from offsetjax.training import data

#: Each method's predicted class of every test image at every T, beside ``results.json``.
PREDICTIONS = "predictions.npz"


class Evaluated(NamedTuple):
    """What :func:`evaluate_all` measured: ``results`` (the ``results.json`` schema) and
    ``predictions``, per method the predicted class of every test image after t = 1..T steps
    ``[T, N]`` (``predictions.npz``: what names the images whose prediction moved)."""

    results: dict
    predictions: dict[str, np.ndarray]


def predictions_file(predictions: dict[str, np.ndarray], num_classes: int) -> bytes:
    """``predictions`` as the bytes of a compressed ``.npz``, one ``[T, N]`` array per method,
    in the smallest integer type that holds ``num_classes`` classes."""
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: array.astype(dtype) for name, array in predictions.items()})
    return buffer.getvalue()


def evaluate_all(config: ExperimentConfig, model, variables, train_split, test_split) -> Evaluated:
    """ANN accuracy, every method's accuracy at each T, and Table-3 statistics at T = L; each
    method's predictions at each T."""
    began = time.perf_counter()
    mesh = parallel.data_mesh()
    count = data.num_examples(test_split)
    results = {
        "dataset": config.dataset,
        "arch": config.arch,
        "levels": config.levels,
        "num_test_examples": count,
        "ann_accuracy": evaluate.ann_accuracy(
            model, variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        ),
        "snn": {},
        "offset": {},
        "offset_per_layer": {},
        "operations": {},  # per image: spikes, synops, energy (J) per T; offsetjax.operations
        "wall_time_seconds": {},
    }
    results["wall_time_seconds"]["ann"] = time.perf_counter() - began
    rows = methods(config)
    images = None
    if any(method.calibration for method in rows.values()):
        images = calibration_set(config, train_split)
    calibrated = {}  # (calibration, T) -> SNN variables, shared by rows
    predictions: dict[str, np.ndarray] = {}

    def calibration(method: Method, num_steps: int) -> dict:
        """The method's data-level calibration for T = ``num_steps`` (made once, shared by rows)."""
        key = (method.calibration, num_steps)
        if key not in calibrated:
            calibrated[key] = method.calibration(
                oj.spiking_model(model, num_steps=num_steps),
                variables,
                images,
                solver=config.calibration_solver,
                mesh=mesh,
            )
        return calibrated[key]

    for name, method in rows.items():
        began = time.perf_counter()

        def run(num_steps: int, method: Method = method, **options):
            snn = snn_for(model, method, num_steps)
            if method.calibration is None:
                snn_variables = oj.convert_variables(snn, variables)
            else:
                snn_variables = calibration(method, num_steps)
                if num_steps < method.schedule.presim_steps:
                    # made for T, run in the longer network of rho steps on purpose (snn_for)
                    snn_variables = oj.data_calibration.without_calibration_record(snn_variables)
            return evaluate.evaluate_snn(
                snn, snn_variables, test_split, batch_size=config.eval_batch_size, mesh=mesh, **options
            )

        # One run gives every T, unless the calibration depends on T: then one run per T.
        step_runs = list(range(1, method.max_steps + 1)) if method.calibration else [method.max_steps]
        per_step, stats = {}, None
        with progress_bar(total=count * len(step_runs), desc=f"SNN {name}", unit="img") as bar:
            for num_steps in step_runs:
                # Table-3 statistics are taken at T = L: from the same pass when it runs L steps.
                at_levels = num_steps == config.levels
                evaluation = run(num_steps, statistics=at_levels, operations=True, progress=bar.update)
                stats = evaluation.statistics if at_levels else stats
                for t in range(1, num_steps + 1) if not method.calibration else [num_steps]:
                    per_step[t] = (
                        evaluation.accuracy[t - 1],
                        evaluation.operations.at(t),
                        evaluation.predictions[t - 1],
                    )
        if stats is None:
            stats = run(config.levels, statistics=True).statistics
        results["wall_time_seconds"][name] = time.perf_counter() - began
        steps = sorted(per_step)
        predictions[name] = np.stack([per_step[t][2] for t in steps])
        results["snn"][name] = {
            "family": method.family,
            "presim_steps": method.schedule.presim_steps + method.schedule.srp_steps,
            "iterations": method.schedule.iterations or int(method.schedule.srp_steps > 0),
            "saturated": method.schedule.saturated if method.schedule.iterations else None,
            "calibration_images": 0 if images is None or not method.calibration else len(images),
            "accuracy": {str(t): float(per_step[t][0]) for t in steps},
            "total_steps": {str(t): t + method.extra_steps for t in steps},
        }
        results["offset"][name] = {
            "zero_ratio": stats["all"]["zero_ratio"],
            "mse": stats["all"]["mse"],
            "psi_histogram": stats["all"]["psi_histogram"],
        }
        results["offset_per_layer"][name] = stats["sites"]
        first_ops = per_step[steps[0]][1]
        results["operations"][name] = {
            "input_macs": first_ops["input_macs"],
            "dense_macs": first_ops["dense_macs"],
            **{
                key: {str(t): per_step[t][1][key] for t in steps}
                for key in (
                    "spikes",
                    "synops",
                    "presim_spikes",
                    "presim_synops",
                    "energy_j",
                    "presim_energy_share",
                    "effective_acs",
                    "effective_macs",
                )
            },
        }
        results["ann_energy_j"] = first_ops["ann_energy_j"]
        accuracy = results["snn"][name]["accuracy"]
        print(
            f"{name}: " + " ".join(f"T={t}:{accuracy[t]:.4f}" for t in STEPS if t in accuracy),
            f"zero_ratio={stats['all']['zero_ratio']:.4f}",
            flush=True,
        )
    # when each output appears on a chip (offsetjax.step_by_step): per method, per layer delay
    image_shape = data.take(test_split, np.arange(1))[0].shape[1:]
    results["latency_ticks"] = latency_ticks(model, variables, rows, image_shape)
    return Evaluated(results, predictions)
