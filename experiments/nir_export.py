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
from pathlib import Path

import jax
import numpy as np

import offsetjax as oj
from experiments.results import STEPS, command, record, run_id, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax.interop.nir import run_nir, to_nir
from offsetjax.training import data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a finished run of an experiment")
    parser.add_argument("--num-steps", type=int, default=8, help="T")
    parser.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    args = parser.parse_args(argv)
    import nir

    try:
        config, model, ann_variables, _, test_split = load_finished(args.workdir)
    except USER_ERRORS as error:
        parser.error(str(error))
    image_shape = tuple(test_split.images.shape[1:])
    report = {
        "dataset": config.dataset,
        "arch": config.arch,
        "run": run_id(args.workdir),
        "num_steps": args.num_steps,
        "methods": {},
    }
    (args.workdir / "nir").mkdir(exist_ok=True)
    for name, (presim, iterations) in {"qcfs": (0, 0), "cos_k1": (config.presim_steps, 1)}.items():
        snn = oj.spiking_model(model, num_steps=args.num_steps, presim_steps=presim, iterations=iterations)
        variables = oj.convert_variables(snn, ann_variables)
        path = args.workdir / "nir" / f"{name}.nir"
        nir.write(path, to_nir(snn, variables, image_shape))
        record(args.workdir, path)
        graph = nir.read(path)
        runs = {
            "simulate": jax.jit(lambda x, s=snn, v=variables: oj.simulate(s, v, x)),
            "nir_offsetjax_semantics": jax.jit(lambda x, g=graph: run_nir(g, x, semantics="offsetjax")),
            "nir_literal_semantics": jax.jit(lambda x, g=graph: run_nir(g, x, semantics="nir")),
        }
        correct = {key: np.zeros(args.num_steps) for key in runs}
        for images, labels, mask in oj.evaluate.padded_batches(test_split, args.batch_size):
            for key, run in runs.items():
                logits = np.asarray(run(images))
                correct[key] += np.sum((logits.argmax(-1) == labels[None]) & mask[None], axis=1)
        count = data.num_examples(test_split)
        report["methods"][name] = {
            key: {str(t): float(c[t - 1] / count) for t in range(1, args.num_steps + 1)} for key, c in correct.items()
        }
        print(name, {key: round(float(c[-1] / count), 4) for key, c in correct.items()}, flush=True)
    report["command"] = command(__spec__.name, argv)
    write_output(args.workdir, "nir.json", json.dumps(report, indent=2))
    lines = [f"NIR export of {config.dataset} / {config.arch}, T = {args.num_steps}: top-1 accuracy (%).", ""]
    steps = [t for t in STEPS if int(t) <= args.num_steps]
    lines += ["| method | run | " + " | ".join(f"T={t}" for t in steps) + " |"]
    lines += ["|---|---|" + "---|" * len(steps)]
    for name, rows in report["methods"].items():
        for key, row in rows.items():
            cells = [f"{100 * row[t]:.2f}" for t in steps]
            lines.append(f"| {name} | {key} | " + " | ".join(cells) + " |")
    write_output(args.workdir, "nir.md", "\n".join(lines) + f"\n\nReproduce: `{report['command']}`\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
