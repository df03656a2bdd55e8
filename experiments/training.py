"""The network of a configuration, trained with a checkpoint after every epoch, or restored."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import offsetjax as oj
from experiments.config import TRAINING_FIELDS, ExperimentConfig, check_resumable
from experiments.results import RunError, progress_bar, record, write_output
from offsetjax import evaluate, parallel, training
from offsetjax.training import checkpoint, data


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
    bars = {}

    def after_batch(state, epoch, batch, metrics):
        if epoch not in bars:
            began = start_batch if epoch == start_epoch else 0
            bars[epoch] = progress_bar(
                total=steps_per_epoch, initial=began, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch"
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
                # our own log, a partial last line dropped (its digest no longer the recorded one)
                write_output(path.parent, path.name, "".join(json.dumps(row) + "\n" for row in rows), overwrite=True)
    return rows
