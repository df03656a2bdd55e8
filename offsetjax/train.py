"""Training a QCFS ANN: optax SGD with momentum, weight decay and a cosine schedule, batch-norm
state, and jitted train / eval steps. Everything takes keyword arguments, no config object."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jaxtyping import Array, Float, Int

from offsetjax._checks import images_must_fit


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
    model: nn.Module, tx: optax.GradientTransformation, example_images: Float[Array, "B ..."], *, seed: int
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
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, donate_argnums=0)
def train_step(
    state: TrainState, images: Float[Array, "B ..."], labels: Int[Array, " B"]
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
    param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", {}),
        opt_state=opt_state,
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return new_state, {"loss": loss, "accuracy": accuracy}


def predict(model: nn.Module, variables: Any, images: Float[Array, "B ..."]) -> Float[Array, "B C"]:
    """ANN logits in eval mode (running batch-norm statistics)."""
    return images_must_fit(lambda: _predict(model, variables, images), images)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model: nn.Module, variables: Any, images: Array) -> Array:
    return model.apply(variables, images, train=False)
