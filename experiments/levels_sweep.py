"""Accuracy of a finished run's ANN when its QCFS sites use L levels other than the trained L.

    python -m experiments.levels_sweep --workdir results/fashion_mnist/small_resnet [--levels 1 2 3 4 8 16 1024]

The uncalibrated SNN run for T steps behaves much like the QCFS ANN at L = T, and as T grows its
rates approach the ANN at large L; this shows how much of the trained network survives either.
Writes ``levels_sweep.json`` into the run directory.
"""

import argparse
import json
from pathlib import Path

import offsetjax as oj
from experiments.results import command, run_id, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax import evaluate
from offsetjax.training import data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16, 1024])
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    try:
        config, _, variables, _, test_split = load_finished(workdir)
    except USER_ERRORS as error:
        parser.error(str(error))
    accuracy = {}
    for levels in args.levels:
        variant = oj.models.ARCHITECTURES[config.arch](
            data.NUM_CLASSES[config.dataset], activation=oj.models.Activation(oj.QCFS, levels=levels)
        )
        accuracy[str(levels)] = evaluate.ann_accuracy(variant, variables, test_split, batch_size=500)
        print(f"L = {levels}: {100 * accuracy[str(levels)]:.2f}%", flush=True)
    write_output(
        workdir,
        "levels_sweep.json",
        json.dumps(
            {
                "command": command(__spec__.name, argv),
                "run": run_id(workdir),
                "trained_levels": config.levels,
                "ann_accuracy_by_levels": accuracy,
            },
            indent=2,
        ),
    )


if __name__ == "__main__":
    main()
