"""Simulator benchmark: offsetjax side by side with PyTorch + SpikingJelly, and against T x ANN.

    python -m experiments.benchmark [--workdir results/benchmark] [--quick]
        [--networks vgg16 resnet20] [--batches 32 128] [--steps 1 4 8] [--repeats 3]

Per configuration (network, batch, T), with a warm-up call and ``--repeats`` timed calls each, each framework in its own process
(median, min, max in seconds):

1. the QCFS ANN forward in offsetjax;
2. the uncalibrated SNN, T steps; 3. the calibrated SNN, rho = 4 with k = 1 and k = 4;
4. PyTorch's ANN forward, and the same SNN in PyTorch with SpikingJelly's multi-step IF neuron
   (soft reset) and the same calibration written in PyTorch (when torch is installed:
   ``pip install -e '.[bench]'``).

Also the compiled peak temporary memory of the JAX SNN against the activations it must hold.
Writes ``benchmark.json`` (one record per configuration, raw timings and the ratios
``snn_over_t_ann``, ``calibration_overhead``, ``speedup_vs_spikingjelly``) and ``benchmark.md``.
Calibrated rows need rho <= T; at T < 4 they are reported as null.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import STEPS, Directory, Ints, NewFile
from experiments.results import ROOT, RunError, check_outputs, command, machine, write_output
from offsetjax.offset import NEVER_SILENT_POTENTIAL

PRESIM_STEPS = 4
NUM_CLASSES = 100
THRESHOLD = 1.0


def timed(fn, repeats: int) -> dict:
    """Warm up once, then time ``repeats`` calls; ``fn`` must block until its result is ready."""
    fn()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - began)
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "raw": seconds}


# ----------------------------------------------------------------------------- offsetjax


def jax_network(name: str, batch: int):
    model = oj.models.ARCHITECTURES[name](NUM_CLASSES)
    images = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), images)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, THRESHOLD) if path[-1].key == "threshold" else x, variables["params"]
    )
    return model, {**variables, "params": params}, images


def jax_timings(name: str, batch: int, steps: list[int], repeats: int) -> dict:
    model, variables, images = jax_network(name, batch)
    ann = jax.jit(lambda v, x: model.apply(v, x))
    out = {"ann": timed(lambda: ann(variables, images).block_until_ready(), repeats)}
    for num_steps in steps:
        rows = {"snn": (0, 0), "cos_k1": (PRESIM_STEPS, 1), "cos_k4": (PRESIM_STEPS, 4)}
        per_t = {}
        for label, (presim, iterations) in rows.items():
            if presim > num_steps:
                per_t[label] = None
                continue
            snn = oj.spiking_model(model, num_steps=num_steps, presim_steps=presim, iterations=iterations)
            snn_variables = oj.convert_variables(snn, variables, example_images=images)
            per_t[label] = timed(
                lambda snn=snn, snn_variables=snn_variables: oj.simulate(
                    snn, snn_variables, images
                ).block_until_ready(),
                repeats,
            )
            if label == "snn":
                per_t["memory"] = jax_memory(snn, snn_variables, images)
        out[num_steps] = per_t
    return out


def jax_memory(snn, variables, images) -> dict:
    """Compiled memory of one simulation against the largest site's currents and spikes."""
    lowered = jax.jit(lambda v, x: snn.apply(v, x[None])).lower(variables, images)
    analysis = lowered.compile().memory_analysis()
    # The neuron shape of every site (converted variables hold one scalar v(0) per site).
    sites = jax.tree.leaves(jax.eval_shape(snn.init, jax.random.key(0), images[None])["initial_potential"])
    largest = max(int(np.prod(v.shape)) for v in sites)
    num_steps = jax.eval_shape(lambda v, x: snn.apply(v, x[None]), variables, images).shape[0]
    return {
        "temp_bytes": int(getattr(analysis, "temp_size_in_bytes", -1)) if analysis is not None else None,
        # One site must hold its input currents and its output spikes, [T, B, neurons] each.
        "largest_site_bytes": 2 * 4 * num_steps * images.shape[0] * largest,
    }


# ----------------------------------------------------------------------------- PyTorch


def torch_timings(name: str, batch: int, steps: list[int], repeats: int) -> dict | None:
    try:
        import torch
        from spikingjelly.activation_based import neuron
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    nn = torch.nn

    class Site(nn.Module):
        """QCFS in ANN mode; in SNN mode a SpikingJelly multi-step IF node with calibration."""

        def __init__(self):
            super().__init__()
            self.theta, self.levels = THRESHOLD, 4
            self.num_steps, self.presim, self.iterations = 0, 0, 0
            self.node = neuron.IFNode(v_threshold=THRESHOLD, v_reset=None, step_mode="m")

        def forward(self, x):  # ANN: [B, ...]; SNN: [T, B, ...] or [1, B, ...]
            if not self.num_steps:
                return self.theta * torch.clamp(torch.floor(x * self.levels / self.theta + 0.5) / self.levels, 0, 1)
            x = x.expand(self.num_steps, *x.shape[1:])
            v0 = torch.full_like(x[0], self.theta / 2)
            if self.iterations:
                v0 = calibrate(x[: self.presim], self.theta, v0, self.iterations)
            self.node.reset()
            self.node.v = v0
            return self.node(x.contiguous()) * self.theta

    def calibrate(currents, theta, v0, iterations, eps=1e-3):
        shifted = v0
        for _ in range(iterations):
            v, count = shifted, torch.zeros_like(v0)
            min_fired, max_silent = torch.full_like(v0, float("inf")), torch.full_like(v0, -float("inf"))
            for current in currents:
                charged = v + current
                fired = charged >= theta
                v = torch.where(fired, charged - theta, charged)
                count = count + fired
                min_fired = torch.where(fired, torch.minimum(min_fired, v), min_fired)
                max_silent = torch.where(fired, max_silent, torch.maximum(max_silent, charged))
            psi = torch.floor((v - (shifted - v0)) / theta)
            # offsetjax's default rule, saturated="fire": a neuron that never stayed silent counts
            # its largest silent potential as NEVER_SILENT_POTENTIAL * theta, so it is lifted too
            never_silent = NEVER_SILENT_POTENTIAL * theta
            max_silent = torch.where(torch.isfinite(max_silent), max_silent, torch.full_like(max_silent, never_silent))
            remove, add = (psi < 0) & (count > 0), psi > 0
            down = torch.clamp(torch.where(remove, min_fired, 0) + eps * theta, min=theta)
            up = torch.clamp(theta + eps * theta - torch.where(add, max_silent, 0), min=theta)
            shifted = torch.where(remove, shifted - down, torch.where(add, shifted + up, shifted))
        return shifted

    class TimeFolded(nn.Module):
        """Apply a module to [T, B, ...] with time folded into the batch (ANN input passes through)."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            if x.dim() == 4:
                return self.module(x)
            return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def conv_bn(cin, cout, stride=1, kernel=3):
        return TimeFolded(
            nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))
        )

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.site_a, self.b = conv_bn(cin, cout, stride), Site(), conv_bn(cout, cout)
            self.shortcut = conv_bn(cin, cout, stride, 1) if stride != 1 or cin != cout else None
            self.site_out = Site()

        def forward(self, x):
            out = self.b(self.site_a(self.a(x)))
            return self.site_out(out + (self.shortcut(x) if self.shortcut is not None else x))

    def vgg16():
        layers, cin = [], 3
        for spec in oj.models.vgg.VGG16_FEATURES:
            if spec == "M":
                layers.append(TimeFolded(nn.AvgPool2d(2)))
            else:
                layers += [conv_bn(cin, spec), Site()]
                cin = spec
        layers += [
            TimeFolded(nn.Flatten()),
            nn.Linear(512, 4096),
            Site(),
            nn.Linear(4096, 4096),
            Site(),
            nn.Linear(4096, NUM_CLASSES),
        ]
        return nn.Sequential(*layers)

    def resnet20():
        layers, cin = [conv_bn(3, 16), Site()], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(Block(cin, width, 2 if stage and not block else 1))
                cin = width
        layers += [TimeFolded(nn.AdaptiveAvgPool2d(1)), TimeFolded(nn.Flatten()), nn.Linear(64, NUM_CLASSES)]
        return nn.Sequential(*layers)

    net = {"vgg16": vgg16, "resnet20": resnet20}[name]().eval()
    images = torch.randn(batch, 3, 32, 32)
    sites = [m for m in net.modules() if isinstance(m, Site)]

    def run(num_steps=0, presim=0, iterations=0):
        for site in sites:
            site.num_steps, site.presim, site.iterations = num_steps, presim, iterations
        with torch.inference_mode():
            return net(images if not num_steps else images[None]).mean(0) if num_steps else net(images)

    # Both sides time the same algorithm: this calibration gives offsetjax's v0 (neurons that
    # fire at every pre-simulation step included).
    currents = np.random.default_rng(0).uniform(-0.5, 2.5, (PRESIM_STEPS, 256)).astype(np.float32)
    for k in (1, 4):
        ours = oj.calibrate_initial_potential(
            currents, THRESHOLD, THRESHOLD / 2, presim_steps=PRESIM_STEPS, iterations=k
        )
        theirs = calibrate(torch.from_numpy(currents), THRESHOLD, torch.full((256,), THRESHOLD / 2), k)
        np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), rtol=0, atol=1e-5)

    out = {"ann": timed(run, repeats)}
    for num_steps in steps:
        rows = {"snn": (0, 0), "cos_k1": (PRESIM_STEPS, 1), "cos_k4": (PRESIM_STEPS, 4)}
        out[num_steps] = {
            label: None if presim > num_steps else timed(lambda t=num_steps, p=presim, k=k: run(t, p, k), repeats)
            for label, (presim, k) in rows.items()
        }
    return out


# ----------------------------------------------------------------------------- report


def ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return None
    return numerator["median"] / denominator["median"]


def records(name: str, batch: int, steps: list[int], jax_result: dict, torch_result: dict | None) -> list[dict]:
    rows = []
    for num_steps in steps:
        j = jax_result[str(num_steps)]
        t = torch_result[str(num_steps)] if torch_result else None
        t_ann = {"median": num_steps * jax_result["ann"]["median"]}
        rows.append(
            {
                "network": name,
                "batch": batch,
                "T": num_steps,
                "presim_steps": PRESIM_STEPS,
                "jax": {"ann": jax_result["ann"], **{k: v for k, v in j.items() if k != "memory"}},
                "torch": {"ann": torch_result["ann"], **t} if torch_result else None,
                "memory": j["memory"],
                "snn_over_t_ann": ratio(j["snn"], t_ann),
                "calibration_overhead": ratio(j["cos_k1"], j["snn"]),
                "speedup_vs_spikingjelly": ratio(t["cos_k1"], j["cos_k1"]) if t else None,
                "speedup_vs_spikingjelly_uncalibrated": ratio(t["snn"], j["snn"]) if t else None,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    def ms(timing):
        return "—" if timing is None else f"{1000 * timing['median']:.0f}"

    def r(value):
        return "—" if value is None else f"{value:.2f}"

    lines = [
        "| network | batch | T | JAX ANN | JAX SNN | JAX ρ4 k1 | JAX ρ4 k4 | torch ANN | SJ SNN | SJ ρ4 k1 | SJ ρ4 k4 "
        "| SNN / (T·ANN) | calib. overhead | speedup vs SJ (k1) | temp MiB / site MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        j, t = row["jax"], row["torch"] or {}
        memory = row["memory"]
        lines.append(
            f"| {row['network']} | {row['batch']} | {row['T']} | {ms(j['ann'])} | {ms(j['snn'])} | {ms(j['cos_k1'])} "
            f"| {ms(j['cos_k4'])} | {ms(t.get('ann'))} | {ms(t.get('snn'))} | {ms(t.get('cos_k1'))} "
            f"| {ms(t.get('cos_k4'))} | {r(row['snn_over_t_ann'])} | {r(row['calibration_overhead'])} "
            f"| {r(row['speedup_vs_spikingjelly'])} | {memory['temp_bytes'] / 2**20:.0f} / "
            f"{memory['largest_site_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n\nTimes are medians in milliseconds; SJ = PyTorch + SpikingJelly.\n"


def _torch_version() -> str | None:
    try:
        import spikingjelly
        import torch
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        spikingjelly_version = version("spikingjelly")
    except PackageNotFoundError:
        spikingjelly_version = getattr(spikingjelly, "__version__", "unknown")
    return f"torch {torch.__version__}, spikingjelly {spikingjelly_version}"


def run_side(side: str, args) -> dict:
    """Time one framework over every configuration; keys are "network/batch", then T as strings."""
    timings = jax_timings if side == "jax" else torch_timings
    out = {}
    for name in args.networks:
        for batch in args.batches:
            began = time.perf_counter()
            result = timings(name, batch, args.steps, args.repeats)
            out[f"{name}/{batch}"] = None if result is None else {str(k): v for k, v in result.items()}
            print(f"{side} {name} batch {batch}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return out


def run_isolated(side: str, args, argv: list[str]) -> dict:
    """Each framework in its own process, so neither's idle worker threads slow the other."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / f"{side}.json"
        subprocess.run(
            [sys.executable, "-m", __spec__.name, *argv, "--side", side, "--raw-out", str(raw)], check=True, cwd=ROOT
        )
        return json.loads(raw.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workdir",
        type=Directory(exists=False),
        default=None,
        help="output directory (default results/benchmark, results/benchmark_quick with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="ResNet-20, batch 8, T = 4, 2 repeats (CI-sized)")
    parser.add_argument("--networks", nargs="+", default=["vgg16", "resnet20"], choices=["vgg16", "resnet20"])
    parser.add_argument("--batches", nargs="+", type=Ints(1, 4096), default=[32, 128])
    parser.add_argument("--steps", nargs="+", type=STEPS, default=[1, 4, 8])
    parser.add_argument("--repeats", type=Ints(1, 1000), default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch + SpikingJelly side")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    parser.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--raw-out", type=NewFile(), help=argparse.SUPPRESS)
    return parser


#: The files a benchmark writes in its directory.
OUTPUTS = ("benchmark.json", "benchmark.md")


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.networks, args.batches, args.steps, args.repeats = ["resnet20"], [8], [4], 2
    if args.side:
        if args.raw_out is None:
            parser.error("--side needs --raw-out")
        Path(args.raw_out).write_text(json.dumps(run_side(args.side, args)))
        return None
    workdir = args.workdir or ROOT / "results" / ("benchmark_quick" if args.quick else "benchmark")
    try:  # before any measurement: never replace a file offsetjax did not write, or one edited since
        workdir.mkdir(parents=True, exist_ok=True)
        check_outputs(workdir, OUTPUTS, overwrite=args.overwrite)
    except (OSError, RunError) as error:
        parser.error(str(error))
    jax_results = run_isolated("jax", args, argv)
    torch_results = {} if args.no_torch else run_isolated("torch", args, argv)
    rows = []
    for key, jax_result in jax_results.items():
        name, batch = key.split("/")
        torch_result = torch_results.get(key)
        rows += records(name, int(batch), args.steps, jax_result, torch_result)
    report = {
        "command": command(__spec__.name, argv),
        "machine": {**machine(), "torch": _torch_version()},
        "repeats": args.repeats,
        "records": rows,
    }
    write_output(workdir, "benchmark.json", json.dumps(report, indent=2), overwrite=args.overwrite)
    write_output(workdir, "benchmark.md", markdown(rows), overwrite=args.overwrite)
    print(markdown(rows))
    return report


if __name__ == "__main__":
    main()
