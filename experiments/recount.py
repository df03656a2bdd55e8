"""Restate the structure-only operation fields of finished runs: the ANN's MACs and energy.

    python -m experiments.recount results/fashion_mnist/small_vgg results/fashion_mnist/small_resnet

``dense_macs`` and ``ann_energy_j`` depend on the network's architecture and image shape only,
not on its weights: this recomputes them with :func:`offsetjax.operations.layer_macs` (every
convolution and dense layer at its own resolution) for runs evaluated before that count was
fixed (they charged every layer after a pool at the pre-pool resolution, docs/results.md), then
rewrites ``results.md`` and the plots. Nothing else in ``results.json`` changes; the file
records the command in ``recounted_by``. Runs that can be re-evaluated from their weights are
better re-run with ``--eval-only``, which also adds NeuroBench's effective counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments import cli
from experiments.config import load_config
from experiments.datasets import load_splits
from experiments.report import REPORT_FILES, write_markdown, write_plots
from experiments.results import RunError, command, load_results, record, results_directory, studying, write_output
from experiments.training import build_model
from offsetjax.operations import energy, layer_macs
from offsetjax.training import data


def recount(workdir: Path, *, overwrite: bool = False) -> tuple[float, float]:
    """Rewrite ``workdir``'s ANN MACs and energy (and its report); returns (old, new) MACs."""
    with studying(workdir, ("results.json", *REPORT_FILES), overwrite=overwrite):
        return _recount(workdir, overwrite)


def _recount(workdir: Path, overwrite: bool) -> tuple[float, float]:
    config = load_config(workdir)
    results = load_results(workdir)
    _, test_split = load_splits(config)
    image_shape = tuple(data.take(test_split, np.arange(1))[0].shape[1:])
    dense_macs = sum(layer_macs(build_model(config, data.NUM_CLASSES[config.dataset]), image_shape).values())
    old = None
    for operations in results["operations"].values():
        old = operations["dense_macs"]
        operations["dense_macs"] = dense_macs
    results["ann_energy_j"] = energy(synops=0.0, presim_synops=0.0, input_macs=0.0, dense_macs=dense_macs)["ann"]
    results["recounted_by"] = command(module="experiments.recount", argv=[str(workdir)])
    write_output(workdir, "results.json", json.dumps(results, indent=2), overwrite=overwrite)
    write_output(workdir, "results.md", write_markdown(results), overwrite=overwrite)
    record(workdir, *write_plots(results, workdir, overwrite=overwrite))
    return old, dense_macs


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=results_directory, help="finished run directories")
    parser.add_argument("--overwrite", action="store_true", help="replace reports edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for workdir in args.runs:
            old, new = recount(workdir, overwrite=args.overwrite)
            print(f"{workdir}: dense_macs {old:,.0f} -> {new:,.0f} per image ({old / new:.3f}x)")
    except RunError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
