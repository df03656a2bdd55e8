"""Training a QCFS ANN: optax SGD with momentum, weight decay and a cosine schedule, batch-norm
state, a jitted train step, and :func:`fit`, the loop over epochs. Everything takes keyword
arguments, no config object."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float, Int

from offsetjax import parallel
from offsetjax.training.data import Split, StreamingSplit, batches, num_batches, num_examples, take

__all__ = ["TrainState", "train_step", "sgd_cosine", "create_train_state", "cross_entropy", "check_finite_loss", "fit"]


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from step to step (a pytree; checkpointable)."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        """The ANN variables ``{"params", "batch_stats"}`` for evaluation and conversion."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def sgd_cosine(
    *, learning_rate: float, total_steps: int, momentum: float = 0.9, weight_decay: float = 5e-4
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay (thresholds included), cosine-decayed to 0."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    schedule = optax.cosine_decay_schedule(learning_rate, total_steps)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, example_images: Float[ArrayLike, "B ..."], *, seed: int
) -> TrainState:
    """Initialise parameters, batch statistics and optimizer state from ``seed``."""
    init_rng, rng = jax.random.split(jax.random.key(seed))
    variables = jax.jit(functools.partial(model.init, train=False))(init_rng, example_images)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(rng),
        model=model,
        tx=tx,
    )


def cross_entropy(logits: Float[Array, "B C"], labels: Int[Array, " B"]) -> Array:
    """Mean softmax cross-entropy of ``logits`` ``[B, classes]`` against integer ``labels`` ``[B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, donate_argnums=0)
def train_step(
    state: TrainState, images: Float[ArrayLike, "B ..."], labels: Int[ArrayLike, " B"]
) -> tuple[TrainState, dict[str, Array]]:
    """One SGD step on a batch; returns the new state and ``{"loss", "accuracy"}``."""
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        logits, updates = state.model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        return cross_entropy(logits, labels), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # optax's schedules combine int32 step counts with Python floats, which a caller's strict
    # dtype promotion (as in offsetjax's tests) would refuse; the update itself is float32.
    with jax.numpy_dtype_promotion("standard"):
        param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", {}),
        opt_state=opt_state,
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return new_state, {"loss": loss, "accuracy": accuracy}


def check_finite_loss(metrics: dict, epoch: int, batch: int) -> None:
    """Stop before a NaN or Inf loss reaches a checkpoint (raises ``FloatingPointError``)."""
    loss = float(parallel.local_value(metrics["loss"]))
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"training loss is {loss} at epoch {epoch + 1}, batch {batch + 1}; the last finite checkpoint is kept. "
            "Lower the learning rate, or resume after changing it"
        )


def fit(
    model: nn.Module,
    train_split: Split | StreamingSplit,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: Callable | None = None,
    mesh: Mesh | None = None,
    state: TrainState | None = None,
    start_epoch: int = 0,
    start_batch: int = 0,
    after_batch: Callable[[TrainState, int, int, dict], Any] | None = None,
    after_epoch: Callable[[TrainState, int, dict], dict | None] | None = None,
) -> tuple[TrainState, list[dict]]:
    """Train ``model`` with the reference recipe (SGD, momentum 0.9, weight decay, cosine decay).

    Args:
      model: a QCFS network (``offsetjax.models``).
      train_split: training data, normalised, or raw with an ``augment`` that normalises.
      epochs, batch_size, learning_rate, weight_decay, seed: the recipe; the data order and
        augmentation of each epoch depend only on ``(seed, epoch)``.
      augment: ``augment(rng, images) -> images`` per batch (``data.train_transform``).
      mesh: shard each batch over this device mesh (parameters replicated); in a multi-process
        run each process reads only its rows of every batch.
      state: continue from this state (a restored checkpoint) instead of a fresh one; its
        optimizer is used as it is.
      start_epoch, start_batch: where ``state`` stopped (batches done of ``start_epoch``).
      after_batch: ``after_batch(state, epoch, batch, metrics)`` after every step (0-based
        indices), e.g. to checkpoint or update a progress bar.
      after_epoch: ``after_epoch(state, epoch, row)`` after each epoch; a returned dict is
        merged into that epoch's log row (e.g. a test accuracy).

    Returns:
      ``(state, log)``: the final :class:`TrainState` (``state.variables`` are the ANN
      variables) and one row per epoch run: ``epoch`` (1-based), ``train_loss``,
      ``train_accuracy``, ``seconds``, ``images_per_second`` and what ``after_epoch`` added.

    Raises:
      ValueError: ``batch_size`` larger than ``train_split`` (no full batch to train on).
      FloatingPointError: on a non-finite loss (checked every 10 steps and at each epoch end,
        before ``after_batch`` sees the step).
    """
    steps_per_epoch = num_batches(num_examples(train_split), batch_size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {batch_size} is larger than train_split's {num_examples(train_split)} examples: "
            "epochs drop the partial batch, so no step would run"
        )
    example = np.asarray(take(train_split, np.arange(1))[0])
    if augment is None and example.dtype == np.uint8:
        raise ValueError("train_split holds uint8 images: pass an augment that normalises them (data.train_transform)")
    if state is None:
        tx = sgd_cosine(learning_rate=learning_rate, total_steps=epochs * steps_per_epoch, weight_decay=weight_decay)
        state = create_train_state(model, tx, example.astype(np.float32), seed=seed)
    shard = (lambda *arrays: arrays) if mesh is None else functools.partial(parallel.shard_batch, mesh)
    if mesh is not None:
        state = parallel.replicate(mesh, state)
    log = []
    for epoch in range(start_epoch, epochs):
        began, metrics = time.perf_counter(), []
        first = start_batch if epoch == start_epoch else 0
        epoch_batches = batches(
            train_split,
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            augment=augment,
            start_batch=first,
            # over a mesh each process reads its own rows; without one, every row is local
            process_index=jax.process_index() if mesh is not None else 0,
            process_count=jax.process_count() if mesh is not None else 1,
        )
        for batch, (images, labels) in enumerate(epoch_batches, start=first):
            state, step_metrics = train_step(state, *shard(images, labels))
            metrics.append(step_metrics)
            if len(metrics) % 10 == 0:
                check_finite_loss(step_metrics, epoch, batch)
            if after_batch is not None:
                after_batch(state, epoch, batch, step_metrics)
        seconds = time.perf_counter() - began
        if metrics:
            check_finite_loss(metrics[-1], epoch, steps_per_epoch - 1)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean([parallel.local_value(m["loss"]) for m in metrics])),
            "train_accuracy": float(np.mean([parallel.local_value(m["accuracy"]) for m in metrics])),
            "seconds": seconds,
            "images_per_second": len(metrics) * batch_size / seconds,
        }
        if after_epoch is not None:
            row.update(after_epoch(state, epoch, row) or {})
        log.append(row)
    return state, log
