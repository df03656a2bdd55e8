"""XLA's CPU convolution against the same 3x3 'SAME' convolution as im2col or shifted matmuls.

    python -m experiments.probes.conv_paths

Prints milliseconds per call (mean of 3 after a warm-up) at VGG-16's feature-map shapes,
batch 32, and the largest difference between the results.
"""

import argparse
import time

import jax
import jax.numpy as jnp

from experiments import cli


def mean_seconds(fn, *args, repeats=3):
    fn(*args).block_until_ready()
    began = time.perf_counter()
    for _ in range(repeats):
        fn(*args).block_until_ready()
    return (time.perf_counter() - began) / repeats


def build_parser() -> argparse.ArgumentParser:
    return cli.ArgumentParser(description=__doc__.split("\n")[0])  # no options: prints its table


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    for batch, side, channels in [(32, 2, 512), (32, 4, 512), (32, 8, 256), (32, 16, 128), (32, 32, 64)]:
        x = jax.random.normal(jax.random.key(0), (batch, side, side, channels))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.01
        conv = jax.jit(
            lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )

        def padded(x):
            return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

        @jax.jit
        def im2col(x, k, side=side, channels=channels):
            p = padded(x)
            cols = jnp.concatenate([p[:, i : i + side, j : j + side] for i in range(3) for j in range(3)], -1)
            return cols @ k.reshape(9 * channels, channels)

        @jax.jit
        def shifted(x, k, side=side):
            p = padded(x)
            return sum(p[:, i : i + side, j : j + side] @ k[i, j] for i in range(3) for j in range(3))

        times = {
            name: 1000 * mean_seconds(f, x, kernel)
            for name, f in (("xla_conv", conv), ("im2col", im2col), ("shifted_matmuls", shifted))
        }
        error = float(jnp.abs(conv(x, kernel) - shifted(x, kernel)).max())
        print(
            f"batch {batch} {side}x{side}x{channels}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
            + f", max |difference| {error:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
