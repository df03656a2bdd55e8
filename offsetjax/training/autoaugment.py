"""AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019) for uint8 images, in NumPy.

Each image draws one of the 25 sub-policies; each of its two operations is applied with its
probability at its magnitude (0-9). Geometric operations sample the nearest pixel and fill
with grey (128); the enhancement operations blend with a degenerate image as PIL's
``ImageEnhance`` does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CIFAR10_POLICY", "FILL", "apply_operation", "cifar10_autoaugment"]

#: (operation, probability, magnitude) pairs of the published CIFAR-10 policy.
CIFAR10_POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)

FILL = 128


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Nearest-neighbour inverse warp: output pixel (x, y) reads input at ``matrix @ (x, y, 1)``."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    coords = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    src_x, src_y = np.rint(matrix @ coords).astype(int)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    out = np.full_like(image.reshape(-1, image.shape[-1]), FILL)
    out[inside] = image[src_y[inside], src_x[inside]]
    return out.reshape(image.shape)


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    out = degenerate.astype(np.float32) + factor * (image.astype(np.float32) - degenerate)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
    histogram = np.bincount(channel.ravel(), minlength=256)
    nonzero = histogram[histogram > 0]
    step = (histogram.sum() - nonzero[-1]) // 255 if nonzero.size else 0
    if step == 0:
        return channel
    lut = np.clip((np.cumsum(histogram) - histogram + step // 2) // step, 0, 255).astype(np.uint8)
    return lut[channel]


def apply_operation(image: np.ndarray, name: str, magnitude: float, sign: float) -> np.ndarray:
    """One operation on a uint8 ``[H, W, C]`` image; ``sign`` (+-1) orients the signed ones."""
    height, width = image.shape[:2]
    level = magnitude / 9.0
    if name in ("shear_x", "shear_y"):
        shear = sign * 0.3 * level
        matrix = np.array([[1, shear, 0], [0, 1, 0]]) if name == "shear_x" else np.array([[1, 0, 0], [shear, 1, 0]])
        return _warp(image, matrix)
    if name in ("translate_x", "translate_y"):
        shift = sign * (150 / 331) * level * (width if name == "translate_x" else height)
        return _warp(
            image,
            np.array([[1, 0, shift], [0, 1, 0]]) if name == "translate_x" else np.array([[1, 0, 0], [0, 1, shift]]),
        )
    if name == "rotate":
        angle = np.deg2rad(sign * 30 * level)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        cos, sin = np.cos(angle), np.sin(angle)
        return _warp(image, np.array([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]]))
    if name == "invert":
        return 255 - image
    if name == "autocontrast":
        low, high = image.min(axis=(0, 1), keepdims=True), image.max(axis=(0, 1), keepdims=True)
        scale = np.where(high > low, 255.0 / np.maximum(high - low, 1), 1.0)
        out = np.where(high > low, (image - low) * scale, image)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if name == "equalize":
        return np.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)
    if name == "solarize":
        threshold = 256 - 256 * level
        return np.where(image < threshold, image, 255 - image).astype(np.uint8)
    if name == "posterize":
        bits = int(round(8 - 4 * level))
        mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
        return image & mask
    factor = 1.0 + sign * 0.9 * level
    if name == "color":
        return _blend(np.broadcast_to(_grey(image), image.shape), image, factor)
    if name == "contrast":
        return _blend(np.full(image.shape, np.rint(_grey(image).mean()), np.float32), image, factor)
    if name == "brightness":
        return _blend(np.zeros(image.shape, np.float32), image, factor)
    if name == "sharpness":
        padded = np.pad(image.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
        smooth = sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3)) + 4 * padded[1:-1, 1:-1]
        degenerate = np.clip(np.rint(smooth / 13.0), 0, 255)
        degenerate[0], degenerate[-1], degenerate[:, 0], degenerate[:, -1] = (
            image[0],
            image[-1],
            image[:, 0],
            image[:, -1],
        )
        return _blend(degenerate, image, factor)
    raise ValueError(f"unknown AutoAugment operation {name!r}")


def cifar10_autoaugment(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Apply the CIFAR-10 policy to a uint8 batch ``[N, H, W, C]``, one sub-policy per image."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    out = images.copy()
    for index in range(len(images)):
        for name, probability, magnitude in CIFAR10_POLICY[rng.integers(len(CIFAR10_POLICY))]:
            if rng.random() < probability:
                out[index] = apply_operation(out[index], name, magnitude, 1.0 if rng.random() < 0.5 else -1.0)
    return out
