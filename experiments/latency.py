"""Accuracy against latency: when each method's outputs appear on a chip, beside their accuracy.

    python -m experiments.latency --workdir results/fashion_mnist/small_vgg

Every run evaluated since the step-by-step executor exists records ``latency_ticks`` in its
``results.json``: per method, per per-layer delay d (``"d0"``, ``"d1"``), the tick at which the
network's t-th output appears (:func:`offsetjax.step_by_step`, ``docs/method.md`` section 9).
The ticks depend on the network's graph and the method's schedule, not on the weights, so for
a run evaluated before, this script computes them from its configuration (the network built
with fresh weights). It writes ``latency.json`` (stamped with the run's id and its command: the
ticks where ``results.json`` lacks them, and ``accuracy_by_tick``, the tables below, which
``experiments.reproduce --studies`` compares), ``latency.md`` and ``latency.png``: accuracy
(from ``results.json``) against the tick it is available at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.config import load_config
from experiments.datasets import load_splits
from experiments.methods import Method, methods, snn_for
from experiments.results import (
    RunError,
    best_lines,
    check_derived,
    command,
    load_results,
    pyplot,
    record,
    results_directory,
    save_figure,
    studying,
    write_output,
)
from offsetjax.executor import DELAYS
from offsetjax.training import data

#: Tick budgets of the accuracy-against-latency tables.
BUDGETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def latency_ticks(model, ann_variables, rows: dict[str, Method], image_shape: tuple[int, ...]) -> dict:
    """``{method: {"d0": {t: tick}, "d1": {t: tick}}}``: the tick of each method's t-th output,
    t = 1..its largest T, from the executor's schedule of its network."""
    ticks = {}
    for name, method in rows.items():
        snn = snn_for(model, method, method.max_steps)
        variables = oj.convert_variables(snn, ann_variables)
        ticks[name] = {}
        for delay in DELAYS:
            program = oj.step_by_step(snn, variables, image_shape, batch_size=1, delay=delay)
            first = program.output_lag + program.readout_start
            ticks[name][f"d{delay}"] = {str(t): first + t for t in range(1, method.max_steps + 1)}
    return ticks


def load_latency(workdir: Path) -> dict | None:
    """A finished run's latency ticks: from its ``results.json``, else from ``latency.json``
    (refused if made from another run), else None."""
    results = load_results(workdir)
    if "latency_ticks" in results:
        return results["latency_ticks"]
    if not (Path(workdir) / "latency.json").is_file():
        return None
    return check_derived(workdir, "latency.json", __spec__.name)["latency_ticks"]


def by_budget(results: dict, ticks: dict, delay: str) -> dict[str, dict[int, float]]:
    """``{method: {budget: accuracy}}``: each method's accuracy read at its last output that
    has appeared by tick ``budget`` (methods and T as ``results.json`` has them)."""
    table = {}
    for name, row in results["snn"].items():
        available = {int(t): ticks[name][delay][t] for t in row["accuracy"] if t in ticks[name][delay]}
        table[name] = {}
        for budget in BUDGETS:
            ready = [t for t, tick in available.items() if tick <= budget]
            if ready:
                table[name][budget] = row["accuracy"][str(max(ready))]
    return table


def latency_lines(results: dict, ticks: dict, delay: str) -> list[str]:
    """The accuracy-against-latency table: a row per tick budget, a column per method, the best
    bold ("—": no output yet)."""
    table = by_budget(results, ticks, delay)
    last = max(tick for name in ticks for tick in ticks[name][delay].values())
    budgets = [b for b in BUDGETS if b < last] + [next(b for b in BUDGETS if b >= last)]
    return best_lines("tick", budgets, table)


def markdown(results: dict, ticks: dict) -> str:
    lines = [
        f"Accuracy (%) against latency on a chip, {results['dataset']} / {results['arch']}: each method read at "
        "its last output that has appeared by the tick (docs/method.md section 9; the image enters at tick 1).",
    ]
    for delay, what in (
        ("d0", "d = 0 (a layer and the next site within one tick)"),
        ("d1", "d = 1 (a tick per layer)"),
    ):
        lines += ["", f"Per-layer delay {what}:", "", *latency_lines(results, ticks, delay)]
    return "\n".join(lines) + "\n"


def plot(results: dict, ticks: dict, path: Path, *, overwrite: bool = False) -> bool:
    """Accuracy against the tick of each output, a panel per delay; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(DELAYS), figsize=(11, 4), sharey=True)
    for axis, delay in zip(axes, DELAYS):
        for name, row in results["snn"].items():
            if row.get("saturated") == "hold":
                continue  # beside their "fire" rows in latency.md; drawn, they would hide them
            steps = [t for t in row["accuracy"] if t in ticks[name][f"d{delay}"]]
            axis.plot(
                [ticks[name][f"d{delay}"][t] for t in steps],
                [100 * row["accuracy"][t] for t in steps],
                marker="o",
                markersize=3,
                label=name,
            )
        axis.axhline(100 * results["ann_accuracy"], color="black", linestyle=":", label="ANN")
        axis.set_xscale("log", base=2)
        axis.set_xlabel(f"tick of the output (per-layer delay d = {delay})")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{results['dataset']} / {results['arch']}: accuracy against latency")
    save_figure(fig, path, overwrite=overwrite)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=results_directory, required=True, help="a finished run")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    workdir = args.workdir
    outputs = ["latency.json", "latency.md", "latency.png"]
    try:
        with studying(workdir, outputs, overwrite=args.overwrite) as identity:
            config = load_config(workdir)
            results = load_results(workdir)
            ticks = results.get("latency_ticks")
            report = {"run": identity, "command": command(__spec__.name, argv)}
            if ticks is None:  # from the network's graph and the schedules: fresh weights do
                model = oj.models.ARCHITECTURES[config.arch](data.NUM_CLASSES[config.dataset])
                image_shape = data.take(load_splits(config)[1], np.arange(1))[0].shape[1:]
                ann_variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)))
                rows = {name: method for name, method in methods(config).items() if name in results["snn"]}
                report["latency_ticks"] = ticks = latency_ticks(model, ann_variables, rows, image_shape)
            report["accuracy_by_tick"] = {f"d{delay}": by_budget(results, ticks, f"d{delay}") for delay in DELAYS}
            write_output(workdir, "latency.json", json.dumps(report, indent=2), overwrite=args.overwrite)
            write_output(workdir, "latency.md", markdown(results, ticks), overwrite=args.overwrite)
            if plot(results, ticks, workdir / "latency.png", overwrite=args.overwrite):
                record(workdir, workdir / "latency.png")
    except RunError as error:
        parser.error(str(error))
    print(markdown(results, ticks))
    return ticks


if __name__ == "__main__":
    main()
