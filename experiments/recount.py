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
import sys
from pathlib import Path

import numpy as np

from experiments.config import load_config
from experiments.datasets import load_splits
from experiments.report import write_markdown, write_plots
from experiments.results import RunError, command, load_results, record, results_directory, write_output
from experiments.training import build_model
from offsetjax.operations import energy, layer_macs
from offsetjax.training import data


def recount(workdir: Path) -> tuple[float, float]:
    """Rewrite ``workdir``'s ANN MACs and energy (and its report); returns (old, new) MACs."""
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
    write_output(workdir, "results.json", json.dumps(results, indent=2))
    write_output(workdir, "results.md", write_markdown(results))
    record(workdir, *write_plots(results, workdir))
    return old, dense_macs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=results_directory, help="finished run directories")
    args = parser.parse_args(argv)
    try:
        for workdir in args.runs:
            old, new = recount(workdir)
            print(f"{workdir}: dense_macs {old:,.0f} -> {new:,.0f} per image ({old / new:.3f}x)")
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
