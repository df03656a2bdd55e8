"""Train -> convert -> calibrate -> report: the pipeline every experiment entry point runs.

An entry point defines an :class:`ExperimentConfig` and calls :func:`main`, which adds
command-line overrides for every field (``--epochs 2 --arch small_resnet``), and writes into
``--workdir`` (default ``results/NAME/``):

    .lock                  held (flock) by the running process; its pid inside
    config.json            the resolved configuration
    checkpoints/latest/    verified orbax checkpoint after every epoch (``--resume`` continues from it)
    train_log.jsonl        one line per epoch
    results.json           ANN and SNN accuracies per T, offset statistics, wall times
    results.md             the same as tables
    *.png                  accuracy vs T / total steps, |psi| per layer, zero ratio and MSE vs k

A directory holding a run is refused without ``--resume``, ``--eval-only`` or ``--overwrite``
(``rundir.py``); user errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write_markdown, write_plots  # noqa: E402
from rundir import RunError, check_resumable, claim, read_config, record, write_output  # noqa: E402

import offsetjax as oj  # noqa: E402
from offsetjax import (  # noqa: E402
    evaluate,
    parallel,
    training,  # noqa: E402
)
from offsetjax.site import CALIBRATED_FOR  # noqa: E402
from offsetjax.training import checkpoint, data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Seconds between progress-bar refreshes: often on a terminal, every half minute in a log file.
PROGRESS_INTERVAL = 1.0 if sys.stderr.isatty() else 30.0


def _option(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet2012")


@dataclasses.dataclass
class ExperimentConfig:
    """Everything one run needs; every field is a command-line flag (``--max-steps 16``)."""

    name: str = _option("", "experiment name: the default --workdir is results/NAME")
    dataset: str = _option("", f"one of {', '.join(DATASETS)}")
    arch: str = _option("", "a network of offsetjax.models.ARCHITECTURES")
    levels: int = _option(4, "QCFS quantization levels L")
    compute_dtype: str = _option("float32", "float32 or bfloat16: convolutions, batch norm and dense layers")
    epochs: int = _option(10, "training epochs")
    batch_size: int = _option(128, "training batch size (global, over all devices and hosts)")
    learning_rate: float = _option(0.1, "peak SGD learning rate, cosine-decayed to 0")
    weight_decay: float = _option(5e-4, "L2 weight decay (thresholds included)")
    seed: int = _option(0, "seed of initialisation, shuffling and augmentation")
    augment_pad: int = _option(0, "random-crop padding in pixels, with horizontal flips (0: none)")
    cutout: int = _option(0, "Cutout square size (0: none)")
    autoaugment: bool = _option(False, "AutoAugment's CIFAR-10 policy on training images")
    idx_dir: str = _option("", "IDX directory (MNIST-style datasets; default: Debian's fashion-mnist; 'tfds': TFDS)")
    tfds_dir: str = _option("", "TFDS data_dir (CIFAR, ImageNet)")
    train_limit: int = _option(0, "train on the first N training examples (0: all)")
    test_limit: int = _option(0, "evaluate on the first N test examples (0: all)")
    max_steps: int = _option(8, "T_max: SNN accuracy is reported at every T = 1..T_max")
    presim_steps: int = _option(4, "rho: pre-simulation steps of calibration (<= T_max)")
    iterations: tuple[int, ...] = _option((1, 2, 4), "k of the calibrated rows (one row each)")
    saturated: tuple[str, ...] = _option(
        ("fire",),
        "rule (ii) for never-silent neurons: fire (authors' code, rows cos_kK) and/or hold (rows cos_kK_hold)",
    )
    methods: tuple[str, ...] = _option(
        ("qcfs", "cos", "data_v0", "data_bias", "warm_cos", "srp"),
        "method families to evaluate (docs/method.md section 8), or all; qcfs is always evaluated",
    )
    calibration_images: int = _option(256, "training images data_v0, data_bias and warm_cos calibrate on")
    calibration_solver: str = _option("bisect", "data_v0 / data_bias solver: bisect or linear (Li et al.'s one step)")
    warm_presim_steps: tuple[int, ...] = _option((1, 2), "rho of the warm_cos rows (k = 1, from data_v0)")
    data_max_steps: int = _option(8, "largest T of data_v0, data_bias, warm_cos (one calibration and run per T)")
    srp_steps: int = _option(4, "tau of SRP's pre-simulation")
    eval_batch_size: int = _option(256, "evaluation batch size (rounded up to a multiple of the devices)")
    checkpoint_every: int = _option(0, "also checkpoint every N training batches (0: at epoch ends only)")
    eval_only: bool = _option(False, "evaluate the finished run in --workdir again, without training")
    workdir: str = _option("", "run directory (default results/NAME)")
    resume: bool = _option(False, "continue the unfinished run in --workdir from its latest checkpoint")
    overwrite: bool = _option(False, "replace the run already in --workdir")

    def resolved_workdir(self) -> Path:
        return Path(self.workdir) if self.workdir else ROOT / "results" / self.name


#: Fields that change the trained network: --resume and --eval-only refuse to change them.
TRAINING_FIELDS = (
    "dataset",
    "arch",
    "levels",
    "compute_dtype",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "seed",
    "augment_pad",
    "cutout",
    "autoaugment",
    "train_limit",
)
#: Flags that apply only to some datasets: an entry point for another dataset hides them.
DATASET_FLAGS = {
    "idx_dir": ("fashion_mnist", "mnist"),
    "tfds_dir": ("cifar10", "cifar100", "imagenet2012", "mnist", "fashion_mnist"),
    "autoaugment": ("cifar10", "cifar100"),
    "cutout": ("cifar10", "cifar100"),
}


#: Options that only some method families read: given on the command line without one of them
#: selected, they would change nothing, so they are refused; unselected, they are not validated.
METHOD_OPTIONS = {
    "iterations": ("cos",),
    "saturated": ("cos",),
    "calibration_images": ("data_v0", "data_bias", "warm_cos"),
    "calibration_solver": ("data_v0", "data_bias", "warm_cos"),
    "data_max_steps": ("data_v0", "data_bias", "warm_cos"),
    "warm_presim_steps": ("warm_cos",),
    "srp_steps": ("srp",),
}


def _used(config: ExperimentConfig, option: str) -> bool:
    """Whether a selected method family reads ``option`` (every option not in METHOD_OPTIONS is read)."""
    return option not in METHOD_OPTIONS or bool(set(METHOD_OPTIONS[option]) & set(config.methods))


def parse_args(config: ExperimentConfig, argv: list[str] | None = None) -> ExperimentConfig:
    """Override any field of ``config`` from the command line (``--help`` lists them with their
    defaults: the entry point's values)."""
    parser = argparse.ArgumentParser(
        description=f"offsetjax experiment {config.name!r}: train a QCFS ANN, convert, calibrate, report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # a prefix of a flag is an error, not silently that flag
    )
    for field in dataclasses.fields(config):
        if config.dataset not in DATASET_FLAGS.get(field.name, (config.dataset,)):
            continue
        default = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=list(default), help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)
    values = vars(parser.parse_args(argv))
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    if "methods" in values:  # "all" is recorded as the families it stands for
        expanded = (METHOD_FAMILIES if name == "all" else (name,) for name in values["methods"])
        values["methods"] = tuple(dict.fromkeys(family for names in expanded for family in names))
    config = dataclasses.replace(config, **values)
    given = {token.split("=")[0] for token in (sys.argv[1:] if argv is None else argv) if token.startswith("--")}
    for option, families in METHOD_OPTIONS.items():
        flag = "--" + option.replace("_", "-")
        if flag in given and not _used(config, option):
            parser.error(
                f"{flag} applies to --methods {' / '.join(families)}, none of which this run includes "
                f"(methods: {' '.join(config.methods)}): add one to --methods or drop {flag}"
            )
    try:
        validate(config)
    except RunError as error:
        parser.error(str(error))
    return config


def validate(config: ExperimentConfig) -> None:
    """Every configuration error that can be found before loading data or training."""
    problems = []
    if config.dataset not in DATASETS:
        problems.append(f"dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}")
    if config.arch not in oj.models.ARCHITECTURES:
        problems.append(f"arch must be one of {', '.join(sorted(oj.models.ARCHITECTURES))}, got {config.arch!r}")
    if config.compute_dtype not in ("float32", "bfloat16"):
        problems.append(f"compute-dtype must be float32 or bfloat16, got {config.compute_dtype!r}")
    for name in ("levels", "epochs", "batch_size", "max_steps", "eval_batch_size"):
        if getattr(config, name) < 1:
            problems.append(f"{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("train_limit", "test_limit", "augment_pad", "cutout", "checkpoint_every"):
        if getattr(config, name) < 0:
            problems.append(f"{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if not 1 <= config.presim_steps <= config.max_steps:
        problems.append(f"presim-steps must be in [1, max-steps = {config.max_steps}], got {config.presim_steps}")
    if _used(config, "iterations") and (not config.iterations or min(config.iterations) < 1):
        problems.append(f"iterations must be >= 1 each, got {list(config.iterations)}")
    for rule in config.saturated if _used(config, "saturated") else ():
        if rule not in oj.offset.SATURATION_RULES:
            problems.append(f"saturated takes {' or '.join(oj.offset.SATURATION_RULES)}, got {rule!r}")
    for family in config.methods:
        if family not in METHOD_FAMILIES:
            problems.append(f"methods takes {', '.join(METHOD_FAMILIES)} (or all of them: all), got {family!r}")
    if _used(config, "calibration_images") and config.calibration_images < 1:
        problems.append(f"calibration-images must be >= 1, got {config.calibration_images}")
    if _used(config, "calibration_solver") and config.calibration_solver not in oj.data_calibration.SOLVERS:
        problems.append(
            f"calibration-solver takes {' or '.join(oj.data_calibration.SOLVERS)}, got {config.calibration_solver!r}"
        )
    if _used(config, "warm_presim_steps") and (
        not config.warm_presim_steps or not all(1 <= r <= config.max_steps for r in config.warm_presim_steps)
    ):
        problems.append(
            f"warm-presim-steps must be in [1, max-steps = {config.max_steps}] each, got {list(config.warm_presim_steps)}"
        )
    if _used(config, "data_max_steps") and config.data_max_steps < 1:
        problems.append(f"data-max-steps must be >= 1, got {config.data_max_steps}")
    if _used(config, "srp_steps") and not 1 <= config.srp_steps <= config.max_steps:
        problems.append(f"srp-steps must be in [1, max-steps = {config.max_steps}], got {config.srp_steps}")
    if not 0 < config.learning_rate < math.inf:
        problems.append(f"learning-rate must be finite and > 0, got {config.learning_rate}")
    if not 0 <= config.weight_decay < math.inf:
        problems.append(f"weight-decay must be finite and >= 0, got {config.weight_decay}")
    if sum((config.resume, config.eval_only, config.overwrite)) > 1:
        problems.append("--resume, --eval-only and --overwrite exclude each other")
    if problems:
        raise RunError("; ".join(problems))


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


def check_data(config: ExperimentConfig, train_split, test_split) -> None:
    """The errors that need the data's sizes, found before anything is written."""
    problems = []
    train_count, test_count = data.num_examples(train_split), data.num_examples(test_split)
    if not config.eval_only and train_count < config.batch_size:
        problems.append(
            f"batch-size {config.batch_size} is larger than the {train_count} training images (--train-limit "
            f"{config.train_limit}): training drops partial batches, so no step would run"
        )
    if test_count < 1:
        problems.append(f"the test split is empty (--test-limit {config.test_limit})")
    if problems:
        raise RunError("; ".join(problems))


def train_augment(config: ExperimentConfig):
    """Per-batch augmentation and normalisation of the training split (None for streamed data)."""
    if config.dataset == "imagenet2012":
        return None
    return data.train_transform(
        config.dataset, pad=config.augment_pad, cutout_size=config.cutout, autoaugment=config.autoaugment
    )


def build_model(config: ExperimentConfig, num_classes: int):
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
    state = training.create_train_state(model, tx, data.take(test_split, np.arange(1))[0], seed=config.seed)
    mesh = parallel.data_mesh()
    latest = workdir / "checkpoints" / "latest"
    log_path = workdir / "train_log.jsonl"
    trained_as = {name: getattr(config, name) for name in TRAINING_FIELDS}  # travels in every checkpoint
    start_epoch, start_batch, carried_seconds = 0, 0, 0.0
    if config.resume:
        if not latest.exists():
            raise RunError(
                f"--resume: no checkpoint in {latest}: the run stopped before its first checkpoint; "
                "start it again with --overwrite (or --checkpoint-every N to save within epochs)"
            )
        check_trained_as(config, latest)
        if jax.process_index() == 0:
            read_train_log(log_path, repair=True)
        state, meta = checkpoint.restore(latest, state)
        # "epoch" counts completed epochs, "batch" the batches done of the next one.
        start_epoch, start_batch = meta["epoch"], meta.get("batch", 0)
        carried_seconds = float(meta.get("seconds_in_epoch", 0.0)) if start_batch else 0.0
        print(f"resumed from {latest} after epoch {start_epoch}, batch {start_batch}")
    elif log_path.exists() and jax.process_index() == 0:
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
                leave=not sys.stderr.isatty(),  # in a log file, the final line stays
                mininterval=PROGRESS_INTERVAL,
            )
            bars[epoch].began = time.perf_counter()
        bar = bars[epoch]
        bar.update(1)
        if config.checkpoint_every and (batch + 1) % config.checkpoint_every == 0 and batch + 1 < steps_per_epoch:
            training.check_finite_loss(metrics, epoch, batch)
            # the epoch's seconds so far, those of a resumed epoch's earlier session included
            seconds = time.perf_counter() - clock["epoch_began"] + (carried_seconds if epoch == start_epoch else 0.0)
            meta = {"epoch": epoch, "batch": batch + 1, "seconds_in_epoch": seconds, "training_config": trained_as}
            checkpoint.save(latest, state, meta)
        if bar.n % 10 == 0:
            seen = (bar.n - bar.initial) * config.batch_size
            bar.set_postfix(
                loss=f"{float(parallel.local_value(metrics['loss'])):.3f}",
                acc=f"{float(parallel.local_value(metrics['accuracy'])):.3f}",
                img_s=f"{seen / (time.perf_counter() - bar.began):.0f}",
                refresh=False,
            )

    def after_epoch(state, epoch, row):
        if epoch in bars:
            bars.pop(epoch).close()
        test_accuracy = evaluate.ann_accuracy(
            model, state.variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        )
        row = {**row, "test_accuracy": test_accuracy}
        if epoch == start_epoch and start_batch:  # the epoch's time before the resume counts too
            row = {**row, "seconds": row["seconds"] + carried_seconds, "resumed_at_batch": start_batch}
        checkpoint.save(latest, state, {**row, "training_config": trained_as})
        if jax.process_index() == 0:
            with log_path.open("a") as log:
                log.write(json.dumps(row) + "\n")
            record(workdir, log_path)
        print(json.dumps(row), flush=True)
        clock["epoch_began"] = time.perf_counter()
        return {"test_accuracy": test_accuracy}

    clock = {"epoch_began": time.perf_counter()}

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
    # Report the final (last-epoch) network. There is no "best" checkpoint: choosing an epoch by
    # test accuracy would tune on the test set, and the per-epoch test accuracy is only logged.
    return state


METHOD_FAMILIES = ("qcfs", "cos", "data_v0", "data_bias", "warm_cos", "srp")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of results: how the SNN is calibrated and at which T it is evaluated.

    ``calibration`` names a data-level correction computed once per T on training images
    (``"potential"``: :func:`offsetjax.data_potential`, ``"bias"``: :func:`offsetjax.data_bias`),
    so the row is evaluated at every T = 1..``max_steps`` separately; without one, a single run
    of ``max_steps`` steps gives every T.
    """

    family: str
    max_steps: int
    presim_steps: int = 0
    iterations: int = 0
    saturated: str = "fire"
    srp_steps: int = 0
    calibration: str | None = None

    @property
    def extra_steps(self) -> int:
        """Steps each sample spends before its T steps: rho * k (COS), tau (SRP)."""
        return self.presim_steps * self.iterations + self.srp_steps


def methods(config: ExperimentConfig) -> dict[str, Method]:
    """Row name -> :class:`Method`. ``qcfs`` is the uncalibrated baseline, run to the largest
    total budget of the equal-budget table, ``max_steps + presim_steps``."""
    budget = config.max_steps + config.presim_steps
    per_t = min(config.max_steps, config.data_max_steps)  # data-level rows: one calibration per T
    rows = {"qcfs": Method("qcfs", budget)}
    families = set(config.methods)
    if "cos" in families:
        for rule in config.saturated:
            suffix = "" if rule == "fire" else f"_{rule}"
            rows.update(
                {
                    f"cos_k{k}{suffix}": Method("cos", config.max_steps, config.presim_steps, k, rule)
                    for k in config.iterations
                }
            )
    if "data_v0" in families:
        rows["data_v0"] = Method("data_v0", per_t, calibration="potential")
    if "data_bias" in families:
        rows["data_bias"] = Method("data_bias", per_t, calibration="bias")
    if "warm_cos" in families:
        rows.update(
            {
                f"warm_cos_r{rho}": Method("warm_cos", per_t, rho, 1, calibration="potential")
                for rho in config.warm_presim_steps
            }
        )
    if "srp" in families:
        rows["srp"] = Method("srp", config.max_steps, srp_steps=config.srp_steps)
    return rows


def calibration_set(config: ExperimentConfig, train_split) -> np.ndarray:
    """``calibration_images`` training images, drawn without replacement with the run's seed and
    normalised as the test images are (no augmentation). Never test images."""
    count = data.num_examples(train_split)
    indices = np.sort(
        np.random.default_rng(config.seed).choice(count, min(config.calibration_images, count), replace=False)
    )
    images, _ = data.take(train_split, indices)
    return images if isinstance(train_split, data.StreamingSplit) else data.normalize(images, config.dataset)


CALIBRATIONS = {"potential": oj.data_potential, "bias": oj.data_bias}


def evaluate_all(config: ExperimentConfig, model, variables, train_split, test_split) -> dict:
    """ANN accuracy, every method's accuracy at each T, and Table-3 statistics at T = L."""
    began = time.perf_counter()
    mesh = parallel.data_mesh()
    count = data.num_examples(test_split)
    results = {
        "dataset": config.dataset,
        "arch": config.arch,
        "levels": config.levels,
        "num_test_examples": count,
        "ann_accuracy": evaluate.ann_accuracy(
            model, variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        ),
        "snn": {},
        "offset": {},
        "offset_per_layer": {},
        "operations": {},  # per image: spikes, synops, energy (J) per T; offsetjax.operations
        "wall_time_seconds": {},
    }
    results["wall_time_seconds"]["ann"] = time.perf_counter() - began
    rows = methods(config)
    images = None
    if any(method.calibration for method in rows.values()):
        images = calibration_set(config, train_split)
    calibrated: dict[tuple[str, int], dict] = {}  # (calibration, T) -> SNN variables, shared by rows

    def calibration(method: Method, num_steps: int) -> dict:
        """The method's data-level calibration for T = ``num_steps`` (made once, shared by rows)."""
        key = (method.calibration, num_steps)
        if key not in calibrated:
            calibrate = CALIBRATIONS[method.calibration]
            calibrated[key] = calibrate(
                oj.spiking_model(model, num_steps=num_steps),
                variables,
                images,
                solver=config.calibration_solver,
                mesh=mesh,
            )
        return calibrated[key]

    for name, method in rows.items():
        began = time.perf_counter()

        def run(num_steps: int, method: Method = method, **options):
            # COS needs rho <= T: at T < rho the network runs rho steps and is read at t = T (the
            # steps after T change nothing before it); a data-level calibration made for T is then
            # run in that longer network on purpose, so its record of T is dropped.
            snn = oj.spiking_model(
                model,
                num_steps=max(num_steps, method.presim_steps),
                presim_steps=method.presim_steps,
                iterations=method.iterations,
                saturated=method.saturated,
                srp_steps=method.srp_steps,
            )
            if method.calibration is None:
                snn_variables = oj.convert_variables(snn, variables)
            else:
                snn_variables = calibration(method, num_steps)
                if num_steps < method.presim_steps:
                    snn_variables = {k: v for k, v in snn_variables.items() if k != CALIBRATED_FOR}
            return evaluate.evaluate_snn(
                snn, snn_variables, test_split, batch_size=config.eval_batch_size, mesh=mesh, **options
            )

        # One run gives every T, unless the calibration depends on T: then one run per T.
        step_runs = list(range(1, method.max_steps + 1)) if method.calibration else [method.max_steps]
        per_step, stats = {}, None
        with tqdm(
            total=count * len(step_runs),
            desc=f"SNN {name}",
            unit="img",
            leave=not sys.stderr.isatty(),  # in a log file, the final line stays
            mininterval=PROGRESS_INTERVAL,
        ) as bar:
            for num_steps in step_runs:
                # Table-3 statistics are taken at T = L: from the same pass when it runs L steps.
                at_levels = num_steps == config.levels
                evaluation = run(num_steps, statistics=at_levels, operations=True, progress=bar.update)
                stats = evaluation.statistics if at_levels else stats
                for t in range(1, num_steps + 1) if not method.calibration else [num_steps]:
                    per_step[t] = (evaluation.accuracy[t - 1], oj.operations.per_image_at(evaluation.operations, t))
        if stats is None:
            stats = run(config.levels, statistics=True).statistics
        results["wall_time_seconds"][name] = time.perf_counter() - began
        steps = sorted(per_step)
        results["snn"][name] = {
            "family": method.family,
            "presim_steps": method.presim_steps + method.srp_steps,
            "iterations": method.iterations or int(method.srp_steps > 0),
            "saturated": method.saturated if method.iterations else None,
            "calibration_images": 0 if images is None or not method.calibration else len(images),
            "accuracy": {str(t): float(per_step[t][0]) for t in steps},
            "total_steps": {str(t): t + method.extra_steps for t in steps},
        }
        results["offset"][name] = {
            "zero_ratio": stats["all"]["zero_ratio"],
            "mse": stats["all"]["mse"],
            "psi_histogram": stats["all"]["psi_histogram"],
        }
        results["offset_per_layer"][name] = stats["sites"]
        first_ops = per_step[steps[0]][1]
        results["operations"][name] = {
            "input_macs": first_ops["input_macs"],
            "dense_macs": first_ops["dense_macs"],
            **{
                key: {str(t): per_step[t][1][key] for t in steps}
                for key in ("spikes", "synops", "presim_spikes", "presim_synops", "energy_j", "presim_energy_share")
            },
        }
        results["ann_energy_j"] = first_ops["ann_energy_j"]
        accuracy = results["snn"][name]["accuracy"]
        print(
            f"{name}: " + " ".join(f"T={t}:{accuracy[str(t)]:.4f}" for t in (1, 2, 4, 8) if str(t) in accuracy),
            f"zero_ratio={stats['all']['zero_ratio']:.4f}",
            flush=True,
        )
    return results


def restore_trained(config: ExperimentConfig, model, test_split, workdir: Path):
    """The state of the finished training run in ``workdir``."""
    tx = training.sgd_cosine(learning_rate=config.learning_rate, total_steps=1, weight_decay=config.weight_decay)
    state = training.create_train_state(model, tx, data.take(test_split, np.arange(1))[0], seed=config.seed)
    check_trained_as(config, workdir / "checkpoints" / "latest")
    state, meta = checkpoint.restore(workdir / "checkpoints" / "latest", state)
    if meta["epoch"] != config.epochs or meta.get("batch", 0):
        raise RunError(
            f"--eval-only needs a finished run of {config.epochs} epochs in {workdir}, found epoch {meta['epoch']} "
            f"batch {meta.get('batch', 0)}; finish it with --resume"
        )
    return state


def check_trained_as(config: ExperimentConfig, latest: Path) -> None:
    """Refuse to resume or evaluate the checkpoint ``latest`` under other training fields than it
    was trained with (its metadata carries them, so a lost or edited config.json cannot relabel
    it). Read before the state is restored, so a different network is named, not a shape error."""
    try:
        stored = json.loads((latest / checkpoint.META).read_text()).get("training_config")
    except (OSError, ValueError, AttributeError):
        return  # missing or corrupt: checkpoint.restore names it
    if stored is not None:
        check_resumable(stored, dataclasses.asdict(config), TRAINING_FIELDS, source=f"{latest} (its checkpoint)")


def read_train_log(path: Path, *, repair: bool = False) -> list[dict]:
    """The rows of ``train_log.jsonl``. A last line cut short by a crash is dropped (and, with
    ``repair``, removed from the file so that a resumed run appends after whole lines); a broken
    line before it is a :class:`RunError` naming it."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise RunError(f"{path} line {number} is not a JSON row: {line[:60]!r}") from None
            if repair:
                write_output(path.parent, path.name, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def load_finished(workdir: Path):
    """A finished run, as scripts that study it need it: ``(config, model, variables, train_split,
    test_split)``, the configuration read from ``workdir/config.json``. A directory without a
    run is a :class:`RunError` naming it."""
    if not (Path(workdir) / "config.json").is_file():
        raise RunError(f"--workdir {workdir} holds no run of offsetjax's experiments (no config.json)")
    saved = json.loads((Path(workdir) / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    config = ExperimentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    config = dataclasses.replace(config, workdir=str(workdir))
    train_split, test_split = load_splits(config)
    model = build_model(config, data.NUM_CLASSES[config.dataset])
    state = restore_trained(config, model, test_split, Path(workdir))
    return config, model, state.variables, train_split, test_split


def run(config: ExperimentConfig) -> dict:
    """One run in ``config.resolved_workdir()``: see the module docstring and docs/usage.md, "Runs and
    checkpoints", for what it refuses, locks and writes when."""
    validate(config)
    workdir = config.resolved_workdir()
    primary = jax.process_index() == 0
    lock = claim(workdir, resume=config.resume, eval_only=config.eval_only, overwrite=config.overwrite, primary=primary)
    try:
        return _run_locked(config, workdir, primary)
    finally:
        if lock is not None:
            lock.close()


def _run_locked(config: ExperimentConfig, workdir: Path, primary: bool) -> dict:
    stored = read_config(workdir)
    if (config.resume or config.eval_only) and stored is not None:
        check_resumable(stored, dataclasses.asdict(config), TRAINING_FIELDS)
    began = time.perf_counter()
    train_split, test_split = load_splits(config)
    check_data(config, train_split, test_split)
    model = build_model(config, num_classes=data.NUM_CLASSES[config.dataset])
    config_text = json.dumps(dataclasses.asdict(config), indent=2)
    if config.eval_only:
        state = restore_trained(config, model, test_split, workdir)
    else:
        if primary:
            write_output(workdir, "config.json", config_text)
        state = train_ann(config, model, train_split, test_split, workdir)
    # every epoch's logged seconds, those of earlier sessions of a resumed run included
    train_seconds = sum(row["seconds"] for row in read_train_log(workdir / "train_log.jsonl"))
    results = evaluate_all(config, model, state.variables, train_split, test_split)
    results["wall_time_seconds"]["train"] = train_seconds
    results["wall_time_seconds"]["total"] = time.perf_counter() - began
    results["command"] = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    if primary:  # only after the evaluation succeeded, each file whole or not at all
        write_output(workdir, "results.json", json.dumps(results, indent=2))
        write_output(workdir, "results.md", write_markdown(results))
        record(workdir, *write_plots(results, workdir))
        if config.eval_only:
            write_output(workdir, "config.json", config_text)
        print(f"wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


#: Errors of the user's making: one line on stderr and exit status 2 (others keep their traceback).
USER_ERRORS = (RunError, checkpoint.CheckpointError, FileNotFoundError)


def main(config: ExperimentConfig, argv: list[str] | None = None) -> dict:
    parallel.initialize_distributed()  # a no-op unless a multi-process launcher is present
    config = parse_args(config, argv)
    try:
        return run(config)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
