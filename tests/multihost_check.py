"""One process of a 2-process run started by test_multihost.py (offsetjax.launch.launch_local).

    python tests/multihost_check.py WORKDIR

Each process trains the same small network locally (identical in both), then over the global
mesh (2 processes x 2 devices, each process feeding its own rows), evaluates the calibrated
SNN locally and over the mesh, and saves and restores a checkpoint of the mesh-trained state
in WORKDIR. Process 0 prints one JSON line comparing them.
"""

import functools
import json
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

import offsetjax as oj
from offsetjax import parallel, training
from offsetjax.training import checkpoint, data


def main(workdir: str) -> None:
    assert parallel.initialize_distributed(timeout_s=60)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    splits = data.load_digits()
    train = data.Split(data.normalize(splits["train"].images[:512], "digits"), splits["train"].labels[:512])
    test = data.Split(data.normalize(splits["test"].images[:90], "digits"), splits["test"].labels[:90])
    model = oj.models.small_vgg(10)
    mesh = parallel.data_mesh()
    order_equal = same_batches_as_one_process(train)
    gradient = one_step_gradients(model, train, mesh)
    fit = functools.partial(training.fit, model, train, epochs=3, batch_size=32, learning_rate=0.1, seed=0)
    local_state, local_log = fit()
    mesh_state, mesh_log = fit(mesh=mesh)
    train_diff = max(
        float(np.max(np.abs(parallel.local_value(a) - parallel.local_value(b))))
        for a, b in zip(jax.tree.leaves(local_state.params), jax.tree.leaves(mesh_state.params))
    )

    evaluations = {}
    for iterations in (1,):  # (k = 2 shards the same way; tests/mesh_check.py runs the mesh alone)
        snn = oj.spiking_model(model, num_steps=8, presim_steps=4, iterations=iterations)
        evaluate = functools.partial(
            oj.evaluate_snn, snn, oj.convert_variables(snn, local_state.variables), test, statistics=True
        )
        # 90 images in batches of 30 (rounded up to 32 for 4 devices): every batch padded.
        alone, meshed = evaluate(batch_size=90), evaluate(batch_size=30, mesh=mesh)
        evaluations[iterations] = {
            "accuracy_equal": bool(np.array_equal(alone.accuracy, meshed.accuracy)),
            "accuracy": alone.accuracy.tolist(),
            "zero_ratio": [alone.statistics["all"]["zero_ratio"], meshed.statistics["all"]["zero_ratio"]],
            "psi_histogram_equal": alone.statistics["all"]["psi_histogram"]
            == meshed.statistics["all"]["psi_histogram"],
            "mse": [alone.statistics["all"]["mse"], meshed.statistics["all"]["mse"]],
        }
    # Data-level calibration over both processes' devices: each feeds its rows of every batch.
    calibrate = functools.partial(
        oj.data_potential, oj.spiking_model(model, num_steps=3), local_state.variables, train.images[:90]
    )
    potential_alone, potential_meshed = calibrate(), calibrate(mesh=mesh)
    potential_diff = max(
        float(np.max(np.abs(np.asarray(a) - parallel.local_value(b))))
        for a, b in zip(
            jax.tree.leaves(potential_alone["initial_potential"]),
            jax.tree.leaves(potential_meshed["initial_potential"]),
        )
    )
    ann_alone = oj.ann_accuracy(model, local_state.variables, test, batch_size=90)
    ann_meshed = oj.ann_accuracy(model, local_state.variables, test, batch_size=30, mesh=mesh)

    checkpoint.save(f"{workdir}/latest", mesh_state, {"epoch": 2})
    tx = training.sgd_cosine(learning_rate=0.05, total_steps=1)
    fresh = training.create_train_state(model, tx, train.images[:2], seed=1)
    restored, meta = checkpoint.restore(f"{workdir}/latest", fresh)
    restored_equal = all(
        np.array_equal(parallel.local_value(a), parallel.local_value(b))
        for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(mesh_state.params))
    )
    if jax.process_index() == 0:
        print(
            json.dumps(
                {
                    "batch_order_equal": order_equal,
                    **gradient,
                    "train_max_abs_diff": train_diff,
                    "train_loss": [row["train_loss"] for row in mesh_log],
                    "train_loss_one_process": [row["train_loss"] for row in local_log],
                    "evaluations": evaluations,
                    "data_potential_max_abs_diff": potential_diff,
                    "ann_equal": ann_alone == ann_meshed,
                    "checkpoint_meta": meta,
                    "restored_equal": restored_equal,
                }
            ),
            flush=True,
        )


def same_batches_as_one_process(train: data.Split) -> bool:
    """Whether the two processes' rows of every batch of three epochs, put side by side, are the
    rows one process reads (the data split and order do not depend on the process count)."""
    indexed = data.Split(train.images, np.arange(len(train.labels)))

    def rows(index: int, count: int) -> np.ndarray:
        return np.stack(
            [
                labels
                for epoch in range(3)
                for _, labels in data.batches(
                    indexed, batch_size=32, seed=0, epoch=epoch, process_index=index, process_count=count
                )
            ]
        )

    gathered = multihost_utils.process_allgather(rows(jax.process_index(), 2))  # [processes, steps, 16]
    return bool(np.array_equal(np.concatenate(list(gathered), axis=-1), rows(0, 1)))


def one_step_gradients(model, train: data.Split, mesh) -> dict:
    """The loss gradient of one global batch of 32 from one process and from the 2 x 2 mesh, and
    the float32 bound on their difference (docs/multihost.md): the mesh reorders the sums over
    the batch (gradient means, batch-norm statistics), at most N = 32 x 8 x 8 terms, and a sum of
    N float32 terms in another order moves by at most gamma_N = N u / (1 - N u) (u = 2^-24) of the
    sum of the terms' magnitudes; checked against gamma_N x the largest gradient entry of each
    leaf (its terms' magnitudes summed are at least that)."""
    tx = training.sgd_cosine(learning_rate=0.1, total_steps=1)
    state = training.create_train_state(model, tx, train.images[:2], seed=0)
    images, labels = next(data.batches(train, batch_size=32, seed=0, epoch=0))
    mine = slice(16 * jax.process_index(), 16 * (jax.process_index() + 1))

    def loss(params, batch_stats, images, labels):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        return training.cross_entropy(logits, labels)

    grad = jax.jit(jax.grad(loss))
    alone = grad(state.params, state.batch_stats, images, labels)
    replicated = parallel.replicate(mesh, (state.params, state.batch_stats))
    meshed = grad(*replicated, *parallel.shard_batch(mesh, images[mine], labels[mine]))
    terms = 32 * 8 * 8
    gamma = terms * 2.0**-24 / (1 - terms * 2.0**-24)
    ratios = [
        float(np.max(np.abs(np.asarray(a) - parallel.local_value(b))) / np.max(np.abs(np.asarray(a))))
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(meshed))
        if np.max(np.abs(np.asarray(a))) > 0
    ]
    return {"gradient_max_relative_diff": max(ratios), "gradient_bound": gamma}


if __name__ == "__main__":
    main(sys.argv[1])
