"""PyTorch checkpoint import: state dicts of the reference code's layout, built here with torch."""

import jax
import numpy as np
import pytest

import offsetjax as oj
from offsetjax.interop import load_torch_state_dict

pytestmark = pytest.mark.slow  # with torch, the tier after the fast one
torch = pytest.importorskip("torch")

from tests.torch_models import LEVELS, ReferenceResNet, ReferenceVGG16, randomized  # noqa: E402


@pytest.mark.parametrize(
    ("arch", "build"),
    [
        ("resnet20", lambda: ReferenceResNet((3, 3, 3), (16, 32, 64), 10)),
        ("vgg16", lambda: ReferenceVGG16(10)),
    ],
)
def test_imported_ann_reproduces_the_torch_logits(arch, build, tmp_path):
    torch.manual_seed(0)
    reference = randomized(build())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(images).numpy()
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    variables = load_torch_state_dict(path, arch, 10)
    model = oj.models.ARCHITECTURES[arch](10, activation=oj.models.Activation(oj.QCFS, levels=LEVELS))
    nhwc = images.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model.apply(variables, nhwc), expected, rtol=1e-3, atol=1e-3)
    # The imported network converts like any other.
    snn = oj.spiking_model(model, num_steps=2)
    assert oj.simulate(snn, oj.convert_variables(snn, variables, example_images=nhwc), nhwc).shape == (2, 4, 10)


@pytest.mark.parametrize(
    ("arch", "blocks", "widths"),
    [("resnet18", (2, 2, 2, 2), (64, 128, 256, 512)), ("resnet34", (3, 4, 6, 3), (64, 128, 256, 512))],
)
def test_resnet18_and_34_layouts_import(arch, blocks, widths):
    state = ReferenceResNet(blocks, widths, 100).state_dict()
    variables = load_torch_state_dict(state, arch, 100)
    expected = jax.eval_shape(oj.models.ARCHITECTURES[arch](100).init, jax.random.key(0), np.zeros((1, 32, 32, 3)))
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(expected["params"])
    # device arrays, not NumPy: a jitted call does not copy every weight in again
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(variables))


def test_mismatched_state_dict_names_every_bad_key():
    state = ReferenceResNet((3, 3, 3), (16, 32, 64), 10).state_dict()
    state.pop("conv2_x.1.relu.up")
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(7, 64)
    with pytest.raises(ValueError, match=r"missing \['conv2_x.1.relu.up'\], unexpected \['extra.weight'\]") as error:
        load_torch_state_dict(state, "resnet20", 10)
    assert "fc.weight: (7, 64) does not give (64, 10)" in str(error.value)
    with pytest.raises(ValueError, match="arch must be one of"):
        load_torch_state_dict(state, "small_vgg", 10)
