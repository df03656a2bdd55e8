"""Export a finished run's SNN to NIR and evaluate the written graph under both IF semantics.

    python -m experiments.nir_export --workdir results/fashion_mnist/small_vgg [--num-steps 8]

For the uncalibrated SNN (qcfs) and COS (rho = 4, k = 1): writes ``<workdir>/nir/<method>.nir``,
reads it back, runs it with :func:`offsetjax.interop.nir.run_nir` over the test split with
offsetjax's semantics (the metadata: reset by subtraction, v(0) = theta/2, v >= theta, the
calibration) and with NIR's literal IF node (reset to 0, v(0) = 0, v > theta), and writes
``<workdir>/nir.json`` and ``nir.md``: top-1 accuracy per T for each, beside the simulator's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import COUNT, Directory
from experiments.cli import STEPS as STEPS_TYPE
from experiments.config import load_config
from experiments.results import STEPS, command, studying, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax.interop.nir import run_nir, to_nir
from offsetjax.training import data


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Directory(exists=True), required=True, help="a finished run of an experiment")
    parser.add_argument("--num-steps", type=STEPS_TYPE, default=8, help="T")
    parser.add_argument("--batch-size", type=COUNT, default=500, help="evaluation batch size")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


#: The rows exported: name -> (uses the run's rho, k).
METHODS = {"qcfs": False, "cos_k1": True}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    import nir

    outputs = [f"nir/{name}.nir" for name in METHODS] + ["nir.json", "nir.md"]
    try:
        with studying(args.workdir, outputs, overwrite=args.overwrite) as identity:
            config = load_config(args.workdir)
            if args.num_steps < config.presim_steps:  # before anything is computed or written
                parser.error(
                    f"--num-steps {args.num_steps} is below the run's presim-steps {config.presim_steps} (COS)"
                )
            config, model, ann_variables, _, test_split = load_finished(args.workdir)
            report = {
                "dataset": config.dataset,
                "arch": config.arch,
                "run": identity,
                "num_steps": args.num_steps,
                "methods": {},
            }
            graphs = {}  # name -> the file's bytes, written only once every method has run
            for name, calibrated in METHODS.items():
                presim, iterations = (config.presim_steps, 1) if calibrated else (0, 0)
                snn = oj.spiking_model(model, num_steps=args.num_steps, presim_steps=presim, iterations=iterations)
                variables = oj.convert_variables(snn, ann_variables)
                with tempfile.TemporaryDirectory() as scratch:
                    path = Path(scratch) / f"{name}.nir"
                    nir.write(path, to_nir(snn, variables, tuple(test_split.images.shape[1:])))
                    graphs[name] = path.read_bytes()
                    graph = nir.read(path)
                report["methods"][name] = evaluate_runs(snn, variables, graph, test_split, args)
                print(name, {key: round(row[str(args.num_steps)], 4) for key, row in report["methods"][name].items()})
            report["command"] = command(__spec__.name, argv)
            (args.workdir / "nir").mkdir(exist_ok=True)
            for name, content in graphs.items():
                write_output(args.workdir, f"nir/{name}.nir", content, overwrite=args.overwrite)
            write_output(args.workdir, "nir.json", json.dumps(report, indent=2), overwrite=args.overwrite)
            write_output(args.workdir, "nir.md", markdown(report, config), overwrite=args.overwrite)
    except USER_ERRORS as error:
        parser.error(str(error))
    print(markdown(report, config))
    return report


def evaluate_runs(snn, variables, graph, test_split, args) -> dict:
    """Top-1 accuracy at each t of the simulator and of the graph under both semantics."""
    runs = {
        "simulate": jax.jit(lambda x: oj.simulate(snn, variables, x)),
        "nir_offsetjax_semantics": jax.jit(lambda x: run_nir(graph, x, semantics="offsetjax")),
        "nir_literal_semantics": jax.jit(lambda x: run_nir(graph, x, semantics="nir")),
    }
    correct = {key: np.zeros(args.num_steps) for key in runs}
    for images, labels, mask in oj.evaluate.padded_batches(test_split, args.batch_size):
        for key, run in runs.items():
            logits = np.asarray(run(images))
            correct[key] += np.sum((logits.argmax(-1) == labels[None]) & mask[None], axis=1)
    count = data.num_examples(test_split)
    return {key: {str(t): float(c[t - 1] / count) for t in range(1, args.num_steps + 1)} for key, c in correct.items()}


def markdown(report: dict, config) -> str:
    num_steps = report["num_steps"]
    lines = [f"NIR export of {config.dataset} / {config.arch}, T = {num_steps}: top-1 accuracy (%).", ""]
    steps = [t for t in STEPS if int(t) <= num_steps]
    lines += ["| method | run | " + " | ".join(f"T={t}" for t in steps) + " |"]
    lines += ["|---|---|" + "---|" * len(steps)]
    for name, rows in report["methods"].items():
        for key, row in rows.items():
            cells = [f"{100 * row[t]:.2f}" for t in steps]
            lines.append(f"| {name} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nReproduce: `{report['command']}`\n"


if __name__ == "__main__":
    main()
