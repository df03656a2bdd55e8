"""Where ``warm_cos_r1`` departs from ``data_v0``: the saturation rule, measured on a committed run.

    python -m experiments.probes.warm_start_saturation [--workdir results/fashion_mnist/small_vgg]
        [--steps 5 6 7] [--images 500] [--out results/probes/warm_start_saturation]

With rho = 1 the COS rules reach only neurons with v(1) >= theta, which have fired at their one
pre-simulation step (docs/method.md, section 8): under the authors' ``saturated="fire"`` they
are lifted by (1001 + eps) theta, under ``"hold"`` nothing moves. For each T this evaluates,
from the run's committed weights and its own calibration images, ``warm_cos_r1`` under both
rules over the whole test split and compares each image's prediction with the committed
``predictions.npz`` rows ``data_v0`` and ``warm_cos_r1``; and on the first ``--images`` test
images counts, per site, the neurons the pre-simulation moved and how many of them
``data_v0`` started at or above theta. Prints a table and writes
``<out>.json`` and ``<out>.md`` (default ``results/probes/warm_start_saturation``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import STEPS, Ints, NewFile
from experiments.datasets import calibration_set
from experiments.evaluation import PREDICTIONS
from experiments.results import RunError, check_report, command, results_directory, write_report
from experiments.runs import load_finished
from offsetjax.training import data

#: The committed rows compared: the data-level start, and COS with rho = 1 from it.
ROWS = ("data_v0", "warm_cos_r1")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir", type=results_directory, default=Path("results/fashion_mnist/small_vgg"), help="a finished run"
    )
    parser.add_argument("--steps", type=STEPS, nargs="+", default=[5, 6, 7], help="the T to measure")
    parser.add_argument(
        "--images", type=Ints(1, 10000), default=500, help="test images whose moved neurons are counted"
    )
    parser.add_argument(
        "--out", type=NewFile(), default=Path("results/probes/warm_start_saturation"), help="output path without suffix"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def committed_predictions(workdir: Path, steps: list[int]) -> dict[str, np.ndarray]:
    """The committed ``data_v0`` and ``warm_cos_r1`` predictions ``[T, N]`` of the run in
    ``workdir``; a :class:`RunError` where the run has no such rows up to ``max(steps)``."""
    path = workdir / PREDICTIONS
    if not path.is_file():
        raise RunError(f"{workdir} holds no {PREDICTIONS}: run it again with --eval-only to write one")
    with np.load(path) as committed_file:
        committed = {name: committed_file[name] for name in ROWS if name in committed_file.files}
    for name in ROWS:
        if name not in committed:
            raise RunError(f"{path} has no {name} row: the probe needs a run evaluated with {' and '.join(ROWS)}")
        if committed[name].shape[0] < max(steps):
            raise RunError(f"--steps {max(steps)}: {path}'s {name} row goes up to T = {committed[name].shape[0]}")
    return committed


def moved_neurons(warm, data_variables, images: np.ndarray) -> dict[str, dict[str, float]]:
    """Per site: neurons per image whose v(0) the one-step pre-simulation moved, and the share of
    them that ``data_v0`` started at v(0) >= theta."""
    per_sample = oj.calibrate_network(warm, data_variables, images)
    counts = {}
    for site, entry in data_variables["initial_potential"].items():
        v0 = np.asarray(entry["v0"])
        theta = np.asarray(data_variables["params"][site]["threshold"])
        moved = np.asarray(per_sample[site]["v0"]) != v0[None]
        started_high = moved & (v0 >= theta)[None]
        counts[site] = {
            "moved_per_image": float(moved.sum() / len(images)),
            "started_at_or_above_theta": float(started_high.sum() / max(int(moved.sum()), 1)),
        }
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:  # before any measurement
        check_report(out, overwrite=args.overwrite)
        committed = committed_predictions(args.workdir, args.steps)
    except RunError as error:
        parser.error(str(error))
    config, model, variables, train_split, test_split = load_finished(args.workdir)
    calibration_images = calibration_set(config, train_split)
    first_images, _ = next(
        data.batches(test_split, batch_size=args.images, seed=0, shuffle=False, drop_remainder=False)
    )
    rows = []
    for num_steps in args.steps:
        data_variables = oj.data_potential(
            oj.spiking_model(model, num_steps=num_steps),
            variables,
            calibration_images,
            solver=config.calibration_solver,
        )
        row = {"T": num_steps}
        for rule in oj.offset.SATURATION_RULES:
            warm = oj.spiking_model(
                model, schedule=oj.Schedule(num_steps=num_steps, presim_steps=1, iterations=1, saturated=rule)
            )
            evaluation = oj.evaluate_snn(warm, data_variables, test_split, batch_size=config.eval_batch_size)
            predictions = np.asarray(evaluation.predictions[num_steps - 1])
            row[rule] = {
                "accuracy": float(evaluation.accuracy[num_steps - 1]),
                **{
                    f"differing_from_committed_{name}": int((predictions != committed[name][num_steps - 1]).sum())
                    for name in committed
                },
            }
            if rule == "fire":
                row["fire"]["moved_on_first_images"] = moved_neurons(warm, data_variables, first_images)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "command": command(__spec__.name, argv),
        "workdir": str(args.workdir),
        "first_images": args.images,
        "rows": rows,
    }
    lines = [
        f"# warm_cos_r1 against data_v0 by saturation rule ({args.workdir})",
        "",
        "| T | rule | accuracy | predictions differing from committed data_v0 | from committed warm_cos_r1 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for rule in oj.offset.SATURATION_RULES:
            cell = row[rule]
            lines.append(
                f"| {row['T']} | {rule} | {100 * cell['accuracy']:.2f}% | {cell['differing_from_committed_data_v0']} "
                f"| {cell['differing_from_committed_warm_cos_r1']} |"
            )
    lines += ["", f"Neurons moved by the one-step pre-simulation (rule `fire`, first {args.images} test images):", ""]
    for row in rows:
        if not any(count["moved_per_image"] for count in row["fire"]["moved_on_first_images"].values()):
            lines.append(f"- T = {row['T']}: none")
        for site, count in row["fire"]["moved_on_first_images"].items():
            if count["moved_per_image"]:
                lines.append(
                    f"- T = {row['T']}, {site}: {count['moved_per_image']:.1f} per image, "
                    f"{100 * count['started_at_or_above_theta']:.0f}% of them started at v(0) >= theta"
                )
    write_report(out, json.dumps(report, indent=2), "\n".join(lines) + "\n", overwrite=args.overwrite)
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
