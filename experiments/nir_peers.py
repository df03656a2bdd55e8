"""Run offsetjax's NIR files in other simulators and compare them with offsetjax.simulate.

    python -m experiments.nir_peers --workdir results/digits/quickstart [--num-steps 4 32] [--num-images 64]

For each T, the uncalibrated SNN (qcfs), the data-calibrated one (data_v0: per-neuron v(0)) and
COS (rho = the run's, k = 1): writes ``<workdir>/nir/peers_<method>_T<T>.nir``, then loads it in
each peer simulator that is installed (sinabs, norse, spyx), sets every IF node's initial
potential from :func:`offsetjax.interop.nir.initial_potentials` with that peer's loader below,
runs the first ``--num-images`` test images at batch size ``--batch-size`` for T steps, and
compares the peer's mean output per step with ``simulate``'s: the share of images whose outputs
all agree to float32 rounding (the same spikes), the largest |difference|, the share of images
whose argmax agrees at T, and the accuracy of each. Writes
``<workdir>/nir_peers.json`` and ``nir_peers.md``. A peer that is not installed, or fails to
load or run the file, is a row saying so, with the error.

The loaders (``LOADERS``) are the recipes docs/interop.md gives; the slow tests run them too.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import tempfile
import traceback
from pathlib import Path

import jax
import numpy as np

import offsetjax as oj
from experiments import cli
from experiments.cli import COUNT, STEPS, Directory
from experiments.config import load_config
from experiments.datasets import calibration_set
from experiments.results import command, studying, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax.interop.nir import initial_potentials, to_nir
from offsetjax.simulation import running_mean
from offsetjax.training import data


def run_sinabs(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """sinabs (SynSense): IF nodes load as ``IAFSqueeze`` (reset by subtraction, fires at
    v >= theta, as offsetjax's); set here to fire at most one spike per step
    (``SingleSpike``), with no lower bound on v (sinabs' reader sets ``min_v_mem = -theta``),
    and v(0) from the file.

    Args: ``images`` ``[B, H, W, C]``. Returns the mean output per step, ``[T, B, classes]``."""
    import torch

    batch = images.shape[0]
    model = sinabs_model(graph, batch)
    x = torch.as_tensor(np.array(np.transpose(images, (0, 3, 1, 2)), np.float32))
    x = x[:, None].expand(batch, num_steps, *x.shape[1:]).reshape(batch * num_steps, *x.shape[1:])
    with torch.no_grad():  # sinabs' squeezed layers take [B * T, ...], sample-major
        out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    return running_mean(np.asarray(out.reshape(batch, num_steps, -1).transpose(0, 1).numpy(), np.float64))


def sinabs_model(graph, batch: int):
    """The sinabs network :func:`run_sinabs` runs, for ``batch`` images: its squeezed layers take
    ``[batch * T, C, H, W]``, sample-major."""
    import sinabs
    import sinabs.layers as sl
    import torch

    model = _in_topological_order(sinabs.from_nir(_writable(graph), batch_size=batch))
    potentials = initial_potentials(graph)
    for name, module in model.named_modules():
        if isinstance(module, sl.IAF):
            v0 = torch.as_tensor(potentials[name.rsplit(".", 1)[-1]], dtype=torch.float32)
            module.spike_fn = sinabs.activation.SingleSpike
            module.min_v_mem = None
            module.register_buffer("v_mem", v0.expand(batch, *v0.shape).clone())
    return model


def run_norse(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """norse: IF nodes load as ``IAFCell`` (reset to v_reset = 0, fires at v > theta: NIR's
    literal IF, not offsetjax's); v(0) from the file as each cell's first state."""
    import norse.torch as norse
    import torch
    from norse.torch.functional.iaf import IAFFeedForwardState

    batch = images.shape[0]
    model = _in_topological_order(norse.from_nir(_writable(graph)))
    x = torch.as_tensor(np.array(np.transpose(images, (0, 3, 1, 2)), np.float32))
    outputs = []
    with torch.no_grad():
        _, state = model(torch.zeros_like(x))  # a state of the graph's structure, then v(0) set in it
        for node, v0 in initial_potentials(graph).items():
            state.state[node] = (
                IAFFeedForwardState(v=torch.as_tensor(v0, dtype=torch.float32).expand(batch, *v0.shape)),
            )
        for _ in range(num_steps):
            out, state = model(x, state)
            outputs.append(out.numpy())
    return running_mean(np.stack(outputs).astype(np.float64))


def _writable(graph):
    """A copy of the graph whose arrays are writable (nir.read's are not; torch warns on them)."""
    return copy.deepcopy(graph)


def _in_topological_order(executor):
    """nirtorch's ``GraphExecutor`` (sinabs' and norse's reader) runs nodes depth first from the
    input; in a residual block that runs the join before its second branch has been computed
    (it then reads that branch's value from the previous step). Reordered so that every node
    runs after its sources."""
    pending = list(executor.execution_order)
    order: list = []
    while pending:
        ready = next(
            node
            for node in pending
            if all(source in order for source in executor.graph.find_source_nodes_of(node) if source in pending + order)
        )
        order.append(ready)
        pending.remove(ready)
    executor.execution_order = order
    return executor


def run_spyx(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """spyx (JAX, nnx): the graph as a sequential, channels-last network. Two adaptations:
    spyx flattens (H, W, C), so the dense layer after the flatten gets its columns in that
    order; and spyx's IF emits the spike of the potential *before* this step's input (fires at
    v > theta, subtracts theta), one step later than offsetjax's per IF layer, so the network
    runs T + L steps (L = IF layers) and the last T outputs are compared. v(0) from the file."""

    graph = _channels_last_flatten(graph)
    with jax.numpy_rank_promotion("allow"):  # spyx's neurons rely on NumPy's rank promotion
        return _run_spyx(graph, images, num_steps)


def _run_spyx(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    import jax.numpy as jnp
    import spyx.nir
    import spyx.nn
    from flax import nnx

    if_nodes = _if_order(graph)
    layers = len(if_nodes)
    steps = num_steps + layers
    x = np.broadcast_to(images[None], (steps, *images.shape)).astype(np.float32)  # [T + L, B, H, W, C]
    model, _ = spyx.nir.from_nir(graph, x[:1], dt=1, rngs=nnx.Rngs(0))
    potentials = iter(initial_potentials(graph)[name] for name in if_nodes)
    state = [
        jnp.broadcast_to(jnp.asarray(_channels_last(next(potentials))), s.shape) if isinstance(layer, spyx.nn.IF) else s
        for layer, s in zip(model.layers, model.initial_state(images.shape[0]))
    ]
    outputs = []
    for frame in x:
        out, state = model(jnp.asarray(frame), state)
        outputs.append(np.asarray(out))
    return running_mean(np.stack(outputs)[layers:].astype(np.float64))


def _is_if(node) -> bool:
    return type(node).__name__ == "IF"


def _if_order(graph) -> list[str]:
    """The IF nodes from input to output (the graphs spyx runs are chains)."""
    following = dict(graph.edges)
    order, name = [], "input"
    while name in following:
        name = following[name]
        order += [name] if _is_if(graph.nodes[name]) else []
    return order


def _channels_last(v0: np.ndarray) -> np.ndarray:
    return np.transpose(v0, (1, 2, 0)) if v0.ndim == 3 else v0


def _channels_last_flatten(graph):
    """The graph with each dense layer after a Flatten taking (H, W, C)-ordered columns."""
    graph = copy.deepcopy(graph)
    for source, target in graph.edges:
        node = graph.nodes[source]
        if type(node).__name__ == "Flatten":
            channels, height, width = (int(n) for n in np.asarray(node.input_type["input"]))
            dense = graph.nodes[target]
            columns = np.asarray(dense.weight).reshape(-1, channels, height, width)
            dense.weight = columns.transpose(0, 2, 3, 1).reshape(columns.shape[0], -1)
    return graph


#: peer -> (its loader, the distribution whose version is reported).
LOADERS = {"sinabs": (run_sinabs, "sinabs"), "norse": (run_norse, "norse"), "spyx": (run_spyx, "spyx")}


#: Outputs this close (float32 rounding of the same spikes; one spike moves an output by ~0.1).
IDENTICAL = 1e-4


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def compare(peer: np.ndarray, expected: np.ndarray, labels: np.ndarray) -> dict:
    """The peer's mean outputs ``[T, B, classes]`` against offsetjax's."""
    agree = peer[-1].argmax(-1) == expected[-1].argmax(-1)
    per_image = np.max(np.abs(peer - expected), axis=(0, 2))
    return {
        "max_abs_difference": float(np.max(per_image)),
        # every output at every step within float32 rounding: the same spikes everywhere
        "identical_images": float(np.mean(per_image <= IDENTICAL)),
        "argmax_agreement": float(np.mean(agree)),
        "accuracy": float(np.mean(peer[-1].argmax(-1) == labels)),
        "reference_accuracy": float(np.mean(expected[-1].argmax(-1) == labels)),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Directory(exists=True), required=True, help="a finished run of an experiment")
    parser.add_argument("--num-steps", type=STEPS, nargs="+", default=[4, 32], help="the Ts compared")
    parser.add_argument("--num-images", type=COUNT, default=64, help="test images compared")
    parser.add_argument("--batch-size", type=COUNT, default=16, help="batch size the peers run at")
    parser.add_argument("--peers", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


#: The rows compared: name -> (uses the run's rho, k).
METHODS = {"qcfs": False, "data_v0": False, "cos_k1": True}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    outputs = [f"nir/peers_{method}_T{t}.nir" for t in args.num_steps for method in METHODS]
    outputs += ["nir_peers.json", "nir_peers.md"]
    try:
        with studying(args.workdir, outputs, overwrite=args.overwrite) as identity:
            presim_steps = load_config(args.workdir).presim_steps
            if min(args.num_steps) < presim_steps:
                parser.error(f"--num-steps {min(args.num_steps)} is below the run's presim-steps {presim_steps} (COS)")
            report = compare_peers(args, identity)
            report["command"] = command(__spec__.name, argv)
            write_output(args.workdir, "nir_peers.json", json.dumps(report, indent=2), overwrite=args.overwrite)
            write_output(args.workdir, "nir_peers.md", markdown(report), overwrite=args.overwrite)
    except USER_ERRORS as error:
        parser.error(str(error))
    return report


def compare_peers(args, identity: str) -> dict:
    """Every method's file at every T run by every peer (the files written as they are made)."""
    import nir

    config, model, ann_variables, train_split, test_split = load_finished(args.workdir)
    count = min(args.num_images, data.num_examples(test_split))
    images, labels = data.take(test_split, np.arange(count))  # as the evaluation takes them
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    image_shape = tuple(images.shape[1:])
    report = {
        "dataset": config.dataset,
        "arch": config.arch,
        "run": identity,
        "num_images": len(images),
        "batch_size": args.batch_size,
        "versions": {peer: version(distribution) for peer, (_, distribution) in LOADERS.items()},
        "steps": {},
    }
    (args.workdir / "nir").mkdir(exist_ok=True)
    for num_steps in args.num_steps:
        plain = oj.spiking_model(model, num_steps=num_steps)
        # offsetjax's own network without calibration: what a peer can reach from a COS file
        uncalibrated = np.asarray(oj.simulate(plain, oj.convert_variables(plain, ann_variables), images), np.float64)
        report["steps"][str(num_steps)] = by_method = {}
        for method, calibrated in METHODS.items():
            presim, iterations = (config.presim_steps, 1) if calibrated else (0, 0)
            snn = oj.spiking_model(model, num_steps=num_steps, presim_steps=presim, iterations=iterations)
            variables = oj.convert_variables(snn, ann_variables)
            if method == "data_v0":
                variables = oj.data_potential(snn, ann_variables, calibration_set(config, train_split))
            with tempfile.TemporaryDirectory() as scratch:
                nir.write(Path(scratch) / "graph.nir", to_nir(snn, variables, image_shape))
                content = (Path(scratch) / "graph.nir").read_bytes()
            path = write_output(args.workdir, f"nir/peers_{method}_T{num_steps}.nir", content, overwrite=args.overwrite)
            expected = np.asarray(oj.simulate(snn, variables, images), np.float64)
            by_method[method] = rows = {}
            for peer in args.peers:
                rows[peer] = run_peer(peer, path, images, labels, num_steps, args.batch_size, expected)
                if iterations and "max_abs_difference" in rows[peer]:
                    rows[peer]["vs_uncalibrated"] = compare(rows[peer].pop("outputs"), uncalibrated, labels)
                rows[peer].pop("outputs", None)
                print(f"T={num_steps}", method, peer, rows[peer], flush=True)
    return report


def run_peer(peer: str, path: Path, images, labels, num_steps: int, batch_size: int, expected) -> dict:
    """One peer on one file: its comparison with ``expected``, or why it did not run."""
    import nir

    run, distribution = LOADERS[peer]
    if version(distribution) is None:
        return {"status": f"not installed (pip install {distribution})"}
    try:
        outputs = np.concatenate(
            [
                run(nir.read(path), images[start : start + batch_size], num_steps)
                for start in range(0, len(images), batch_size)
            ],
            axis=1,
        )
    except Exception as error:  # a peer's failure is a result here, reported with its message
        return {"status": "failed: " + traceback.format_exception_only(error)[-1].strip()[:300]}
    return {"status": "ran", **compare(outputs, expected, labels), "outputs": outputs}


def markdown(report: dict) -> str:
    """The peer table of one report."""
    lines = [
        f"NIR files of {report['dataset']} / {report['arch']} run by other simulators: the first "
        f"{report['num_images']} test images at batch size {report['batch_size']}, each peer's mean output over "
        "T steps compared with `offsetjax.simulate` of the same network.",
        "",
        "| T | method | peer | runs | identical outputs | max abs. difference | argmax agreement | "
        "accuracy (peer / offsetjax) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for num_steps, methods in report["steps"].items():
        for method, rows in methods.items():
            for peer, row in rows.items():
                name = f"{peer} {report['versions'].get(peer) or ''}".strip()
                if row["status"] != "ran":
                    lines.append(f"| {num_steps} | {method} | {name} | {row['status']} | | | | |")
                    continue
                for label, cells in ((method, row), (f"{method}, vs uncalibrated", row.get("vs_uncalibrated"))):
                    if cells is None:
                        continue
                    lines.append(
                        f"| {num_steps} | {label} | {name} | yes | {100 * cells['identical_images']:.1f} % | "
                        f"{cells['max_abs_difference']:.2g} | "
                        f"{100 * cells['argmax_agreement']:.1f} % | {100 * cells['accuracy']:.1f} / "
                        f"{100 * cells['reference_accuracy']:.1f} % |"
                    )
    return "\n".join(lines) + f"\n\nReproduce: `{report['command']}`\n"


if __name__ == "__main__":
    main()
