"""Accuracy of a finished run's ANN when its QCFS sites use L levels other than the trained L.

    python -m experiments.levels_sweep --workdir results/fashion_mnist/small_resnet [--levels 1 2 3 4 8 16 1024]

The uncalibrated SNN run for T steps behaves much like the QCFS ANN at L = T, and as T grows its
rates approach the ANN at large L; this shows how much of the trained network survives either.
Writes ``levels_sweep.json`` into the run directory.
"""

import argparse
import json

import offsetjax as oj
from experiments import cli
from experiments.cli import Directory, Ints
from experiments.results import command, studying, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax import evaluate
from offsetjax.training import data


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Directory(exists=True), required=True, help="a finished run")
    parser.add_argument("--levels", type=Ints(1, 2**16), nargs="+", default=[1, 2, 3, 4, 8, 16, 1024])
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    workdir = args.workdir
    try:
        with studying(workdir, ["levels_sweep.json"], overwrite=args.overwrite) as identity:
            config, _, variables, _, test_split = load_finished(workdir)
            accuracy = {}
            for levels in args.levels:
                variant = oj.models.ARCHITECTURES[config.arch](
                    data.NUM_CLASSES[config.dataset], activation=oj.models.Activation(oj.QCFS, levels=levels)
                )
                accuracy[str(levels)] = evaluate.ann_accuracy(variant, variables, test_split, batch_size=500)
                print(f"L = {levels}: {100 * accuracy[str(levels)]:.2f}%", flush=True)
            report = {
                "command": command(__spec__.name, argv),
                "run": identity,
                "trained_levels": config.levels,
                "ann_accuracy_by_levels": accuracy,
            }
            write_output(workdir, "levels_sweep.json", json.dumps(report, indent=2), overwrite=args.overwrite)
    except USER_ERRORS as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
