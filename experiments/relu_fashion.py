"""A plain ReLU CNN, trained with optax on Fashion-MNIST, converted by offsetjax.from_jax and by
SpikingJelly from the same weights.

    python -m experiments.relu_fashion --workdir results/fashion_mnist/relu_cnn [--epochs 3] [--seed 0]

The network is a plain JAX function of its weights (PyTorch's layout, so that SpikingJelly's
PyTorch model holds the very same arrays): conv 3x3 (32) - ReLU - 2x2 average pool - conv 3x3
(64) - ReLU - pool - dense 256 - ReLU - dense 10, trained with optax's SGD with momentum, no
QCFS. Weights are written to ``<workdir>/weights.npz`` after training (a run that finds them
evaluates them again instead of training). Then for each threshold mode (``max``, ``99.9%``,
measured on ``--calibration-images`` training images) offsetjax's SNN is evaluated at
T = 1..64 with no calibration, COS (rho = 4, k = 1), data_v0, data_bias (calibrated per T on the
same images) and SRP (tau = 4), and SpikingJelly's conversion (rate-coding recipe, v(0) = 0)
on the same weights. Accuracy on the first ``--test-limit`` test images, with total steps
(T + rho*k for COS, T + tau for SRP). Writes ``results.json``, ``results.md`` and
``predictions.npz`` (per ``MODE.METHOD``, the predicted class of every test image after each
step ``[64, N]``; :data:`NOT_RUN` at a T the row does not run).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import offsetjax as oj
from experiments import cli
from experiments.cli import COUNT, SEED, STEPS, Directory
from experiments.evaluation import PREDICTIONS, predictions_file
from experiments.results import command, progress_bar, write_output
from offsetjax.training import data

STEPS_REPORTED = (1, 2, 4, 8, 16, 32, 64)
PRESIM_STEPS, SRP_STEPS = 4, 4
MODES = ("max", "99.9%")
#: Fashion-MNIST's classes; in ``predictions.npz`` the class number :data:`NOT_RUN` (one past the
#: last) marks a T at which a row was not evaluated (data_v0 and data_bias run only the reported T).
NUM_CLASSES = 10
NOT_RUN = NUM_CLASSES
SHAPES = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "fc1.weight": (256, 64 * 7 * 7),
    "fc1.bias": (256,),
    "fc2.weight": (10, 256),
    "fc2.bias": (10,),
}


def cnn(params: dict, images: jax.Array) -> jax.Array:
    """Logits ``[B, 10]`` of images ``[B, 1, 28, 28]`` (NCHW)."""

    def conv(x, name):
        y = jax.lax.conv_general_dilated(
            x, params[f"{name}.weight"], (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y + params[f"{name}.bias"].reshape(1, -1, 1, 1)

    def pool(x):
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))

    x = pool(jax.nn.relu(conv(images, "conv1")))
    x = pool(jax.nn.relu(conv(x, "conv2")))
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["fc1.weight"].T + params["fc1.bias"][None])
    return x @ params["fc2.weight"].T + params["fc2.bias"][None]


def initial_params(seed: int) -> dict:
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    params = {}
    for key, (name, shape) in zip(keys, SHAPES.items()):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        params[name] = (
            jax.random.normal(key, shape) * np.float32(np.sqrt(2.0 / fan_in))
            if name.endswith("weight")
            else jnp.zeros(shape)
        )
    return params


def nchw(split) -> tuple[np.ndarray, np.ndarray]:
    images = data.normalize(split.images, "fashion_mnist")  # [N, 28, 28, 1], float32
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))), np.asarray(split.labels)


def train(params, images, labels, *, epochs: int, seed: int, log) -> dict:
    batch_size = 128
    steps = epochs * (len(images) // batch_size)
    optimizer = optax.chain(
        optax.add_decayed_weights(5e-4), optax.sgd(optax.cosine_decay_schedule(0.05, steps), momentum=0.9)
    )
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            return optax.softmax_cross_entropy_with_integer_labels(cnn(params, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        losses = []
        with progress_bar(total=len(images) // batch_size, desc=f"epoch {epoch + 1}/{epochs}", unit="batch") as bar:
            for start in range(0, len(order) - batch_size + 1, batch_size):
                batch = order[start : start + batch_size]
                params, opt_state, loss = step(params, opt_state, images[batch], labels[batch])
                losses.append(float(loss))
                bar.update(1)
        log.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
    return params


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy after each step, ``[T]``, from the predicted classes ``[T, B]``."""
    return (predictions == labels[None]).mean(axis=1)


def not_run(num_steps: int, count: int) -> np.ndarray:
    """A ``[T, N]`` predictions array before any T is run: :data:`NOT_RUN` everywhere."""
    return np.full((num_steps, count), NOT_RUN, np.int32)


def simulate_batched(snn, variables, images, batch_size=500) -> np.ndarray:
    run = jax.jit(lambda v, x: oj.simulate(snn, v, x))
    return np.concatenate(
        [np.asarray(run(variables, images[s : s + batch_size])) for s in range(0, len(images), batch_size)], axis=1
    )


def evaluate_offsetjax(model, variables, calibration, images, labels, bar) -> tuple[dict, dict[str, np.ndarray]]:
    """offsetjax's rows of one threshold mode, and each row's predictions ``[max T, N]``
    (:data:`NOT_RUN` at the T a data-level row does not run)."""
    rows, predictions = {}, {}
    top = max(STEPS_REPORTED)
    schedules = {"none": {}, "cos_k1": {"presim_steps": PRESIM_STEPS, "iterations": 1}, "srp": {"srp_steps": SRP_STEPS}}
    for name, schedule in schedules.items():
        snn = oj.spiking_model(model, num_steps=top, **schedule)
        predictions[name] = simulate_batched(snn, oj.convert_variables(snn, variables), images).argmax(-1)
        per_t = accuracy(predictions[name], labels)
        extra = oj.schedule(snn).latency_steps - top
        rows[name] = {str(t): {"accuracy": float(per_t[t - 1]), "total_steps": t + extra} for t in STEPS_REPORTED}
        bar.update(1)
    for name, calibrate in (("data_v0", oj.data_potential), ("data_bias", oj.data_bias)):
        rows[name], predictions[name] = {}, not_run(top, len(images))
        for t in STEPS_REPORTED:
            snn = oj.spiking_model(model, num_steps=t)
            predicted = simulate_batched(snn, calibrate(snn, variables, calibration), images).argmax(-1)
            predictions[name][t - 1] = predicted[t - 1]
            rows[name][str(t)] = {"accuracy": float(accuracy(predicted, labels)[t - 1]), "total_steps": t}
            bar.update(1)
    return rows, predictions


def evaluate_spikingjelly(params, mode: str, calibration, images, labels) -> tuple[dict | str, np.ndarray | None]:
    """SpikingJelly's rate-coding conversion of the same weights: its accuracy at each T (or why
    it did not run) and its predictions ``[max T, N]`` (None when it did not)."""
    try:
        import torch
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.ann2snn.converter import Converter
        from spikingjelly.activation_based.ann2snn.recipes.rate_coding import RateCodingRecipe
    except ImportError as error:
        return f"not run: {error}", None

    class TorchCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu1 = torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU()
            self.pool1, self.conv2 = torch.nn.AvgPool2d(2), torch.nn.Conv2d(32, 64, 3, padding=1)
            self.relu2, self.pool2, self.flatten = torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten()
            self.fc1, self.relu3, self.fc2 = torch.nn.Linear(64 * 7 * 7, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            return self.fc2(self.relu3(self.fc1(self.flatten(x))))

    net = TorchCNN().eval()
    net.load_state_dict({name: torch.from_numpy(np.asarray(value)) for name, value in params.items()})
    sj_mode = "Max" if mode == "max" else mode
    snn = Converter(RateCodingRecipe(dataloader=[torch.from_numpy(calibration)], mode=sj_mode)).convert(net).eval()
    top = max(STEPS_REPORTED)
    predictions = []
    with torch.no_grad():
        for start in range(0, len(images), 500):
            functional.reset_net(snn)
            x = torch.from_numpy(images[start : start + 500])
            outputs = np.stack([snn(x).numpy() for _ in range(top)])
            running = np.cumsum(outputs, axis=0) / np.arange(1, top + 1)[:, None, None]
            predictions.append(running.argmax(-1))
    predicted = np.concatenate(predictions, axis=1)
    per_t = accuracy(predicted, labels)
    return {str(t): {"accuracy": float(per_t[t - 1]), "total_steps": t} for t in STEPS_REPORTED}, predicted


def markdown(report: dict) -> str:
    lines = [
        f"# A ReLU CNN on Fashion-MNIST, converted ({report['num_test_images']} test images)",
        "",
        f"ANN (ReLU, trained with optax): {100 * report['ann_accuracy']:.2f} %. Cells: accuracy % (total steps).",
        "",
    ]
    header = "| threshold | method | " + " | ".join(f"T={t}" for t in STEPS_REPORTED) + " |"
    lines += [header, "|---|---|" + "---|" * len(STEPS_REPORTED)]
    for mode, rows in report["modes"].items():
        for method, row in rows.items():
            if isinstance(row, str):
                lines.append(f"| {mode} | {method} | {row} |")
                continue
            cells = [f"{100 * row[str(t)]['accuracy']:.2f} ({row[str(t)]['total_steps']})" for t in STEPS_REPORTED]
            lines.append(f"| {mode} | {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Directory(exists=False), required=True, help="the run's directory")
    parser.add_argument("--epochs", type=STEPS, default=3, help="training epochs")
    parser.add_argument("--seed", type=SEED, default=0, help="initialisation and data order")
    parser.add_argument("--test-limit", type=COUNT, default=10000, help="test images evaluated")
    parser.add_argument("--train-limit", type=COUNT, default=None, help="training images used (default: all)")
    parser.add_argument("--calibration-images", type=COUNT, default=512, help="training images the thresholds use")
    parser.add_argument("--idx-dir", type=Directory(exists=True), default=None, help="Fashion-MNIST IDX files")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    splits = data.load_idx(args.idx_dir)
    train_images, train_labels = nchw(splits["train"])
    train_images, train_labels = train_images[: args.train_limit], train_labels[: args.train_limit]
    test_images, test_labels = nchw(splits["test"])
    test_images, test_labels = test_images[: args.test_limit], test_labels[: args.test_limit]
    weights = args.workdir / "weights.npz"
    log: list = []
    began = time.perf_counter()
    if weights.exists():
        with np.load(weights) as stored:
            params = {name: jnp.asarray(stored[name]) for name in SHAPES}
    else:
        params = train(
            initial_params(args.seed), train_images, train_labels, epochs=args.epochs, seed=args.seed, log=log
        )
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(value) for name, value in params.items()})
        write_output(args.workdir, "weights.npz", buffer.getvalue(), overwrite=args.overwrite)
        write_output(
            args.workdir, "train_log.jsonl", "".join(json.dumps(e) + "\n" for e in log), overwrite=args.overwrite
        )
    train_seconds = time.perf_counter() - began
    calibration = train_images[
        np.random.default_rng(args.seed).permutation(len(train_images))[: args.calibration_images]
    ]
    ann = np.concatenate(
        [np.asarray(jax.jit(cnn)(params, test_images[s : s + 1000])) for s in range(0, len(test_images), 1000)]
    )
    report = {
        "dataset": "fashion_mnist",
        "network": "plain ReLU CNN (conv32-pool-conv64-pool-fc256-fc10), optax SGD, no QCFS",
        "num_test_images": len(test_images),
        "calibration_images": len(calibration),
        "ann_accuracy": float((ann.argmax(-1) == test_labels).mean()),
        "presim_steps": PRESIM_STEPS,
        "srp_steps": SRP_STEPS,
        "modes": {},
        "train_seconds": train_seconds,
    }
    predictions = {}  # "MODE.METHOD" -> [max T, N]
    with progress_bar(total=len(MODES) * (3 + 2 * len(STEPS_REPORTED)), desc="SNN", unit="run") as bar:
        for mode in MODES:
            model, variables = oj.from_jax(cnn, params, calibration, threshold=mode)
            rows, predicted = evaluate_offsetjax(model, variables, calibration, test_images, test_labels, bar)
            rows["spikingjelly"], predicted["spikingjelly"] = evaluate_spikingjelly(
                params, mode, calibration, test_images, test_labels
            )
            report["modes"][mode] = rows
            predictions.update({f"{mode}.{method}": p for method, p in predicted.items() if p is not None})
    report["wall_time_seconds"] = time.perf_counter() - began
    report["command"] = command(__spec__.name, argv)
    write_output(args.workdir, "results.json", json.dumps(report, indent=2), overwrite=args.overwrite)
    write_output(args.workdir, "results.md", markdown(report), overwrite=args.overwrite)
    write_output(args.workdir, PREDICTIONS, predictions_file(predictions, NOT_RUN + 1), overwrite=args.overwrite)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
