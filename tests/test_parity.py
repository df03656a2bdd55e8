"""Same weights, same spikes: offsetjax's calibrated SNN against the authors' evaluation.

The authors' code (PyTorch) calibrates each activation site on its own input during a single
forward pass: the site pre-simulates rho steps from v(0) = theta/2, shifts v(0) once (k = 1) and
runs the T steps from t = 1, which feed the next site. ``tests/torch_models.py`` rewrites that
behaviour as ``CalibratedIFSite``; here it runs on VGG-16 and ResNet-20 in the authors' layout,
in float64, with random weights and batch-norm statistics measured so that neurons are silent,
partly active and saturated. The networks are imported with ``load_torch_state_dict`` and
simulated by offsetjax: every spike of every site and every calibrated v(0) must agree.
"""

import copy
import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

import offsetjax as oj
from offsetjax.interop import load_torch_state_dict
from offsetjax.simulation import site_order
from offsetjax.site import CALIBRATED_POTENTIAL, IFActivation

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

from tests.torch_models import ReferenceResNet, ReferenceVGG16, calibrated_snn, realistic  # noqa: E402

BATCH = 4
PRESIM_STEPS = 4
BUILDERS = {"vgg16": lambda: ReferenceVGG16(10), "resnet20": lambda: ReferenceResNet((3, 3, 3), (16, 32, 64), 10)}


@functools.cache
def reference_network(arch: str):
    """A float64 reference-layout network with measured statistics, and test images (NCHW)."""
    torch.manual_seed(0)
    model = realistic(BUILDERS[arch](), torch.randn(64, 3, 32, 32))
    return model.double(), torch.randn(BATCH, 3, 32, 32, dtype=torch.float64)


def offsetjax_run(arch: str, state_dict, images_nhwc: np.ndarray, num_steps: int, saturated: str = "fire"):
    """offsetjax's logits [T, B, 10], spikes per site in call order, and calibrated v(0) per site."""
    variables = load_torch_state_dict(state_dict, arch, 10)
    model = oj.models.ARCHITECTURES[arch](10)
    snn = oj.spiking_model(
        model, num_steps=num_steps, presim_steps=PRESIM_STEPS, iterations=1, saturated=saturated, unroll=1
    )
    snn_variables = oj.convert_variables(snn, variables, example_images=images_nhwc)
    logits = oj.simulate(snn, snn_variables, images_nhwc)

    @jax.jit
    def sites(snn_variables, images):  # every site's output theta * s(t) and calibrated v(0)
        _, collections = snn.apply(
            snn_variables,
            images[None],
            mutable=[CALIBRATED_POTENTIAL],
            capture_intermediates=lambda module, method: isinstance(module, IFActivation) and method == "__call__",
        )
        return collections

    collections = traverse_util.flatten_dict(sites(snn_variables, images_nhwc))
    thresholds = traverse_util.flatten_dict(variables["params"])
    order = [tuple(name.split("/")) for name in site_order(snn, images_nhwc.shape[1:])]
    spikes = [
        np.asarray(collections[("intermediates", *n, "__call__")][0]) / np.asarray(thresholds[(*n, "threshold")])
        for n in order
    ]
    v0 = [np.asarray(collections[(CALIBRATED_POTENTIAL, *n, "v0")][0]) for n in order]
    return np.asarray(logits), spikes, v0


def channels_last(array: np.ndarray) -> np.ndarray:
    """[..., C, H, W] -> [..., H, W, C]; dense activations [..., F] unchanged."""
    return np.moveaxis(array, -3, -1) if array.ndim >= 4 else array


@pytest.mark.parametrize("num_steps", [4, 8])
@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_calibrated_snn_matches_the_authors_evaluation_spike_for_spike(arch, num_steps):
    model, images = reference_network(arch)
    reference, trace = calibrated_snn(
        copy.deepcopy(model), num_steps=num_steps, presim_steps=PRESIM_STEPS, batch_size=BATCH
    )
    with torch.no_grad():
        out = reference(images).reshape(num_steps, BATCH, 10).numpy()
    steps = np.arange(1, num_steps + 1).reshape(-1, 1, 1)
    want_logits = np.cumsum(out, axis=0) / steps

    with jax.enable_x64(True):
        logits, spikes, v0 = offsetjax_run(arch, model.state_dict(), images.permute(0, 2, 3, 1).numpy(), num_steps)

    assert len(spikes) == len(trace)
    for index, (site, got, got_v0) in enumerate(zip(trace, spikes, v0)):
        want = channels_last(site.spikes.numpy())
        differ = int(np.sum(np.any(got != want, axis=0)))
        assert differ == 0, f"site {index}: {differ} of {want[0].size} neurons fire a different spike train"
        np.testing.assert_allclose(got_v0, channels_last(site.initial_potential.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-12, atol=1e-12)
    # The comparison is not vacuous: calibration moved neurons, some of them saturated.
    assert sum(site.shifted for site in trace) > 0.01 * sum(site.spikes[0].numel() for site in trace)
    assert sum(site.lifted for site in trace) > 0
