"""AutoAugment operations against PIL (an independent implementation), and the policy's plumbing."""

import numpy as np
import pytest

from offsetjax.training.autoaugment import CIFAR10_POLICY, apply_operation, cifar10_autoaugment

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "magnitude", "sign", "reference"),
    [
        ("invert", 3, 1.0, lambda im: ImageOps.invert(im)),
        ("equalize", 3, 1.0, lambda im: ImageOps.equalize(im)),
        ("autocontrast", 3, 1.0, lambda im: ImageOps.autocontrast(im)),
        ("posterize", 9, 1.0, lambda im: ImageOps.posterize(im, 4)),
        ("solarize", 4.5, 1.0, lambda im: ImageOps.solarize(im, 128)),
        ("color", 5, 1.0, lambda im: ImageEnhance.Color(im).enhance(1.5)),
        ("contrast", 5, -1.0, lambda im: ImageEnhance.Contrast(im).enhance(0.5)),
        ("brightness", 9, 1.0, lambda im: ImageEnhance.Brightness(im).enhance(1.9)),
        ("sharpness", 5, 1.0, lambda im: ImageEnhance.Sharpness(im).enhance(1.5)),
    ],
)
def test_pixel_operations_match_pil(name, magnitude, sign, reference):
    ours = apply_operation(IMAGE, name, magnitude, sign).astype(int)
    theirs = np.asarray(reference(Image.fromarray(IMAGE))).astype(int)
    assert np.abs(ours - theirs).max() <= 1


def test_geometric_operations():
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        np.testing.assert_array_equal(apply_operation(IMAGE, name, 0, 1.0), IMAGE)
    shifted = apply_operation(IMAGE, "translate_x", 9, 1.0)  # 150/331 of the width, about 15 pixels
    np.testing.assert_array_equal(shifted[:, :17], IMAGE[:, 15:])
    assert np.all(shifted[:, -14:] == 128)
    turned = apply_operation(IMAGE, "rotate", 9, 1.0)
    assert turned.shape == IMAGE.shape and np.any(turned == 128) and not np.array_equal(turned, IMAGE)


def test_policy_is_the_published_table_and_seeded():
    assert len(CIFAR10_POLICY) == 25 and all(len(sub) == 2 for sub in CIFAR10_POLICY)
    batch = np.stack([IMAGE] * 16)
    first = cifar10_autoaugment(np.random.default_rng(3), batch)
    np.testing.assert_array_equal(first, cifar10_autoaugment(np.random.default_rng(3), batch))
    assert first.dtype == np.uint8 and sum(not np.array_equal(img, IMAGE) for img in first) >= 8
    with pytest.raises(ValueError, match="images must be uint8"):
        cifar10_autoaugment(np.random.default_rng(0), batch.astype(np.float32))
