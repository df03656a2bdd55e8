"""Same weights, same spikes as SpikingJelly: one ReLU CNN (convolutions, batch norm, average
pooling, a residual, a dense head) built in PyTorch and as a plain JAX function with the same
weights, converted by SpikingJelly's rate-coding recipe and by ``offsetjax.from_jax`` with the
same threshold mode on the same calibration batch.

SpikingJelly's conversion: each ReLU becomes scale 1/s, an IF neuron (threshold 1, reset by
subtraction, v(0) = 0), scale s, with s the ReLU outputs' maximum (or percentile) on the batch;
that is offsetjax's IF site with theta = s and v(0) = 0. The two differ only in float rounding:
SpikingJelly folds batch norm into the convolution before converting (offsetjax computes it as
the network wrote it), so a membrane potential within rounding of the threshold can fire one step
apart. The test reports the fraction of identical spike trains and bounds it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import offsetjax as oj

# each optional module this file uses, skipped (not a collection error) where it cannot be imported
torch = pytest.importorskip("torch")
functional = pytest.importorskip("spikingjelly.activation_based.functional")
neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
Converter = pytest.importorskip("spikingjelly.activation_based.ann2snn.converter").Converter
RateCodingRecipe = pytest.importorskip("spikingjelly.activation_based.ann2snn.recipes.rate_coding").RateCodingRecipe

pytestmark = pytest.mark.slow
STEPS = (1, 2, 4, 8, 16, 32)


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(2, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)
        self.relu1, self.pool = torch.nn.ReLU(), torch.nn.AvgPool2d(2)
        self.conv2, self.bn2 = torch.nn.Conv2d(6, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)
        self.relu2, self.flatten, self.fc = torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = x + self.relu2(self.bn2(self.conv2(x)))  # a residual
        return self.fc(self.flatten(x))


def jax_net(p, x):
    """The same network as a plain JAX function on NCHW images, PyTorch's weights as they are."""

    def conv_bn(x, conv, bn):
        y = jax.lax.conv_general_dilated(
            x, p[conv], (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        shape = (1, -1, 1, 1)
        scale = p[f"{bn}.weight"].reshape(shape) / jnp.sqrt(p[f"{bn}.running_var"].reshape(shape) + 1e-5)
        return (y - p[f"{bn}.running_mean"].reshape(shape)) * scale + p[f"{bn}.bias"].reshape(shape)

    x = jax.nn.relu(conv_bn(x, "conv1.weight", "bn1"))
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    x = x + jax.nn.relu(conv_bn(x, "conv2.weight", "bn2"))
    return x.reshape(b, -1) @ p["fc.weight"].T + p["fc.bias"][None]


def _networks():
    torch.manual_seed(0)
    net = TorchNet().eval()
    with torch.no_grad():  # batch statistics that are not the identity
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.3)
    params = {name: jnp.asarray(value.numpy()) for name, value in net.state_dict().items() if "num_batches" not in name}
    images = np.random.default_rng(0).uniform(0, 1, (64, 2, 8, 8)).astype(np.float32)
    return net, params, images


def _spikingjelly(net, images, mode):
    snn = Converter(RateCodingRecipe(dataloader=[torch.from_numpy(images)], mode=mode)).convert(net).eval()
    nodes = [module for module in snn.modules() if isinstance(module, neuron.IFNode)]
    trains = {index: [] for index in range(len(nodes))}
    for index, node in enumerate(nodes):
        node.register_forward_hook(lambda module, args, out, index=index: trains[index].append(out.detach().numpy()))
    scales = [float(m.scale) for m in snn.modules() if type(m).__name__ == "VoltageScaler" and float(m.scale) > 0]
    functional.reset_net(snn)
    with torch.no_grad():
        outputs = np.stack([snn(torch.from_numpy(images)).numpy() for _ in range(max(STEPS))])
    running = np.cumsum(outputs, axis=0) / np.arange(1, len(outputs) + 1)[:, None, None]
    # each site is scaled 1/s before its IF node and s after: every second scaler holds s
    return running, [np.stack(trains[i]) for i in range(len(nodes))], scales[1::2]


@pytest.mark.parametrize("mode", ["max", "99.9%"])
def test_offsetjax_converts_as_spikingjelly_does(mode):
    net, params, images = _networks()
    sj_logits, sj_trains, sj_thresholds = _spikingjelly(net, images, "Max" if mode == "max" else mode)

    model, variables = oj.from_jax(jax_net, params, images, threshold=mode)
    thresholds = [float(variables["params"][f"relu{i}"]["threshold"]) for i in range(2)]
    np.testing.assert_allclose(thresholds, sj_thresholds, rtol=1e-5)

    snn = oj.spiking_model(model, num_steps=max(STEPS))
    snn_variables = oj.convert_variables(snn, variables)
    snn_variables["initial_potential"] = jax.tree.map(jnp.zeros_like, snn_variables["initial_potential"])  # v(0) = 0
    logits, state = snn.apply(
        snn_variables,
        jnp.asarray(images)[None],
        capture_intermediates=lambda module, method: isinstance(module, oj.IFActivation),
        mutable=["intermediates"],
    )
    logits = oj.simulation.running_mean(logits)
    same = []
    for i, theta in enumerate(thresholds):
        (emitted,) = state["intermediates"][f"relu{i}"]["__call__"]
        ours = np.asarray(emitted) / theta  # theta * s -> s, [T, B, C, H, W]
        assert set(np.unique(ours)) <= {0.0, 1.0}
        same.append(np.all(ours == sj_trains[i], axis=0).mean())  # per neuron: the whole train equal
    print(f"{mode}: identical spike trains per site {np.round(same, 5)}")  # (pytest -s shows it)
    assert min(same) > 0.995
    for t in STEPS:
        np.testing.assert_allclose(logits[t - 1], sj_logits[t - 1], atol=0.05, err_msg=f"t = {t}")
        agree = (np.asarray(logits[t - 1]).argmax(-1) == sj_logits[t - 1].argmax(-1)).mean()
        assert agree > 0.95, f"t = {t}: predictions agree for {agree:.2%}"
