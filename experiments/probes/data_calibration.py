"""What a data-level calibration costs against one simulation of its calibration set.

    python -m experiments.probes.data_calibration [--networks digits fashion_mnist] [--steps 4 8]
        [--images 256] [--label after] [--out results/probes/data_calibration]

For each network and T, two fresh processes (so that nothing is compiled or cached before):
one calls ``offsetjax.data_potential`` on ``--images`` training images, twice; the other
simulates the same images with the uncalibrated SNN of that T (``offsetjax.simulate``), twice.
Each records the first call's wall time, the XLA compilations it triggered (JAX's
``backend_compile`` events: every compiled program, eager operations included) and their
seconds, and the second call's wall time. The ratio compares the calibration's first call
with the simulation's (compile + one run): the cost of a simulation, not of compiling.

The networks are the quickstart's (``small_vgg`` on 8x8 digits) and the Fashion-MNIST
``small_vgg`` (28x28), with freshly initialised weights (seed 0): compile and run time do not
depend on the weights' values (the bisection always runs its fixed number of halvings).

``--label`` names the library measured; to measure another version, put it first on the path
(``PYTHONPATH=/path/to/checkout python -m experiments.probes.data_calibration --label before``).
Records with the same label are replaced in ``<out>.json``; ``<out>.md`` is the table of all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1)}


def _worker(network: str, num_steps: int, count: int, task: str) -> dict:
    import jax

    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **_: compiles.append(secs) if name == "/jax/core/compile/backend_compile_duration" else None
    )
    import jax.numpy as jnp

    import offsetjax as oj
    from offsetjax.training import data

    images = data.load_digits()["train"].images if network == "digits" else data.load_idx()["train"].images
    images = data.normalize(images[:count], network)
    model = oj.models.small_vgg(10, activation=oj.models.Activation(oj.QCFS, levels=4))
    variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPES[network])), train=False)
    snn = oj.spiking_model(model, num_steps=num_steps)
    if task == "data_potential":

        def call():
            return oj.data_potential(snn, variables, images)
    else:
        snn_variables = oj.convert_variables(snn, variables)

        def call():
            return oj.simulate(snn, snn_variables, images)

    walls = []
    for _ in range(2):
        before = len(compiles)
        began = time.perf_counter()
        jax.block_until_ready(call())
        walls.append(time.perf_counter() - began)
        if len(walls) == 1:
            first_compiles = compiles[before:]
    return {
        "library_dir": str(Path(oj.__file__).resolve().parent),  # the offsetjax measured (PYTHONPATH's)
        "wall_s": walls[0],
        "compilations": len(first_compiles),
        "compile_s": sum(first_compiles),
        "second_call_s": walls[1],
    }


def measure(network: str, num_steps: int, count: int) -> dict:
    """Both tasks, each in a fresh process."""
    record = {"network": network, "num_steps": num_steps, "images": count}
    for task in ("data_potential", "simulate"):
        worker = [sys.executable, __file__, "--worker", network, str(num_steps), str(count), task]
        output = subprocess.run(worker, check=True, capture_output=True, text=True).stdout
        record[task] = json.loads(output.strip().splitlines()[-1])
    record["ratio"] = record["data_potential"]["wall_s"] / record["simulate"]["wall_s"]
    return record


def _commit(directory: Path) -> str:
    """The git commit of the checkout holding ``directory`` (``+`` when it has uncommitted changes)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+" if git("status", "--porcelain", "--", ".") else "")


def table(records: list[dict]) -> str:
    lines = [
        "| library | network | T | images | data_potential: wall s, compilations, compile s, again s "
        "| simulate: wall s, compilations, compile s, again s | data_potential / simulate (first calls) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = [
            f"{r[t]['wall_s']:.2f}, {r[t]['compilations']}, {r[t]['compile_s']:.2f}, {r[t]['second_call_s']:.2f}"
            for t in ("data_potential", "simulate")
        ]
        lines.append(
            f"| {r['label']} | {r['network']} | {r['num_steps']} | {r['images']} | {cells[0]} | {cells[1]} "
            f"| {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from experiments import cli
    from experiments.cli import STEPS, Ints, Name, NewFile  # not in the workers: they import only offsetjax

    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", nargs="+", type=STEPS, default=[4, 8])
    parser.add_argument("--images", type=Ints(1, 60000), default=256, help="calibration images (training split)")
    parser.add_argument("--label", type=Name(), default="after", help="name of the library version measured")
    parser.add_argument(
        "--out", type=NewFile(), default=Path("results/probes/data_calibration"), help="output path without suffix"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    import jax

    from experiments.results import RunError, check_report, command, write_output

    out = Path(args.out)
    try:  # before any measurement
        check_report(out, overwrite=args.overwrite)
    except RunError as error:
        parser.error(str(error))
    path = out.with_suffix(".json")
    saved = json.loads(path.read_text()) if path.exists() else {"records": []}
    records = [r for r in saved["records"] if r["label"] != args.label]
    for network in args.networks:
        for num_steps in args.steps:
            record = {"label": args.label, **measure(network, num_steps, args.images)}
            print(json.dumps(record), flush=True)
            records.append(record)
    saved = {
        "records": records,
        "machines": {
            **saved.get("machines", {}),
            args.label: {
                "library": _commit(Path(records[-1]["simulate"].pop("library_dir"))),
                "command": ("PYTHONPATH=<that checkout> " if os.environ.get("PYTHONPATH") else "")
                + command(__spec__.name, argv),
                "backend": jax.default_backend(),
                "jax": jax.__version__,
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
            },
        },
    }
    for record in records:
        for task in ("data_potential", "simulate"):
            record[task].pop("library_dir", None)
    write_output(out.parent, path.name, json.dumps(saved, indent=2), overwrite=args.overwrite)
    machines = "; ".join(
        f"{label}: offsetjax {m['library']}, `{m['command']}`, {m['backend']} ({m['cpu']}, {m['cores']} cores), "
        f"jax {m['jax']}"
        for label, m in saved["machines"].items()
    )
    write_output(
        out.parent,
        out.name + ".md",
        overwrite=args.overwrite,
        text=f"{table(records)}\n\nFirst calls in fresh processes; 'again' is the second call in the same process. "
        f"{machines}.\n",
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        network, num_steps, count, task = sys.argv[2:6]
        print(json.dumps(_worker(network, int(num_steps), int(count), task)))
    else:
        main()
