"""Operation counts against an independent counter (slow tier; skipped without torch, sinabs or
neurobench — .ci/run installs them): the network exported through NIR, run in sinabs, every
convolution's and dense layer's input at every step and image counted by NeuroBench's own
``single_layer_MACs`` (the function its ``SynapticOperations`` metric calls per layer)."""

import jax
import numpy as np
import pytest

import offsetjax as oj
from offsetjax.models import small_vgg

pytestmark = pytest.mark.slow
nir = pytest.importorskip("nir")
torch = pytest.importorskip("torch")
pytest.importorskip("sinabs", reason="sinabs is not installed (pip install --no-deps sinabs nirtorch pbr)")
layers = pytest.importorskip("neurobench.metrics.utils.layers", reason="neurobench is not installed")
from experiments.nir_peers import sinabs_model  # noqa: E402
from offsetjax.interop.nir import to_nir  # noqa: E402

NUM_STEPS, BATCH = 4, 16


def hooked_inputs(graph, images: np.ndarray) -> list:
    """``(layer, its input [B * T, ...])`` for every convolution and dense layer of the sinabs
    network running ``images`` for T steps."""
    model = sinabs_model(graph, BATCH)
    inputs = []
    hooked = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    handles = [
        module.register_forward_hook(lambda module, args, out: inputs.append((module, args[0].detach().clone())))
        for module in hooked
    ]
    x = torch.as_tensor(np.array(np.transpose(images, (0, 3, 1, 2)), np.float32))
    x = x[:, None].expand(BATCH, NUM_STEPS, *x.shape[1:]).reshape(BATCH * NUM_STEPS, *x.shape[1:])
    with torch.no_grad():
        model(x)
    for handle in handles:  # NeuroBench runs a copy of each layer (hooks included) to count
        handle.remove()
    assert len(inputs) == len(hooked)
    return inputs


def neurobench_counts(graph, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NeuroBench's effective ACs and MACs of every linear layer, per step and image ``[T, B]``."""
    acs, macs = np.zeros((NUM_STEPS, BATCH)), np.zeros((NUM_STEPS, BATCH))
    for module, seen in hooked_inputs(graph, images):  # [B * T, ...], sample-major
        seen = seen.reshape(BATCH, NUM_STEPS, *seen.shape[1:])
        for b in range(BATCH):
            for t in range(NUM_STEPS):
                operations, spiking = layers.single_layer_MACs(seen[b, t][None], module)
                (acs if spiking else macs)[t, b] += float(operations)
    return acs, macs


def test_effective_counts_equal_neurobenchs_on_the_network_sinabs_runs(tmp_path):
    model = small_vgg(10)
    images = np.array(jax.random.uniform(jax.random.key(0), (BATCH, 8, 8, 1)), np.float32)
    images[:, :4] = 0.0  # zero pixels: NeuroBench charges only the nonzero ones
    variables = model.init(jax.random.key(1), images)
    snn = oj.spiking_model(model, num_steps=NUM_STEPS)
    snn_variables = oj.convert_variables(snn, variables)
    nir.write(tmp_path / "net.nir", to_nir(snn, snn_variables, (8, 8, 1)))
    acs, macs = neurobench_counts(nir.read(tmp_path / "net.nir"), images)
    ops = oj.count_operations(snn, snn_variables, images)
    assert acs.sum() > 0 and macs.sum() > 0
    np.testing.assert_array_equal(ops.effective_macs, macs)
    np.testing.assert_array_equal(ops.effective_acs, acs)
    # The ANN: NeuroBench's dense count of one step (every input and weight taken as one) is dense_macs.
    dense = sum(
        float(layers.single_layer_MACs(torch.ones_like(seen[:1]), module, total=True)[0])
        for module, seen in hooked_inputs(nir.read(tmp_path / "net.nir"), images)
    )
    assert dense == float(ops.dense_macs)
