"""SNN simulation time against the scan unroll of each site's time loop.

    python experiments/probes/scan_unroll.py [--network resnet20] [--batch 32] [--steps 8]

Prints median seconds (5 calls after a warm-up) of the uncalibrated and the calibrated
(rho = 4, k = 1) simulation for unroll = full, 1, 2, 4, and T x the ANN forward.
"""

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmark  # noqa: E402

import offsetjax as oj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="resnet20", choices=["vgg16", "resnet20"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    model, variables, images = benchmark.jax_network(args.network, args.batch)
    ann = jax.jit(lambda v, x: model.apply(v, x))
    t_ann = args.steps * benchmark.timed(lambda: ann(variables, images).block_until_ready(), 5)["median"]
    print(f"T x ANN: {1000 * t_ann:.0f} ms")
    for unroll in (True, 1, 2, 4):
        for presim, iterations in ((0, 0), (4, 1)):
            snn = oj.spiking_model(
                model, num_steps=args.steps, presim_steps=presim, iterations=iterations, unroll=unroll
            )
            snn_variables = oj.convert_variables(snn, variables, images)
            seconds = benchmark.timed(lambda s=snn, v=snn_variables: oj.simulate(s, v, images).block_until_ready(), 5)
            label = "full" if unroll is True else unroll
            print(f"unroll {label}, rho {presim}, k {iterations}: {1000 * seconds['median']:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
