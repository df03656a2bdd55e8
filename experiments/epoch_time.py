"""Measure the training wall time per epoch that the CIFAR and ImageNet configs state.

    python -m experiments.epoch_time [--batch 32] [--steps 3] [--workdir results/epoch_time]

Times ``--steps`` jitted training steps (after one warm-up step) of each reference network at
its dataset's image size on random data, on whatever device JAX uses, and extrapolates to one
epoch: seconds per image x images per epoch. Writes ``epoch_time.json``.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import Directory, Ints
from experiments.results import ROOT, RunError, check_outputs, command, machine, write_output
from offsetjax import training

#: (config, arch, image side, classes, training images per epoch, the config's batch size)
RUNS = (
    ("cifar10", "vgg16", 32, 10, 50_000, 128),
    ("cifar10", "resnet20", 32, 10, 50_000, 128),
    ("cifar10", "resnet18", 32, 10, 50_000, 128),
    ("imagenet", "vgg16", 224, 1000, 1_281_167, 256),
    ("imagenet", "resnet34", 224, 1000, 1_281_167, 256),
)


def seconds_per_step(arch: str, side: int, classes: int, batch: int, steps: int) -> float:
    model = oj.models.ARCHITECTURES[arch](classes)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    state = training.create_train_state(
        model, training.sgd_cosine(learning_rate=0.1, total_steps=10), images[:2], seed=0
    )
    state, metrics = training.train_step(state, images, labels)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        state, metrics = training.train_step(state, images, labels)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--batch", type=Ints(1, 4096), default=32, help="measured batch (the estimate scales per image)"
    )
    parser.add_argument("--steps", type=Ints(1, 1000), default=3, help="training steps measured")
    parser.add_argument(
        "--only", nargs="+", default=None, choices=sorted({run[1] for run in RUNS}), help="arch names to measure"
    )
    parser.add_argument("--workdir", type=Directory(exists=False), default=ROOT / "results" / "epoch_time")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before any measurement
        args.workdir.mkdir(parents=True, exist_ok=True)
        check_outputs(args.workdir, ["epoch_time.json"], overwrite=args.overwrite)
    except (OSError, RunError) as error:
        parser.error(str(error))
    records = []
    for config, arch, side, classes, images_per_epoch, config_batch in RUNS:
        if args.only and arch not in args.only:
            continue
        step = seconds_per_step(arch, side, classes, args.batch, args.steps)
        records.append(
            {
                "config": config,
                "arch": arch,
                "measured_batch": args.batch,
                "config_batch": config_batch,
                "seconds_per_step": step,
                "seconds_per_epoch_estimate": step / args.batch * images_per_epoch,
            }
        )
        print(json.dumps(records[-1]), flush=True)
    write_output(
        args.workdir,
        "epoch_time.json",
        json.dumps({"command": command(__spec__.name, argv), "machine": machine(), "records": records}, indent=2),
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    main()
