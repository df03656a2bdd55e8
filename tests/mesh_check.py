"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_parallel.py.

Prints one JSON line comparing one device with the 8-device mesh.
"""

import functools
import json

import jax
import numpy as np

import offsetjax as oj
from offsetjax import parallel, training
from offsetjax.training import data


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    splits = data.load_digits()
    images = data.normalize(splits["train"].images[:64], "digits")
    labels = splits["train"].labels[:64]
    model = oj.models.small_resnet(10)
    tx = training.sgd_cosine(learning_rate=0.05, total_steps=10)
    mesh = parallel.data_mesh()

    single = training.create_train_state(model, tx, images[:8], seed=0)
    sharded = parallel.replicate(mesh, training.create_train_state(model, tx, images[:8], seed=0))
    for step in range(3):
        batch = slice(16 * step, 16 * step + 16)
        single, single_metrics = training.train_step(single, images[batch], labels[batch])
        sharded, sharded_metrics = training.train_step(
            sharded, *parallel.shard_batch(mesh, images[batch], labels[batch])
        )
    train_error = max(
        float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params))
    )

    snn = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=2)
    variables = oj.convert_variables(snn, single.variables, example_images=images[:1])
    one_device = np.asarray(oj.simulate(snn, variables, images[:32]))
    (global_images,) = parallel.shard_batch(mesh, images[:32])
    on_mesh = oj.simulate(snn, parallel.replicate(mesh, variables), global_images)

    # One evaluation call, 60 images in batches of 20 (rounded up to 24 for 8 devices, the last padded).
    split = data.Split(images[:60], labels[:60])
    cos = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1)
    evaluate = functools.partial(
        oj.evaluate_snn, cos, oj.convert_variables(cos, single.variables), split, statistics=True, operations=True
    )
    alone, meshed = evaluate(batch_size=60), evaluate(batch_size=20, mesh=mesh)
    # Data-level calibration over the mesh (60 images in batches of 20 -> 24, padded): the same
    # potentials as on one device; SRP shards with the batch like COS.
    plain = oj.spiking_model(model, num_steps=3)
    potential_alone = oj.data_potential(plain, single.variables, images[:60])
    potential_meshed = oj.data_potential(plain, single.variables, images[:60], mesh=mesh)
    potential_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(potential_alone), jax.tree.leaves(potential_meshed))
    )
    srp_snn = oj.spiking_model(model, num_steps=3, srp_steps=2)
    srp = functools.partial(
        oj.evaluate_snn, srp_snn, oj.convert_variables(srp_snn, single.variables), split, operations=True
    )
    srp_alone, srp_meshed = srp(batch_size=60), srp(batch_size=20, mesh=mesh)
    try:  # a batch the 8 devices do not divide is refused
        parallel.shard_batch(mesh, images[:9])
        rejected = ""
    except ValueError as error:
        rejected = str(error)
    print(
        json.dumps(
            {
                "train_max_abs_diff": train_error,
                "loss_diff": abs(float(single_metrics["loss"]) - float(sharded_metrics["loss"])),
                "eval_identical": bool(np.array_equal(one_device, np.asarray(on_mesh))),
                "eval_max_abs_diff": float(np.max(np.abs(one_device - np.asarray(on_mesh)))),
                "output_sharding": str(on_mesh.sharding.spec),
                "num_shards": len(on_mesh.addressable_shards),
                "evaluate_accuracy_equal": bool(np.array_equal(alone.accuracy, meshed.accuracy)),
                "evaluate_zero_ratio": [alone.statistics["all"]["zero_ratio"], meshed.statistics["all"]["zero_ratio"]],
                "evaluate_neurons": [alone.statistics["all"]["num_neurons"], meshed.statistics["all"]["num_neurons"]],
                "uneven_rejected": rejected,
                "evaluate_synops": [alone.operations.synops, meshed.operations.synops],
                "evaluate_presim_synops": [alone.operations.presim_synops, meshed.operations.presim_synops],
                "data_potential_max_abs_diff": potential_diff,
                "srp_accuracy_equal": bool(np.array_equal(srp_alone.accuracy, srp_meshed.accuracy)),
                "srp_synops": [srp_alone.operations.synops, srp_meshed.operations.synops],
            }
        )
    )


if __name__ == "__main__":
    main()
