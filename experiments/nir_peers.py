"""Run offsetjax's NIR files in other simulators and compare them with offsetjax.simulate.

    python -m experiments.nir_peers --workdir results/digits/quickstart [--num-steps 4] [--num-images 64]

For the uncalibrated SNN (qcfs), the data-calibrated one (data_v0: per-neuron v(0)) and COS
(rho = the run's, k = 1): writes ``<workdir>/nir/peers_<method>.nir``, then loads the file in
each peer simulator that is installed (sinabs, norse, spyx), sets every IF node's initial
potential from :func:`offsetjax.interop.nir.initial_potentials` with that peer's loader below,
runs the first ``--num-images`` test images at batch size ``--batch-size`` for T steps, and
compares the peer's mean output per step with ``simulate``'s: the largest |difference|, the
share of images whose argmax agrees at T, and the accuracy of each. Writes
``<workdir>/nir_peers.json`` and ``nir_peers.md``. A peer that is not installed, or fails to
load or run the file, is a row saying so, with the error.

The loaders (``LOADERS``) are the recipes docs/interop.md gives; the slow tests run them too.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import traceback
from pathlib import Path

import jax
import numpy as np

import offsetjax as oj
from experiments.datasets import calibration_set
from experiments.results import command, record, run_id, write_output
from experiments.runs import USER_ERRORS, load_finished
from offsetjax.interop.nir import initial_potentials, to_nir
from offsetjax.training import data


def run_sinabs(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """sinabs (SynSense): IF nodes load as ``IAFSqueeze`` (reset by subtraction, fires at
    v >= theta, as offsetjax); made to fire one spike per step (``SingleSpike``), with no lower
    bound on v (sinabs' reader sets ``min_v_mem = -theta``) and v(0) from the file.

    Args: ``images`` ``[B, H, W, C]``. Returns the mean output per step, ``[T, B, classes]``."""
    import sinabs
    import sinabs.layers as sl
    import torch

    batch = images.shape[0]
    model = sinabs.from_nir(graph, batch_size=batch)
    potentials = initial_potentials(graph)
    for name, module in model.named_modules():
        if isinstance(module, sl.IAF):
            node = name.rsplit(".", 1)[-1]
            module.spike_fn = sinabs.activation.SingleSpike
            module.min_v_mem = None
            v0 = torch.as_tensor(potentials[node], dtype=torch.float32)
            module.v_mem = torch.nn.Parameter(v0.expand(batch, *v0.shape).clone(), requires_grad=False)
    x = torch.as_tensor(np.transpose(images, (0, 3, 1, 2)), dtype=torch.float32)
    x = x[:, None].expand(batch, num_steps, *x.shape[1:]).reshape(batch * num_steps, *x.shape[1:])
    with torch.no_grad():
        out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out = out.reshape(batch, num_steps, -1).transpose(0, 1).numpy().astype(np.float64)
    return np.cumsum(out, axis=0) / np.arange(1, num_steps + 1)[:, None, None]


def run_norse(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """norse: IF nodes load as ``IAFCell`` (reset to v_reset = 0, fires at v > theta: NIR's
    literal IF, not offsetjax's); v(0) from the file as each cell's first state."""
    import norse.torch as norse
    import torch
    from norse.torch.functional.iaf import IAFFeedForwardState

    batch = images.shape[0]
    model = norse.from_nir(graph)
    potentials = initial_potentials(graph)
    state = None
    x = torch.as_tensor(np.transpose(images, (0, 3, 1, 2)), dtype=torch.float32)
    outputs = []
    with torch.no_grad():
        for _ in range(num_steps):
            if state is None:
                _, state = model(torch.zeros_like(x))  # the state's structure, then v(0) set in it
                for node, v0 in potentials.items():
                    v = torch.as_tensor(v0, dtype=torch.float32).expand(batch, *v0.shape).clone()
                    state.state[node] = IAFFeedForwardState(v=v)
            out, state = model(x, state)
            outputs.append(out.numpy().astype(np.float64))
    out = np.stack(outputs)
    return np.cumsum(out, axis=0) / np.arange(1, num_steps + 1)[:, None, None]


def run_spyx(graph, images: np.ndarray, num_steps: int) -> np.ndarray:
    """spyx (JAX, nnx): the graph as a sequential network run over time (channels last); IF
    nodes as ``spyx.nn.IF`` with v(0) from the file."""
    import spyx.nir
    from flax import nnx

    x = np.broadcast_to(images[:, None], (images.shape[0], num_steps, *images.shape[1:])).astype(np.float32)
    model = spyx.nir.from_nir(graph, x, dt=1, rngs=nnx.Rngs(0))
    out, _ = model(x) if isinstance(model(x), tuple) else (model(x), None)
    out = np.asarray(out, np.float64)  # [B, T, classes]
    out = np.transpose(out, (1, 0, 2))
    return np.cumsum(out, axis=0) / np.arange(1, num_steps + 1)[:, None, None]


#: peer -> (its loader, the distribution whose version is reported).
LOADERS = {"sinabs": (run_sinabs, "sinabs"), "norse": (run_norse, "norse"), "spyx": (run_spyx, "spyx")}


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def compare(peer: np.ndarray, expected: np.ndarray, labels: np.ndarray) -> dict:
    """The peer's mean outputs ``[T, B, classes]`` against offsetjax's."""
    agree = peer[-1].argmax(-1) == expected[-1].argmax(-1)
    return {
        "max_abs_difference": float(np.max(np.abs(peer - expected))),
        "argmax_agreement": float(np.mean(agree)),
        "accuracy": float(np.mean(peer[-1].argmax(-1) == labels)),
        "reference_accuracy": float(np.mean(expected[-1].argmax(-1) == labels)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a finished run of an experiment")
    parser.add_argument("--num-steps", type=int, default=4, help="T")
    parser.add_argument("--num-images", type=int, default=64, help="test images compared")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size the peers run at")
    parser.add_argument("--peers", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    args = parser.parse_args(argv)
    import nir

    try:
        config, model, ann_variables, train_split, test_split = load_finished(args.workdir)
    except USER_ERRORS as error:
        parser.error(str(error))
    count = min(args.num_images, data.num_examples(test_split))
    images, labels = data.take(test_split, np.arange(count))  # as the evaluation takes them
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    image_shape = tuple(images.shape[1:])
    report = {
        "dataset": config.dataset,
        "arch": config.arch,
        "run": run_id(args.workdir),
        "num_steps": args.num_steps,
        "num_images": len(images),
        "batch_size": args.batch_size,
        "versions": {peer: version(distribution) for peer, (_, distribution) in LOADERS.items()},
        "methods": {},
    }
    (args.workdir / "nir").mkdir(exist_ok=True)
    methods = {"qcfs": (0, 0), "data_v0": (0, 0), "cos_k1": (config.presim_steps, 1)}
    for method, (presim, iterations) in methods.items():
        snn = oj.spiking_model(model, num_steps=args.num_steps, presim_steps=presim, iterations=iterations)
        variables = oj.convert_variables(snn, ann_variables)
        if method == "data_v0":
            variables = oj.data_potential(snn, ann_variables, calibration_set(config, train_split))
        path = args.workdir / "nir" / f"peers_{method}.nir"
        nir.write(path, to_nir(snn, variables, image_shape))
        record(args.workdir, path)
        expected = np.asarray(jax.jit(lambda x, s=snn, v=variables: oj.simulate(s, v, x))(images), np.float64)
        # what offsetjax's own network gives without calibration: what a peer can reach for COS
        plain = oj.spiking_model(model, num_steps=args.num_steps)
        uncalibrated = np.asarray(oj.simulate(plain, oj.convert_variables(plain, ann_variables), images), np.float64)
        rows = {}
        for peer in args.peers:
            run_peer, distribution = LOADERS[peer]
            if version(distribution) is None:
                rows[peer] = {"status": f"not installed (pip install {distribution})"}
                continue
            try:
                outputs = [
                    run_peer(nir.read(path), images[start : start + args.batch_size], args.num_steps)
                    for start in range(0, len(images), args.batch_size)
                ]
            except Exception as error:  # a peer's failure is a result here, reported with its message
                last = traceback.format_exception_only(error)[-1].strip()
                rows[peer] = {"status": f"failed: {last[:300]}"}
                continue
            peer_out = np.concatenate(outputs, axis=1)
            rows[peer] = {"status": "ran", **compare(peer_out, expected, labels)}
            if iterations:
                rows[peer]["vs_uncalibrated"] = compare(peer_out, uncalibrated, labels)
            print(method, peer, rows[peer], flush=True)
        report["methods"][method] = rows
    report["command"] = command(__spec__.name, argv)
    write_output(args.workdir, "nir_peers.json", json.dumps(report, indent=2))
    write_output(args.workdir, "nir_peers.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    """The peer table of one report."""
    lines = [
        f"NIR files of {report['dataset']} / {report['arch']} run by other simulators: T = {report['num_steps']}, "
        f"the first {report['num_images']} test images at batch size {report['batch_size']}, compared with "
        "`offsetjax.simulate` of the same network.",
        "",
        "| method | peer | runs | max abs. difference | argmax agreement | accuracy (peer / offsetjax) |",
        "|---|---|---|---|---|---|",
    ]
    for method, rows in report["methods"].items():
        for peer, row in rows.items():
            name = f"{peer} {report['versions'].get(peer) or ''}".strip()
            if row["status"] != "ran":
                lines.append(f"| {method} | {name} | {row['status']} | | | |")
                continue
            cells = (
                f"{row['max_abs_difference']:.2g}",
                f"{100 * row['argmax_agreement']:.1f} %",
                f"{100 * row['accuracy']:.1f} / {100 * row['reference_accuracy']:.1f} %",
            )
            lines.append(f"| {method} | {name} | yes | " + " | ".join(cells) + " |")
            if "vs_uncalibrated" in row:
                other = row["vs_uncalibrated"]
                lines.append(
                    f"| {method} (vs offsetjax uncalibrated) | {name} | yes | {other['max_abs_difference']:.2g} | "
                    f"{100 * other['argmax_agreement']:.1f} % | {100 * other['accuracy']:.1f} / "
                    f"{100 * other['reference_accuracy']:.1f} % |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
