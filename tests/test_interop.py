"""PyTorch checkpoint import: state dicts of the reference code's layout, built here with torch."""

import functools

import jax
import numpy as np
import pytest

import offsetjax as oj
from offsetjax.interop import load_torch_state_dict

torch = pytest.importorskip("torch")
nn = torch.nn

#: Fine quantization, so float rounding differences between torch and XLA cannot flip a level
#: by more than theta / LEVELS.
LEVELS = 2**14


class QCFS(nn.Module):
    """The reference's activation: threshold ``up`` of shape [1]."""

    def __init__(self, levels=LEVELS):
        super().__init__()
        self.up = nn.Parameter(torch.tensor([1.0]))
        self.levels = levels

    def forward(self, x):
        return self.up * torch.clamp(torch.floor(x / self.up * self.levels + 0.5) / self.levels, 0, 1)


def reference_vgg16(num_classes):
    groups = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    model, channels = nn.Module(), 3
    for g, widths in enumerate(groups, start=1):
        layers = []
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), QCFS(), nn.Dropout(0)]
            channels = width
        setattr(model, f"layer{g}", nn.Sequential(*layers, nn.AvgPool2d(2)))
    model.classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(512, 4096),
        QCFS(),
        nn.Dropout(0),
        nn.Linear(4096, 4096),
        QCFS(),
        nn.Dropout(0),
        nn.Linear(4096, num_classes),
    )
    model.forward = lambda x: model.classifier(model.layer5(model.layer4(model.layer3(model.layer2(model.layer1(x))))))
    return model


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            QCFS(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = QCFS()

    def forward(self, x):
        return self.relu(self.residual_function(x) + self.shortcut(x))


class ReferenceResNet(nn.Module):
    def __init__(self, blocks, widths, num_classes):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), QCFS())
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for b in range(count):
                layers.append(Block(channels, width, 2 if stage and not b else 1))
                channels = width
            setattr(self, f"conv{stage + 2}_x", nn.Sequential(*layers))
        self.stages = len(blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for stage in range(self.stages):
            x = getattr(self, f"conv{stage + 2}_x")(x)
        return self.fc(x.mean(dim=(2, 3)))


def randomized(model):
    """Random batch-norm statistics and thresholds, so the import is checked on every tensor."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.1, 0.3, generator=generator)
        if isinstance(module, QCFS):
            module.up.data.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "build"),
    [
        ("resnet20", lambda: ReferenceResNet((3, 3, 3), (16, 32, 64), 10)),
        ("vgg16", lambda: reference_vgg16(10)),
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
    model = oj.models.ARCHITECTURES[arch](10, activation=functools.partial(oj.QCFS, levels=LEVELS))
    nhwc = images.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model.apply(variables, nhwc), expected, rtol=1e-3, atol=1e-3)
    # The imported network converts like any other.
    snn = oj.spiking_model(model, num_steps=2)
    assert oj.simulate(snn, oj.convert_variables(snn, variables, nhwc), nhwc).shape == (2, 4, 10)


@pytest.mark.parametrize(
    ("arch", "blocks", "widths"),
    [("resnet18", (2, 2, 2, 2), (64, 128, 256, 512)), ("resnet34", (3, 4, 6, 3), (64, 128, 256, 512))],
)
def test_resnet18_and_34_layouts_import(arch, blocks, widths):
    state = ReferenceResNet(blocks, widths, 100).state_dict()
    variables = load_torch_state_dict(state, arch, 100)
    expected = jax.eval_shape(oj.models.ARCHITECTURES[arch](100).init, jax.random.key(0), np.zeros((1, 32, 32, 3)))
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(expected["params"])


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
