"""How many training images does data-level calibration need? A sweep over the calibration set.

    python -m experiments.calibration_sweep --workdir results/fashion_mnist/small_vgg \\
        [--sizes 16 64 256 1024] [--steps 1 2 4 8] [--draws 0 1 2] [--method data_v0]

For every size and draw (the seed of the random subset of the training split), calibrates the
finished run's SNN once per T (:func:`offsetjax.data_potential` or :func:`offsetjax.data_bias`)
and evaluates it on the whole test split. Writes ``<workdir>/calibration_sweep.json``, ``.md``
and ``.png`` (accuracy against the calibration-set size, a line per T, the spread over draws;
``--name`` chooses another file name, e.g. for ``--solver linear``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import COUNT, SEED, STEPS, Directory, Name
from experiments.datasets import calibration_set
from experiments.methods import CALIBRATIONS
from experiments.results import (
    RESERVED_NAMES,
    command,
    progress_bar,
    pyplot,
    record,
    save_figure,
    studying,
    write_output,
)
from experiments.runs import USER_ERRORS, load_finished
from offsetjax import evaluate
from offsetjax.training import data


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--workdir", type=Directory(exists=True), required=True, help="a finished run of an experiment")
    parser.add_argument("--sizes", type=COUNT, nargs="+", default=[16, 64, 256, 1024], help="calibration-set sizes")
    parser.add_argument("--steps", type=STEPS, nargs="+", default=[1, 2, 4, 8], help="T values")
    parser.add_argument("--draws", type=SEED, nargs="+", default=[0], help="seeds of the random training subsets")
    parser.add_argument("--method", choices=("data_v0", "data_bias"), default="data_v0")
    parser.add_argument("--solver", choices=oj.data_calibration.SOLVERS, default="bisect")
    parser.add_argument("--batch-size", type=COUNT, default=500, help="evaluation batch size")
    parser.add_argument(
        "--name",
        type=Name(reserved=RESERVED_NAMES),
        default="calibration_sweep",
        help="output files: <workdir>/NAME.{json,md,png}",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("sizes", "steps", "draws"):
        values = getattr(args, name)
        if len(set(values)) != len(values):  # a repeated draw would be averaged as if it were another
            parser.error(f"--{name} repeats a value: {values}")
    outputs = [f"{args.name}.{suffix}" for suffix in ("json", "md", "png")]
    try:
        with studying(args.workdir, outputs, overwrite=args.overwrite) as identity:
            config, model, variables, train_split, test_split = load_finished(args.workdir)
            available = data.num_examples(train_split)
            if max(args.sizes) > available:
                parser.error(f"--sizes {max(args.sizes)} exceeds the run's {available} training images")
            report = sweep(args, config, model, variables, train_split, test_split, identity)
            report["command"] = command(__spec__.name, argv)
            write_output(args.workdir, outputs[0], json.dumps(report, indent=2), overwrite=args.overwrite)
            write_output(args.workdir, outputs[1], markdown(report), overwrite=args.overwrite)
            if plot(report, args.workdir / outputs[2], overwrite=args.overwrite):
                record(args.workdir, args.workdir / outputs[2])
    except USER_ERRORS as error:
        parser.error(str(error))
    print(markdown(report))
    return report


def sweep(args, config, model, variables, train_split, test_split, identity: str) -> dict:
    """Every (size, draw, T) calibrated and evaluated: the report without its command."""
    calibrate = CALIBRATIONS[args.method]
    report = {
        "dataset": config.dataset,
        "arch": config.arch,
        "run": identity,
        "method": args.method,
        "solver": args.solver,
        "num_test_examples": data.num_examples(test_split),
        "accuracy": {},  # size -> T -> [accuracy per draw]
        "calibration_seconds": {},  # size -> seconds per calibration (mean over T and draws)
    }
    runs = [(size, draw, t) for size in args.sizes for draw in args.draws for t in args.steps]
    with progress_bar(total=len(runs), desc=f"{args.method} sweep", unit="run") as bar:
        for size, draw, num_steps in runs:
            images = calibration_set(dataclasses.replace(config, seed=draw, calibration_images=size), train_split)
            snn = oj.spiking_model(model, num_steps=num_steps)
            began = time.perf_counter()
            snn_variables = calibrate(snn, variables, images, solver=args.solver)
            seconds = time.perf_counter() - began
            accuracy = evaluate.evaluate_snn(snn, snn_variables, test_split, batch_size=args.batch_size).accuracy[-1]
            report["accuracy"].setdefault(str(size), {}).setdefault(str(num_steps), []).append(float(accuracy))
            report["calibration_seconds"].setdefault(str(size), []).append(seconds)
            bar.update(1)
            bar.set_postfix(size=size, T=num_steps, acc=f"{accuracy:.4f}", refresh=False)
    report["calibration_seconds"] = {k: float(np.mean(v)) for k, v in report["calibration_seconds"].items()}
    return report


def markdown(report: dict) -> str:
    sizes = list(report["accuracy"])
    steps = list(report["accuracy"][sizes[0]])
    draws = len(report["accuracy"][sizes[0]][steps[0]])
    spread = f", mean (min-max) over {draws} random subsets" if draws > 1 else ""
    lines = [
        f"{report['method']} ({report['solver']}) on {report['dataset']} / {report['arch']}: top-1 accuracy (%) on "
        f"{report['num_test_examples']} test images against the number of training images it calibrated on{spread}.",
        "",
        "| calibration images | " + " | ".join(f"T={t}" for t in steps) + " | seconds per calibration |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for size in sizes:
        cells = []
        for t in steps:
            values = 100 * np.asarray(report["accuracy"][size][t])
            cells.append(
                f"{values.mean():.2f}" + (f" ({values.min():.2f}-{values.max():.2f})" if len(values) > 1 else "")
            )
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {report['calibration_seconds'][size]:.1f} |")
    return "\n".join(lines) + f"\n\nReproduce: `{report['command']}`\n"


def plot(report: dict, path: Path, *, overwrite: bool = False) -> bool:
    """Write the plot to ``path``; False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    sizes = [int(s) for s in report["accuracy"]]
    fig, axis = plt.subplots(figsize=(6, 4))
    for t in report["accuracy"][str(sizes[0])]:
        values = [100 * np.asarray(report["accuracy"][str(s)][t]) for s in sizes]
        means = [v.mean() for v in values]
        errors = [[m - v.min() for m, v in zip(means, values)], [v.max() - m for m, v in zip(means, values)]]
        axis.errorbar(sizes, means, yerr=errors, marker="o", capsize=3, label=f"T={t}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("calibration images (training split)")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.suptitle(f"{report['dataset']} / {report['arch']}: {report['method']} against calibration-set size")
    save_figure(fig, path, overwrite=overwrite)
    return True


if __name__ == "__main__":
    main()
