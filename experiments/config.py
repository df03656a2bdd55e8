"""An experiment's configuration: :class:`ExperimentConfig`, its command line and its checks.

Every field is a flag (``--max-steps 16``, ``--no-autoaugment``); an entry point's values are
the defaults its ``--help`` shows. Errors found here are :class:`~experiments.results.RunError`
(one line, exit status 2) and are found before data is loaded or anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import offsetjax as oj
from experiments import cli
from experiments.cli import COUNT, SEED, STEPS, Choice, Floats, Ints, Name, PathText
from experiments.methods import METHOD_FAMILIES
from experiments.results import ROOT, RunError


def _option(default, help: str, domain=None):
    """A field and its flag: ``domain`` (an :mod:`experiments.cli` type) parses the flag's value."""
    return dataclasses.field(default=default, metadata={"help": help, "domain": domain})


DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet2012")


@dataclasses.dataclass
class ExperimentConfig:
    """Everything one run needs; every field is a command-line flag (``--max-steps 16``)."""

    name: str = _option("", "experiment name: the default --workdir is results/NAME", Name())
    dataset: str = _option("", f"one of {', '.join(DATASETS)}", Choice(DATASETS))
    arch: str = _option("", "a network of offsetjax.models.ARCHITECTURES", Choice(sorted(oj.models.ARCHITECTURES)))
    levels: int = _option(4, "QCFS quantization levels L", Ints(1, 2**16))
    compute_dtype: str = _option(
        "float32", "float32 or bfloat16: convolutions, batch norm and dense layers", Choice(("float32", "bfloat16"))
    )
    epochs: int = _option(10, "training epochs", Ints(1, 10**5))
    batch_size: int = _option(128, "training batch size (global, over all devices and hosts)", Ints(1, 2**20))
    learning_rate: float = _option(
        0.1, "peak SGD learning rate, cosine-decayed to 0", Floats(0.0, 100.0, open_below=True)
    )
    weight_decay: float = _option(5e-4, "L2 weight decay (thresholds included)", Floats(0.0, 1.0))
    seed: int = _option(0, "seed of initialisation, shuffling and augmentation", SEED)
    augment_pad: int = _option(0, "random-crop padding in pixels, with horizontal flips (0: none)", Ints(0, 1024))
    cutout: int = _option(0, "Cutout square size (0: none)", Ints(0, 4096))
    autoaugment: bool = _option(False, "AutoAugment's CIFAR-10 policy on training images")
    idx_dir: str = _option(
        "", "IDX directory (MNIST-style datasets; default: Debian's fashion-mnist; 'tfds': TFDS)", PathText()
    )
    tfds_dir: str = _option("", "TFDS data_dir (CIFAR, ImageNet)", PathText())
    train_limit: int = _option(0, "train on the first N training examples (0: all)", Ints(0, 10**9))
    test_limit: int = _option(0, "evaluate on the first N test examples (0: all)", Ints(0, 10**9))
    max_steps: int = _option(8, "T_max: SNN accuracy is reported at every T = 1..T_max", STEPS)
    presim_steps: int = _option(4, "rho: pre-simulation steps of calibration (<= T_max)", STEPS)
    iterations: tuple[int, ...] = _option((1, 2, 4), "k of the calibrated rows (one row each)", Ints(1, 64))
    saturated: tuple[str, ...] = _option(
        ("fire",),
        "rule (ii) for never-silent neurons: fire (authors' code, rows cos_kK) and/or hold (rows cos_kK_hold)",
        Choice(oj.offset.SATURATION_RULES),
    )
    methods: tuple[str, ...] = _option(
        ("qcfs", "cos", "data_v0", "data_bias", "warm_cos", "srp"),
        "method families to evaluate (docs/method.md section 8), or all; qcfs is always evaluated",
        Choice((*METHOD_FAMILIES, "all")),
    )
    calibration_images: int = _option(256, "training images data_v0, data_bias and warm_cos calibrate on", COUNT)
    calibration_solver: str = _option(
        "bisect",
        "data_v0 / data_bias solver: bisect or linear (Li et al.'s one step)",
        Choice(oj.data_calibration.SOLVERS),
    )
    warm_presim_steps: tuple[int, ...] = _option((1, 2), "rho of the warm_cos rows (k = 1, from data_v0)", STEPS)
    data_max_steps: int = _option(8, "largest T of data_v0, data_bias, warm_cos (one calibration and run per T)", STEPS)
    srp_steps: int = _option(4, "tau of SRP's pre-simulation", STEPS)
    eval_batch_size: int = _option(
        256, "evaluation batch size (rounded up to a multiple of the devices)", Ints(1, 2**20)
    )
    checkpoint_every: int = _option(
        0, "also checkpoint every N training batches (0: at epoch ends only)", Ints(0, 10**9)
    )
    eval_only: bool = _option(False, "evaluate the finished run in --workdir again, without training")
    workdir: str = _option("", "run directory (default results/NAME)", PathText())
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


def build_parser(config: ExperimentConfig) -> argparse.ArgumentParser:
    """The command line of an entry point whose defaults are ``config``: one flag per field,
    each parsed by its field's domain."""
    parser = cli.ArgumentParser(
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
        domain = field.metadata.get("domain") or type(default[0] if isinstance(default, tuple) else default)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=domain, nargs="+", default=list(default), help=help_text)
        else:
            parser.add_argument(flag, type=domain, default=default, help=help_text)
    return parser


def parse_args(config: ExperimentConfig, argv: list[str] | None = None) -> ExperimentConfig:
    """Override any field of ``config`` from the command line (``--help`` lists them with their
    defaults: the entry point's values)."""
    parser = build_parser(config)
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
    for field in dataclasses.fields(config):  # a value of the wrong kind (set in code) is named first
        default, value = field.default, getattr(config, field.name)
        kind = tuple if isinstance(default, tuple) else type(default)
        kinds = (int, float) if kind is float else kind
        if (
            not isinstance(value, kinds)
            or (kind is tuple and not value)
            or (kind is not bool and isinstance(value, bool))
        ):
            problems.append(
                f"{field.name.replace('_', '-')} must be {'a non-empty tuple' if kind is tuple else kind.__name__}, got {value!r}"
            )
    if problems:
        raise RunError("; ".join(problems))
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
    if config.seed < 0:
        problems.append(f"seed must be >= 0, got {config.seed}")
    if config.name and not all(c.isalnum() or c in "_-." for c in config.name) or config.name.startswith("."):
        problems.append(f"name must be a plain name (it names results/NAME), got {config.name!r}")
    if sum((config.resume, config.eval_only, config.overwrite)) > 1:
        problems.append("--resume, --eval-only and --overwrite exclude each other")
    if problems:
        raise RunError("; ".join(problems))


def check_resumable(stored: dict, new: dict, training_fields: tuple[str, ...], source: str = "config.json") -> None:
    """Refuse a resumed or re-evaluated run whose training configuration differs from the stored
    one (read from ``source``)."""
    changed = [
        f"{name} {stored.get(name)!r} -> {new[name]!r}"
        for name in training_fields
        if name in stored and _normal(stored[name]) != _normal(new[name])
    ]
    if changed:
        raise RunError(
            "the run in --workdir was trained with a different configuration: "
            + ", ".join(changed)
            + f"; use the stored values ({source}) or start a new run (--overwrite or another --workdir)"
        )


def _normal(value):
    return list(value) if isinstance(value, tuple | list) else value


def read_config(workdir: Path) -> dict | None:
    path = Path(workdir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_config(workdir: Path) -> ExperimentConfig:
    """The configuration of the run in ``workdir`` (its ``config.json``), with ``workdir`` set.
    A directory without one is a :class:`RunError` naming it."""
    saved = read_config(Path(workdir))
    if saved is None:
        raise RunError(f"--workdir {workdir} holds no run of offsetjax's experiments (no config.json)")
    fields = {field.name for field in dataclasses.fields(ExperimentConfig)}
    config = ExperimentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    return dataclasses.replace(config, workdir=str(workdir))
