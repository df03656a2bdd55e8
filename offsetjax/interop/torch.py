"""Import a QCFS checkpoint saved by the paper's reference PyTorch code.

The reference networks keep their layers in ``nn.Sequential`` containers, so a ``state_dict``
key is a path of attribute names and indices:

* VGG-16: ``layer1 .. layer5``, each repeating [Conv2d (with bias), BatchNorm2d, QCFS, Dropout]
  and ending in a pool; ``classifier`` = [Flatten, Linear, QCFS, Dropout, Linear, QCFS, Dropout,
  Linear]. QCFS keeps its threshold lambda as ``up`` (shape [1]).
* ResNet-18/34 (``conv1``, ``conv2_x .. conv5_x``) and ResNet-20 (``conv1``, ``conv2_x ..
  conv4_x``): ``conv1`` = [Conv2d, BatchNorm2d, QCFS]; each block has ``residual_function`` =
  [Conv2d, BatchNorm2d, QCFS, Conv2d, BatchNorm2d], an optional ``shortcut`` = [Conv2d,
  BatchNorm2d], and ``relu`` (a QCFS after the addition); then ``fc``.

Conv biases (VGG) are folded into the following batch norm's running mean, which is exact in
eval mode. torch itself is only needed to read a ``.pth`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from offsetjax.models import ARCHITECTURES
from offsetjax.models.vgg import VGG16_FEATURES

__all__ = ["torch_key_map", "load_torch_state_dict"]

#: A target: (collection, path in the Flax tree), and how to turn the torch array into it.
Target = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]


def _conv(weight):  # [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(weight, (2, 3, 1, 0))


def _dense(weight):  # [out, in] -> [in, out]
    return np.transpose(weight)


def _scalar(up):
    return np.reshape(up, ())


def _same(x):
    return x


def _conv_bn(torch_conv: str, torch_bn: str, ours: tuple[str, ...], *, bias: bool) -> dict[str, Target]:
    keys = {
        f"{torch_conv}.weight": ("params", (*ours, "Conv_0", "kernel"), _conv),
        f"{torch_bn}.weight": ("params", (*ours, "BatchNorm_0", "scale"), _same),
        f"{torch_bn}.bias": ("params", (*ours, "BatchNorm_0", "bias"), _same),
        f"{torch_bn}.running_mean": ("batch_stats", (*ours, "BatchNorm_0", "mean"), _same),
        f"{torch_bn}.running_var": ("batch_stats", (*ours, "BatchNorm_0", "var"), _same),
    }
    if bias:  # folded into the running mean below
        keys[f"{torch_conv}.bias"] = ("fold", (*ours, "BatchNorm_0", "mean"), _same)
    return keys


def _site(torch_key: str, ours: tuple[str, ...]) -> dict[str, Target]:
    return {f"{torch_key}.up": ("params", (*ours, "threshold"), _scalar)}


def _linear(torch_key: str, ours: tuple[str, ...], flatten_from: tuple[int, int, int] | None = None):
    def kernel(weight):
        if flatten_from is not None:  # torch flattens (C, H, W); Flax flattens (H, W, C)
            channels, height, width = flatten_from
            weight = weight.reshape(-1, channels, height, width).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        return _dense(weight)

    return {
        f"{torch_key}.weight": ("params", (*ours, "kernel"), kernel),
        f"{torch_key}.bias": ("params", (*ours, "bias"), _same),
    }


def _vgg16_keys(num_classes: int, image_size: int) -> dict[str, Target]:
    keys: dict[str, Target] = {}
    conv, group, index = 0, 1, 0
    for spec in VGG16_FEATURES:
        if spec == "M":
            group, index = group + 1, 0
            continue
        name = f"layer{group}"
        keys |= _conv_bn(f"{name}.{index}", f"{name}.{index + 1}", (f"conv{conv}",), bias=True)
        keys |= _site(f"{name}.{index + 2}", (f"conv{conv}_act",))
        conv, index = conv + 1, index + 4
    side = image_size // 32
    keys |= _linear("classifier.1", ("fc0",), flatten_from=(512, side, side))
    keys |= _site("classifier.2", ("fc0_act",))
    keys |= _linear("classifier.4", ("fc1",))
    keys |= _site("classifier.5", ("fc1_act",))
    keys |= _linear("classifier.7", ("classifier",))
    return keys


def _resnet_keys(stage_sizes: tuple[int, ...], widths: tuple[int, ...]) -> dict[str, Target]:
    keys = _conv_bn("conv1.0", "conv1.1", ("stem",), bias=False) | _site("conv1.2", ("stem_act",))
    in_channels = widths[0]
    for stage, (blocks, width) in enumerate(zip(stage_sizes, widths)):
        for block in range(blocks):
            torch_block, ours = f"conv{stage + 2}_x.{block}", f"stage{stage}_block{block}"
            residual = f"{torch_block}.residual_function"
            keys |= _conv_bn(f"{residual}.0", f"{residual}.1", (ours, "conv_a"), bias=False)
            keys |= _site(f"{residual}.2", (ours, "act_a"))
            keys |= _conv_bn(f"{residual}.3", f"{residual}.4", (ours, "conv_b"), bias=False)
            if (stage > 0 and block == 0) or in_channels != width:
                keys |= _conv_bn(
                    f"{torch_block}.shortcut.0", f"{torch_block}.shortcut.1", (ours, "shortcut"), bias=False
                )
            keys |= _site(f"{torch_block}.relu", (ours, "act_out"))
            in_channels = width
    return keys | _linear("fc", ("classifier",))


def torch_key_map(arch: str, num_classes: int, *, image_size: int = 32) -> dict[str, Target]:
    """Every parameter key of the reference ``state_dict`` of ``arch`` and where it goes."""
    if arch == "vgg16":
        return _vgg16_keys(num_classes, image_size)
    if arch in ("resnet18", "resnet20", "resnet34"):
        model = ARCHITECTURES[arch](num_classes)
        return _resnet_keys(model.stage_sizes, model.widths)
    raise ValueError(
        f"arch must be one of vgg16, resnet18, resnet20, resnet34 for a reference checkpoint, got {arch!r}"
    )


def _to_numpy(value) -> np.ndarray:
    """A tensor as a NumPy array: float64 stays float64 (a double-precision checkpoint imports
    without rounding), every other dtype becomes float32."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value if value.dtype == np.float64 else value.astype(np.float32)


def load_torch_state_dict(
    state_dict_or_path: Mapping[str, Any] | str | os.PathLike, arch: str, num_classes: int, *, image_size: int = 32
) -> dict:
    """ANN variables ``{"params", "batch_stats"}`` from a reference PyTorch QCFS checkpoint.

    Args:
      state_dict_or_path: a ``state_dict`` (torch tensors or arrays) or a ``.pth`` file path.
      arch: ``vgg16``, ``resnet18``, ``resnet20`` or ``resnet34``.
      num_classes: classes of the classifier.
      image_size: input side (32 for CIFAR, 224 for ImageNet); fixes VGG-16's classifier width.

    Returns:
      ``{"params", "batch_stats"}`` of JAX arrays on the default device (``jax.devices()[0]``),
      float32 (float64 where the checkpoint holds float64 tensors and ``jax_enable_x64`` is on).

    Raises:
      ValueError: naming every missing, unexpected or mis-shaped key.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        try:
            import torch
        except ImportError as error:
            raise ImportError("reading a .pth file needs torch: pip install 'offsetjax[torch]'") from error
        state_dict_or_path = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    state = {
        k.removeprefix("module."): v for k, v in state_dict_or_path.items() if not k.endswith("num_batches_tracked")
    }
    mapping = torch_key_map(arch, num_classes, image_size=image_size)
    model = ARCHITECTURES[arch](num_classes)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    expected_flat = {
        (collection, path): leaf.shape
        for collection in ("params", "batch_stats")
        for path, leaf in traverse_util.flatten_dict(expected[collection]).items()
    }
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    converted: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
    folds: dict[tuple[str, ...], np.ndarray] = {}
    misshaped = []
    for key in sorted(set(mapping) & set(state)):
        collection, path, transform = mapping[key]
        value = transform(_to_numpy(state[key]))
        want = expected_flat[("batch_stats" if collection == "fold" else collection, path)]
        if value.shape != want:
            misshaped.append(f"{key}: {tuple(_to_numpy(state[key]).shape)} does not give {want}")
        elif collection == "fold":
            folds[path] = value
        else:
            converted[(collection, path)] = value
    if missing or unexpected or misshaped:
        raise ValueError(
            f"state_dict does not match the reference {arch} with {num_classes} classes: "
            f"missing {missing}, unexpected {unexpected}, mis-shaped {misshaped}"
        )
    for path, bias in folds.items():  # BN(conv(x) + b) = BN'(conv(x)) with mean' = mean - b
        converted[("batch_stats", path)] = converted[("batch_stats", path)] - bias
    # Device arrays: every jitted call would otherwise copy each NumPy leaf to the device again.
    return jax.device_put(
        {
            collection: traverse_util.unflatten_dict({p: v for (c, p), v in converted.items() if c == collection})
            for collection in ("params", "batch_stats")
        }
    )
