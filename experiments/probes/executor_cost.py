"""What running a network step by step costs against the layer-by-layer simulator.

    python -m experiments.probes.executor_cost [--batch 64] [--repeats 3] [--out results/probes/executor_cost]

For small_vgg on 8x8 digits-sized inputs and small_resnet on 28x28 Fashion-MNIST-sized inputs
(fresh weights: the cost does not depend on them), T = 8, the uncalibrated SNN and COS
(rho = 4, k = 1), d = 0: the first call of :func:`offsetjax.simulate` and of
:func:`offsetjax.run_step_by_step` (compile and run) and the median of ``--repeats`` calls after
it (same network and batch shape: nothing compiled again), in seconds, and their ratios. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

import offsetjax as oj
from experiments import cli
from experiments.cli import Ints, NewFile
from experiments.results import RunError, check_report, command, machine, write_report

NETWORKS = {"small_vgg": (8, 8, 1), "small_resnet": (28, 28, 1)}
SCHEDULES = {"qcfs": {}, "cos_k1": {"presim_steps": 4, "iterations": 1}}


def seconds(call, repeats: int) -> tuple[float, float]:
    """The first call's seconds (compile and run) and the median of ``repeats`` more."""
    began = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - began
    again = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(call())
        again.append(time.perf_counter() - began)
    return first, statistics.median(again)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=Ints(1, 4096), default=64)
    parser.add_argument("--repeats", type=Ints(1, 1000), default=3)
    parser.add_argument(
        "--out", type=NewFile(), default=Path("results/probes/executor_cost"), help="output path without suffix"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:  # before any measurement
        check_report(out, overwrite=args.overwrite)
    except RunError as error:
        parser.error(str(error))
    records = []
    for name, shape in NETWORKS.items():
        model = oj.models.ARCHITECTURES[name](10)
        images = jax.random.uniform(jax.random.key(0), (args.batch, *shape))
        ann_variables = model.init(jax.random.key(1), images[:1])
        for label, options in SCHEDULES.items():
            snn = oj.spiking_model(model, num_steps=8, **options)
            variables = oj.convert_variables(snn, ann_variables)
            layer = seconds(lambda s=snn, v=variables, x=images: oj.simulate(s, v, x), args.repeats)
            step = seconds(lambda s=snn, v=variables, x=images: oj.run_step_by_step(s, v, x).logits, args.repeats)
            records.append(
                {
                    "network": name,
                    "method": label,
                    "batch": args.batch,
                    "simulate_first_s": layer[0],
                    "simulate_again_s": layer[1],
                    "step_by_step_first_s": step[0],
                    "step_by_step_again_s": step[1],
                    "first_ratio": step[0] / layer[0],
                    "again_ratio": step[1] / layer[1],
                }
            )
            print(json.dumps(records[-1]), flush=True)
    report = {"command": command(__spec__.name, argv), "machine": machine(), "records": records}
    lines = [
        "| network | method | batch | simulate: first s, again s | step by step: first s, again s "
        "| step by step / simulate: first, again |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['network']} | {r['method']} | {r['batch']} | {r['simulate_first_s']:.2f}, "
            f"{r['simulate_again_s']:.3f} | {r['step_by_step_first_s']:.2f}, {r['step_by_step_again_s']:.3f} "
            f"| {r['first_ratio']:.1f}, {r['again_ratio']:.1f} |"
        )
    text = "\n".join(lines) + f"\n\nReproduce: `{report['command']}`\n"
    write_report(out, json.dumps(report, indent=2), text, overwrite=args.overwrite)
    print("\n".join(lines))
    return records


if __name__ == "__main__":
    main()
