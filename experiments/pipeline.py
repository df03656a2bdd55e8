"""Train -> convert -> calibrate -> report: the pipeline every experiment entry point runs.

An entry point defines an :class:`ExperimentConfig` and calls :func:`main`, which adds
command-line overrides for every field (``--epochs 2 --arch small_resnet``), and writes into
``--workdir`` (default ``results/NAME/``):

    config.json            the resolved configuration
    checkpoints/latest/    orbax checkpoint after every epoch (``--resume`` continues from it)
    checkpoints/best/      the epoch with the best held-out accuracy
    train_log.jsonl        one line per epoch
    results.json           ANN and SNN accuracies per T, offset statistics, wall times
    results.md             the same as tables
    *.png                  accuracy vs T / total steps, |psi| per layer, zero ratio and MSE vs k
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_markdown, write_plots  # noqa: E402

import offsetjax as oj  # noqa: E402
from offsetjax import (  # noqa: E402
    evaluate,
    parallel,
    training,  # noqa: E402
)
from offsetjax.training import checkpoint, data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Seconds between progress-bar refreshes: often on a terminal, every half minute in a log file.
PROGRESS_INTERVAL = 1.0 if sys.stderr.isatty() else 30.0


@dataclasses.dataclass
class ExperimentConfig:
    """Everything one run needs. Library functions receive these as keyword arguments."""

    name: str
    dataset: str  # digits | fashion_mnist | mnist | cifar10 | cifar100 | imagenet2012
    arch: str  # a key of offsetjax.models.ARCHITECTURES
    levels: int = 4  # QCFS quantization levels L
    compute_dtype: str = "float32"  # float32 | bfloat16: convolutions, batch norm and dense layers
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0
    augment_pad: int = 0  # random crop padding (0: no crop / flip)
    cutout: int = 0  # Cutout square size (0: none)
    autoaugment: bool = False  # AutoAugment's CIFAR-10 policy on the training images
    idx_dir: str = ""  # IDX directory (default: Debian's fashion-mnist)
    tfds_dir: str = ""  # TFDS data_dir
    train_limit: int = 0  # use only the first N training examples (0: all)
    test_limit: int = 0  # evaluate on the first N test examples (0: all)
    max_steps: int = 8  # T_max of the SNN evaluation
    presim_steps: int = 4  # rho
    iterations: tuple[int, ...] = (1, 2, 4)  # k of the calibrated rows
    # Rule (ii) for neurons that never stayed silent, one set of calibrated rows each: "fire" (the
    # authors' code; rows cos_kK) and/or "hold" (rows cos_kK_hold). docs/method.md section 5.
    saturated: tuple[str, ...] = ("fire",)
    eval_batch_size: int = 256
    checkpoint_every: int = 0  # also checkpoint every N training batches (0: at epoch ends only)
    eval_only: bool = False  # evaluate the finished run in --workdir again, without training
    workdir: str = ""
    resume: bool = False

    def resolved_workdir(self) -> Path:
        return Path(self.workdir) if self.workdir else ROOT / "results" / self.name


def parse_args(config: ExperimentConfig, argv: list[str] | None = None) -> ExperimentConfig:
    """Override any field of ``config`` from the command line."""
    parser = argparse.ArgumentParser(description=f"offsetjax experiment {config.name!r}")
    for field in dataclasses.fields(config):
        default = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=list(default))
        else:
            parser.add_argument(flag, type=type(default), default=default)
    values = vars(parser.parse_args(argv))
    values["iterations"] = tuple(values["iterations"])
    values["saturated"] = tuple(values["saturated"])
    for rule in values["saturated"]:
        if rule not in oj.offset.SATURATION_RULES:
            parser.error(f"--saturated takes {' or '.join(oj.offset.SATURATION_RULES)}, got {rule!r}")
    return dataclasses.replace(config, **values)


def load_splits(config: ExperimentConfig) -> tuple[data.Split | data.StreamingSplit, ...]:
    """Train split as stored (uint8 or [0, 1] floats; augmented and normalised per batch) and the
    normalised test split; ImageNet is streamed from TFDS and normalised as it is read."""
    limits = {"train": config.train_limit or None, "test": config.test_limit or None}
    if config.dataset == "imagenet2012":
        source = functools.partial(data.load_tfds, "imagenet2012", data_dir=config.tfds_dir or None)
        return (
            data.StreamingSplit(
                source("train"),
                preprocess=data.imagenet_train_preprocess,
                dataset=config.dataset,
                limit=limits["train"],
            ),
            data.StreamingSplit(
                source("validation"),
                preprocess=data.imagenet_eval_preprocess,
                dataset=config.dataset,
                limit=limits["test"],
            ),
        )
    if config.dataset == "digits":
        splits = data.load_digits(seed=config.seed)
    elif config.dataset in ("fashion_mnist", "mnist") and config.idx_dir != "tfds":
        splits = data.load_idx(config.idx_dir or None)
    else:
        splits = {
            split: data.source_to_split(
                data.load_tfds(config.dataset, split, data_dir=config.tfds_dir or None), limit=limits[split]
            )
            for split in ("train", "test")
        }
    train_split, test_split = (data.Split(s.images[: limits[n]], s.labels[: limits[n]]) for n, s in splits.items())
    return train_split, data.Split(data.normalize(test_split.images, config.dataset), test_split.labels)


def train_augment(config: ExperimentConfig):
    """Per-batch augmentation and normalisation of the training split (None for streamed data)."""
    if config.dataset == "imagenet2012":
        return None
    return data.train_transform(
        config.dataset, pad=config.augment_pad, cutout_size=config.cutout, autoaugment=config.autoaugment
    )


def build_model(config: ExperimentConfig, num_classes: int):
    if config.arch not in oj.models.ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(oj.models.ARCHITECTURES)}, got {config.arch!r}")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be float32 or bfloat16, got {config.compute_dtype!r}")
    return oj.models.ARCHITECTURES[config.arch](
        num_classes,
        activation=oj.models.Activation(oj.QCFS, levels=config.levels),
        dtype=jnp.bfloat16 if config.compute_dtype == "bfloat16" else None,
    )


def train_ann(config: ExperimentConfig, model, train_split: data.Split, test_split: data.Split, workdir: Path):
    """Train with :func:`offsetjax.training.fit`, a progress bar per epoch and a checkpoint after
    every epoch (and every ``checkpoint_every`` batches); returns the final state."""
    steps_per_epoch = data.num_batches(data.num_examples(train_split), config.batch_size)
    tx = training.sgd_cosine(
        learning_rate=config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        weight_decay=config.weight_decay,
    )
    state = training.create_train_state(model, tx, data.take(test_split, np.arange(2))[0], seed=config.seed)
    mesh = parallel.data_mesh()
    latest, best = workdir / "checkpoints" / "latest", workdir / "checkpoints" / "best"
    log_path = workdir / "train_log.jsonl"
    start_epoch, start_batch, best_accuracy = 0, 0, -1.0
    if config.resume:
        state, meta = checkpoint.restore(latest, state)
        # "epoch" counts completed epochs, "batch" the batches done of the next one.
        start_epoch, start_batch, best_accuracy = meta["epoch"], meta.get("batch", 0), meta["best_accuracy"]
        print(f"resumed from {latest} after epoch {start_epoch}, batch {start_batch}")
    elif log_path.exists():
        log_path.unlink()
    bars: dict[int, tqdm] = {}

    def after_batch(state, epoch, batch, metrics):
        if epoch not in bars:
            began = start_batch if epoch == start_epoch else 0
            bars[epoch] = tqdm(
                total=steps_per_epoch,
                initial=began,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                leave=False,
                mininterval=PROGRESS_INTERVAL,
            )
            bars[epoch].began = time.perf_counter()
        bar = bars[epoch]
        bar.update(1)
        if config.checkpoint_every and (batch + 1) % config.checkpoint_every == 0 and batch + 1 < steps_per_epoch:
            training.check_finite_loss(metrics, epoch, batch)
            checkpoint.save(latest, state, {"epoch": epoch, "batch": batch + 1, "best_accuracy": best_accuracy})
        if bar.n % 10 == 0:
            seen = (bar.n - bar.initial) * config.batch_size
            bar.set_postfix(
                loss=f"{float(metrics['loss']):.3f}",
                acc=f"{float(metrics['accuracy']):.3f}",
                img_s=f"{seen / (time.perf_counter() - bar.began):.0f}",
                refresh=False,
            )

    def after_epoch(state, epoch, row):
        nonlocal best_accuracy
        if epoch in bars:
            bars.pop(epoch).close()
        test_accuracy = evaluate.ann_accuracy(
            model, state.variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        )
        row = {**row, "test_accuracy": test_accuracy}
        best_accuracy = max(best_accuracy, test_accuracy)
        meta = {**row, "best_accuracy": best_accuracy}
        checkpoint.save(latest, state, meta)
        if test_accuracy >= best_accuracy:
            checkpoint.save(best, state, meta)
        with log_path.open("a") as log:
            log.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return {"test_accuracy": test_accuracy}

    state, _ = training.fit(
        model,
        train_split,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
        augment=train_augment(config),
        mesh=mesh,
        state=state,
        start_epoch=start_epoch,
        start_batch=start_batch,
        after_batch=after_batch,
        after_epoch=after_epoch,
    )
    # Report the final (last-epoch) network: choosing the best epoch by test accuracy would tune on the test set.
    return state


def methods(config: ExperimentConfig) -> dict[str, tuple[int, int, str]]:
    """Method name -> (presim_steps, iterations, saturated); ``qcfs`` is the uncalibrated baseline."""
    rows = {"qcfs": (0, 0, "fire")}
    for rule in config.saturated:
        suffix = "" if rule == "fire" else f"_{rule}"
        rows.update({f"cos_k{k}{suffix}": (config.presim_steps, k, rule) for k in config.iterations})
    return rows


def evaluate_all(config: ExperimentConfig, model, variables, test_split: data.Split) -> dict:
    """ANN accuracy, every method's accuracy at t = 1..T_max, and Table-3 statistics at T = L."""
    began = time.perf_counter()
    mesh = parallel.data_mesh()
    results = {
        "dataset": config.dataset,
        "arch": config.arch,
        "levels": config.levels,
        "num_test_examples": data.num_examples(test_split),
        "ann_accuracy": evaluate.ann_accuracy(
            model, variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        ),
        "snn": {},
        "offset": {},
        "offset_per_layer": {},
        "wall_time_seconds": {},
    }
    results["wall_time_seconds"]["ann"] = time.perf_counter() - began
    for name, (presim_steps, iterations, saturated) in methods(config).items():
        began = time.perf_counter()
        run = functools.partial(
            evaluate.evaluate_snn,
            model,
            variables,
            test_split,
            iterations=iterations,
            saturated=saturated,
            batch_size=config.eval_batch_size,
            mesh=mesh,
        )
        # Table-3 statistics are taken at T = L: from the same pass when T_max = L.
        same_pass = config.max_steps == config.levels
        with tqdm(
            total=data.num_examples(test_split),
            desc=f"SNN {name}",
            unit="img",
            leave=False,
            mininterval=PROGRESS_INTERVAL,
        ) as bar:
            evaluation = run(
                num_steps=config.max_steps, presim_steps=presim_steps, statistics=same_pass, progress=bar.update
            )
        accuracy = evaluation.accuracy
        results["wall_time_seconds"][name] = time.perf_counter() - began
        if same_pass:
            stats = evaluation.statistics
        else:
            stats = run(
                num_steps=config.levels, presim_steps=min(presim_steps, config.levels), statistics=True
            ).statistics
        results["snn"][name] = {
            "presim_steps": presim_steps,
            "iterations": iterations,
            "saturated": saturated if iterations else None,
            "accuracy": {str(t): float(accuracy[t - 1]) for t in range(1, config.max_steps + 1)},
            "total_steps": {str(t): t + presim_steps * iterations for t in range(1, config.max_steps + 1)},
        }
        results["offset"][name] = {
            "zero_ratio": stats["all"]["zero_ratio"],
            "mse": stats["all"]["mse"],
            "psi_histogram": stats["all"]["psi_histogram"],
        }
        results["offset_per_layer"][name] = stats["sites"]
        print(
            f"{name}: " + " ".join(f"T={t}:{accuracy[t - 1]:.4f}" for t in (1, 2, 4, 8) if t <= config.max_steps),
            f"zero_ratio={stats['all']['zero_ratio']:.4f}",
            flush=True,
        )
    return results


def restore_trained(config: ExperimentConfig, model, test_split, workdir: Path):
    """The finished training run in ``workdir`` and its training wall time (from train_log.jsonl)."""
    tx = training.sgd_cosine(learning_rate=config.learning_rate, total_steps=1, weight_decay=config.weight_decay)
    state = training.create_train_state(model, tx, data.take(test_split, np.arange(2))[0], seed=config.seed)
    state, meta = checkpoint.restore(workdir / "checkpoints" / "latest", state)
    if meta["epoch"] != config.epochs or meta.get("batch", 0):
        raise ValueError(
            f"--eval-only needs a finished run of {config.epochs} epochs in {workdir}, found epoch {meta['epoch']} "
            f"batch {meta.get('batch', 0)}; finish it with --resume"
        )
    log = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    return state, sum(row["seconds"] for row in log)


def run(config: ExperimentConfig) -> dict:
    workdir = config.resolved_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    began = time.perf_counter()
    train_split, test_split = load_splits(config)
    model = build_model(config, num_classes=data.NUM_CLASSES[config.dataset])
    if config.eval_only:
        state, train_seconds = restore_trained(config, model, test_split, workdir)
    else:
        state = train_ann(config, model, train_split, test_split, workdir)
        train_seconds = time.perf_counter() - began
    results = evaluate_all(config, model, state.variables, test_split)
    results["wall_time_seconds"]["train"] = train_seconds
    results["wall_time_seconds"]["total"] = time.perf_counter() - began
    results["command"] = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    tmp = workdir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, workdir / "results.json")
    (workdir / "results.md").write_text(write_markdown(results))
    write_plots(results, workdir)
    print(f"wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


def main(config: ExperimentConfig, argv: list[str] | None = None) -> dict:
    parallel.initialize_distributed()  # a no-op unless a multi-process launcher is present
    return run(parse_args(config, argv))
