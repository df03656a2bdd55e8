"""The paper's reference networks in PyTorch, in the layout of the authors' code, for the import
and parity tests (imported only where torch is installed)."""

import pytest

torch = pytest.importorskip("torch")  # (also kept out of collection: tests/conftest.py)
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


class ReferenceVGG16(nn.Module):
    """VGG-16 as the authors lay it out: ``layer1..layer5`` of [Conv2d, BatchNorm2d, QCFS,
    Dropout] ending in a pool, then ``classifier``."""

    def __init__(self, num_classes):
        super().__init__()
        groups = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
        channels = 3
        for g, widths in enumerate(groups, start=1):
            layers = []
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), QCFS(), nn.Dropout(0)]
                channels = width
            setattr(self, f"layer{g}", nn.Sequential(*layers, nn.AvgPool2d(2)))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 4096),
            QCFS(),
            nn.Dropout(0),
            nn.Linear(4096, 4096),
            QCFS(),
            nn.Dropout(0),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        for g in range(1, 6):
            x = getattr(self, f"layer{g}")(x)
        return self.classifier(x)


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


def realistic(model, images, seed=0):
    """Random thresholds and batch-norm affine terms, with running statistics measured on
    ``images`` (train-mode pass, momentum 1), so that every layer has silent, partly active and
    saturated neurons; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
            module.weight.data.uniform_(0.5, 1.2, generator=generator)
            module.bias.data.uniform_(0.0, 0.6, generator=generator)
        if isinstance(module, QCFS):
            module.up.data.uniform_(0.6, 1.5, generator=generator)
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


class CalibratedIFSite(nn.Module):
    """The authors' calibrated evaluation of one activation site (their ``MPLayer``, k = 1),
    rewritten from its described behaviour, in units of the site's threshold.

    The site receives the static first-layer current ``[B, ...]`` or the previous site's
    output ``[T*B, ...]`` (time-major), pre-simulates ``presim_steps`` steps from v(0) = 1/2,
    judges psi from the residual (v < 0 with a spike fired: one fewer; v >= 1: one more),
    shifts v(0) by Theorem 2 with margin 0.001 (a neuron never silent counts its silent maximum
    as -1000), then runs all T steps from t = 1 and emits ``theta * s(t)`` as ``[T*B, ...]``.
    """

    def __init__(self, threshold: float, num_steps: int, presim_steps: int, batch_size: int, trace: list):
        super().__init__()
        self.threshold, self.num_steps, self.presim_steps = threshold, num_steps, presim_steps
        self.batch_size, self.trace = batch_size, trace

    def forward(self, x):
        steps = self.num_steps
        if x.shape[0] == self.batch_size:  # the first site: the same current at every step
            currents = x.unsqueeze(0).expand(steps, *x.shape)
        else:
            currents = x.reshape(steps, x.shape[0] // steps, *x.shape[1:])
        currents = currents / self.threshold
        v = torch.full_like(currents[0], 0.5)
        count = torch.zeros_like(v)
        lowest_fired = torch.full_like(v, 1000.0)  # pre-reset potential over spike steps
        highest_silent = torch.full_like(v, -1000.0)  # potential over silent steps
        for t in range(self.presim_steps):
            v = v + currents[t]
            spike = (v >= 1.0).to(v.dtype)
            v = v - spike
            fired = spike > 0
            lowest_fired = torch.where(fired, torch.minimum(lowest_fired, v + 1.0), lowest_fired)
            highest_silent = torch.where(fired, highest_silent, torch.maximum(highest_silent, v))
            count = count + spike
        initial = torch.full_like(v, 0.5)
        if self.presim_steps:
            fewer = (v < 0) & (count > 0)
            more = v >= 1.0
            down = torch.clamp(lowest_fired - 0.999, min=1.0)
            up = torch.clamp(1.001 - highest_silent, min=1.0)
            initial = torch.where(more, 0.5 + up, torch.where(fewer, 0.5 - down, initial))
            self.lifted = int(torch.sum(more & (highest_silent == -1000.0)))
            self.shifted = int(torch.sum(more | fewer))
        v, spikes = initial, []
        for t in range(steps):
            v = v + currents[t]
            spike = (v >= 1.0).to(v.dtype)
            v = v - spike
            spikes.append(spike)
        self.spikes = torch.stack(spikes)  # [T, B, ...]
        self.initial_potential = initial * self.threshold
        self.trace.append(self)
        out = self.spikes * self.threshold
        return out.reshape(steps * out.shape[1], *out.shape[2:])


def calibrated_snn(model, *, num_steps: int, presim_steps: int, batch_size: int):
    """``model`` with every QCFS replaced by a :class:`CalibratedIFSite`; returns it and the list
    the sites append themselves to, in call order, on each forward."""
    trace: list = []

    def replace(parent):
        for name, child in parent.named_children():
            if isinstance(child, QCFS):
                setattr(parent, name, CalibratedIFSite(child.up.item(), num_steps, presim_steps, batch_size, trace))
            else:
                replace(child)

    replace(model)
    return model, trace
