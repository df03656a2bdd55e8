import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from offsetjax.training import data


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_dir(tmp_path, compress=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_name, labels_name), count in (
        ("train", data.IDX_FILES["train"], 12),
        ("test", data.IDX_FILES["test"], 5),
    ):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        write_idx(tmp_path / images_name, images, compress)
        write_idx(tmp_path / labels_name, labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trips_bytes_built_here(tmp_path, compress):
    arrays = make_idx_dir(tmp_path, compress)
    splits = data.load_idx(tmp_path)
    for split, (images, labels) in arrays.items():
        np.testing.assert_array_equal(splits[split].images[..., 0], images)
        np.testing.assert_array_equal(splits[split].labels, labels)
        assert splits[split].images.shape == (len(labels), 28, 28, 1)
        assert splits[split].labels.dtype == np.int32


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 3, 3), np.uint8), compress=False)
    (tmp_path / "y").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "y")
    (tmp_path / "z").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "z")


def test_missing_idx_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_idx(tmp_path)


def test_digits_split_is_seeded():
    first, again = data.load_digits(seed=3), data.load_digits(seed=3)
    np.testing.assert_array_equal(first["test"].labels, again["test"].labels)
    assert first["train"].images.shape == (1438, 8, 8, 1) and first["test"].images.shape == (359, 8, 8, 1)
    assert 0.0 <= first["train"].images.min() and first["train"].images.max() <= 1.0


def test_tfds_data_source_through_mock_data():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        source = data.load_tfds("cifar10", "test")
        split = data.source_to_split(source)
    assert split.images.shape == (6, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.shape == (6,)
    normalized = data.normalize(split.images, "cifar10")
    assert normalized.dtype == np.float32 and np.all(np.isfinite(normalized))


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download_and_prepare\(\)"):
        data.load_tfds("cifar100", "train", data_dir=tmp_path)


def test_batches_are_seeded_resumable_and_cover_the_data():
    split = data.Split(np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1), np.arange(50, dtype=np.int32))
    epoch0 = [labels for _, labels in data.batches(split, batch_size=8, seed=1, epoch=0)]
    assert len(epoch0) == 6 and len(set(np.concatenate(epoch0).tolist())) == 48
    again = [labels for _, labels in data.batches(split, batch_size=8, seed=1, epoch=0)]
    np.testing.assert_array_equal(np.concatenate(epoch0), np.concatenate(again))
    other = np.concatenate([labels for _, labels in data.batches(split, batch_size=8, seed=1, epoch=1)])
    assert not np.array_equal(np.concatenate(epoch0), other)
    resumed = [labels for _, labels in data.batches(split, batch_size=8, seed=1, epoch=0, start_batch=4)]
    np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(epoch0[4:]))


def test_augmentation_shapes_and_determinism():
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    augment = data.train_transform("cifar10", pad=4, cutout_size=8, autoaugment=True)
    out = augment(np.random.default_rng(7), images)
    np.testing.assert_array_equal(out, augment(np.random.default_rng(7), images))
    assert out.shape == images.shape and out.dtype == np.float32
    zeroed = (out == 0).all(axis=-1).sum(axis=(1, 2))
    assert np.all(zeroed >= 16)  # each Cutout square keeps at least a quarter inside the image
    cropped = data.random_crop_flip(np.random.default_rng(0), images, pad=0, flip=False)
    np.testing.assert_array_equal(cropped, images)
    plain = data.train_transform("cifar10")(np.random.default_rng(0), images)
    np.testing.assert_array_equal(plain, data.normalize(images, "cifar10"))


def test_normalize_checks_channels_and_dataset():
    with pytest.raises(ValueError, match="must have 3 channels"):
        data.normalize(np.zeros((2, 8, 8, 1), np.uint8), "cifar10")
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.normalize(np.zeros((2, 8, 8, 1), np.uint8), "svhn")


def test_streaming_split_preprocesses_per_batch():
    rng = np.random.default_rng(0)
    records = [
        {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": i}
        for i, (h, w) in enumerate([(300, 400), (260, 250), (500, 333)])
    ]
    evaluation = data.StreamingSplit(records, preprocess=data.imagenet_eval_preprocess, dataset="imagenet2012")
    images, labels = data.take(evaluation, [2, 0])
    assert images.shape == (2, 224, 224, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, [2, 0])
    training = data.StreamingSplit(records, preprocess=data.imagenet_train_preprocess, dataset="imagenet2012", limit=2)
    batches = list(data.batches(training, batch_size=2, seed=0))
    assert len(training) == 2 and len(batches) == 1 and batches[0][0].shape == (2, 224, 224, 3)
