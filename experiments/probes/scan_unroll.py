"""Compile time and run time of one SNN evaluation against the scan unroll of its time loops.

    python -m experiments.probes.scan_unroll [--networks vgg16 resnet20] [--steps 4 8 16 32 64]
        [--unrolls full 1 auto] [--batch 16] [--repeats 3] [--out results/probes/scan_unroll]

For each network, T and unroll, the calibrated SNN (rho = 4, k = 1, the CIFAR setting) is
lowered and compiled from scratch (a new model, so no cache hit), then run once and
``--repeats`` more times. ``auto`` is the library's default (:func:`offsetjax.scan_unroll`).
Writes ``<out>.json`` (every timing, the backend and the machine) and ``<out>.md`` (the table:
compile s, first run s, steady run s, and compile over the better of full and 1 unrolling).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

import offsetjax as oj
from experiments import benchmark, cli
from experiments.cli import STEPS, Ints, NewFile
from experiments.results import RunError, check_report, write_report
from offsetjax import simulation

PRESIM_STEPS, ITERATIONS = 4, 1


def measure(model, variables, images, num_steps: int, unroll, repeats: int) -> dict:
    snn = oj.spiking_model(model, num_steps=num_steps, presim_steps=PRESIM_STEPS, iterations=ITERATIONS, unroll=unroll)
    snn_variables = oj.convert_variables(snn, variables)
    began = time.perf_counter()
    compiled = simulation._apply.lower(snn, snn_variables, images, None).compile()
    compile_s = time.perf_counter() - began
    began = time.perf_counter()
    jax.block_until_ready(compiled(snn_variables, images, None))
    first_s = time.perf_counter() - began
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(compiled(snn_variables, images, None))
        runs.append(time.perf_counter() - began)
    return {"compile_s": compile_s, "first_run_s": first_s, "run_s": statistics.median(runs), "runs_s": runs}


def table(records: list[dict]) -> str:
    lines = [
        "| network | T | unroll | resolved | compile s | first run s | steady run s | compile / better extreme |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        key = (r["network"], r["num_steps"])
        extremes = [
            x["compile_s"] for x in records if (x["network"], x["num_steps"]) == key and x["unroll"] in ("full", "1")
        ]
        ratio = f"{r['compile_s'] / min(extremes):.2f}" if extremes else "-"
        lines.append(
            f"| {r['network']} | {r['num_steps']} | {r['unroll']} | {r['resolved']} | {r['compile_s']:.2f} "
            f"| {r['first_run_s']:.3f} | {r['run_s']:.3f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def unroll_choice(text: str) -> str:
    """``full``, ``auto`` or a positive integer."""
    if text in ("full", "auto"):
        return text
    STEPS(text)
    return text


unroll_choice.__name__ = "unroll"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=["vgg16", "resnet20"], choices=["vgg16", "resnet20"])
    parser.add_argument("--steps", nargs="+", type=STEPS, default=[4, 8, 16, 32, 64])
    parser.add_argument("--unrolls", nargs="+", type=unroll_choice, default=["full", "1", "auto"])
    parser.add_argument("--batch", type=Ints(1, 4096), default=16)
    parser.add_argument("--repeats", type=Ints(1, 1000), default=3)
    parser.add_argument("--out", type=NewFile(), default=Path("results/probes/scan_unroll"))
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before any measurement
        check_report(args.out, overwrite=args.overwrite)
    except RunError as error:
        parser.error(str(error))
    records = []
    for network in args.networks:
        model, variables, images = benchmark.jax_network(network, args.batch)
        for num_steps in args.steps:
            for choice in args.unrolls:
                unroll = {"full": num_steps, "auto": None}[choice] if choice in ("full", "auto") else int(choice)
                resolved = oj.scan_unroll(num_steps) if unroll is None else unroll
                record = {"network": network, "num_steps": num_steps, "unroll": choice, "resolved": resolved}
                record.update(measure(model, variables, images, num_steps, unroll, args.repeats))
                records.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "runs_s"}), flush=True)
    meta = {
        "backend": jax.default_backend(),
        "machine": f"{platform.processor() or platform.machine()}, {len(jax.devices())} device(s)",
        "batch": args.batch,
        "presim_steps": PRESIM_STEPS,
        "iterations": ITERATIONS,
        "jax": jax.__version__,
    }
    text = json.dumps({"meta": meta, "records": records}, indent=1) + "\n"
    header = (
        f"Backend {meta['backend']} ({meta['machine']}), jax {meta['jax']}, batch {args.batch}, "
        f"rho = {PRESIM_STEPS}, k = {ITERATIONS}.\n\n"
    )
    write_report(args.out, text, header + table(records), overwrite=args.overwrite)
    print(header + table(records))


if __name__ == "__main__":
    main()
