"""tf.data pipelines over a small ingest output: shapes, ranges, degradation,
augmentation switches, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from helpers_images import celeba_names, read_png, read_train_examples, small_config, write_images  # noqa: E402

from srcore.data import degrade  # noqa: E402
from srcore.data.dataset import (  # noqa: E402
    load_test_images,
    read_manifest,
    train_count,
    train_dataset,
    val_faces,
    validation_images,
)
from srcore.data.ingest import ingest  # noqa: E402

BATCH = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """12 crops: 8 train in 3 shards, 4 test (2 showcase)."""
    root = tmp_path_factory.mktemp("dataset")
    faces = write_images(root / "faces", celeba_names(12))
    ingest(small_config(faces, root / "data", limit=12, test_count=4, showcase_count=2))
    return root / "data"


def config(data_dir: Path, **overrides):
    # val_count=0: these tests count whole-split batches; validation has its own test
    return small_config("demo", data_dir, **{"batch_size": BATCH, "val_count": 0, **overrides})


def to_uint8(x) -> np.ndarray:
    return degrade.from_unit(x).numpy()


def stored_train_crops(data_dir: Path) -> dict[bytes, str]:
    crops = {}
    for name, png in read_train_examples(data_dir, read_manifest(data_dir)):
        crops[tf.io.decode_png(png, channels=3).numpy().tobytes()] = name
    return crops


def test_train_batches_shapes_dtypes_and_range(data_dir: Path):
    cfg = config(data_dir)
    batches = list(train_dataset(cfg, data_dir))
    assert len(batches) == train_count(data_dir) // BATCH == 2
    for lr, hr in batches:
        assert lr.shape == (BATCH, 32, 32, 3) and hr.shape == (BATCH, 128, 128, 3)
        assert lr.dtype == tf.float32 and hr.dtype == tf.float32
        for x in (lr, hr):
            assert float(tf.reduce_min(x)) >= -1.0 and float(tf.reduce_max(x)) <= 1.0
    assert train_dataset(cfg, data_dir).element_spec[0].shape == (BATCH, 32, 32, 3)  # static batch


def test_without_augmentation_hr_is_the_stored_crop_and_lr_its_degradation(data_dir: Path):
    cfg = config(data_dir, augment=False)
    stored = stored_train_crops(data_dir)
    seen = []
    for lr, hr in train_dataset(cfg, data_dir):
        hr8 = to_uint8(hr)
        for i in range(BATCH):
            assert hr8[i].tobytes() in stored
            seen.append(stored[hr8[i].tobytes()])
        np.testing.assert_array_equal(to_uint8(lr), degrade.downscale(hr8, 4, True).numpy())
    assert len(set(seen)) == len(seen) == 8  # a full epoch of distinct images
    # The flip and colour switches alone also leave the crop untouched.
    for _, hr in train_dataset(config(data_dir, aug_flip=False, aug_color=False), data_dir):
        assert all(to_uint8(hr)[i].tobytes() in stored for i in range(BATCH))


def test_flip_only_gives_the_crop_or_its_mirror(data_dir: Path):
    stored = stored_train_crops(data_dir)
    flipped = 0
    for _, hr in train_dataset(config(data_dir, aug_color=False), data_dir):
        for image in to_uint8(hr):
            if image.tobytes() not in stored:
                assert image[:, ::-1].tobytes() in stored
                flipped += 1
    assert flipped  # with 8 images, all unflipped is a 1/256 event for this seed: it did not happen


def test_colour_augmentation_changes_pixels_within_range(data_dir: Path):
    stored = stored_train_crops(data_dir)
    changed = 0
    for _, hr in train_dataset(config(data_dir, aug_flip=False), data_dir):
        for image in to_uint8(hr):
            changed += image.tobytes() not in stored
    assert changed == 8


def test_training_order_is_reproducible_and_reshuffled_per_epoch(data_dir: Path):
    cfg = config(data_dir)

    def epoch(ds):
        return np.concatenate([hr.numpy() for _, hr in ds])

    first = train_dataset(cfg, data_dir)
    second = train_dataset(cfg, data_dir)
    epoch_a = epoch(first)
    np.testing.assert_array_equal(epoch_a, epoch(second))  # same seed, same run -> same data
    assert not np.array_equal(epoch_a, epoch(first))  # the next epoch is reshuffled/re-augmented
    other_seed = epoch(train_dataset(config(data_dir, seed=7), data_dir))
    assert not np.array_equal(epoch_a, other_seed)


def test_unknown_test_names_are_refused(data_dir: Path):
    showcase = read_manifest(data_dir)["showcase"]
    assert [name for name, _ in load_test_images(data_dir, names=showcase)] == showcase
    with pytest.raises(KeyError, match="nope"):
        load_test_images(data_dir, names=["nope"])


def test_antialias_switch_changes_lr(data_dir: Path):
    hr = np.stack([image for _, image in load_test_images(data_dir)])
    aliased, antialiased = degrade.downscale(hr, 4, False).numpy(), degrade.downscale(hr, 4, True).numpy()
    assert aliased.shape == antialiased.shape == (len(hr), 32, 32, 3)
    assert not np.array_equal(aliased, antialiased)


def test_random_patches(data_dir: Path):
    cfg = config(data_dir, patch_size=64, aug_flip=False, aug_color=False)
    lr, hr = next(iter(train_dataset(cfg, data_dir)))
    assert lr.shape == (BATCH, 16, 16, 3) and hr.shape == (BATCH, 64, 64, 3)
    # each patch is a window of some stored face, and LR is its x4 degradation
    np.testing.assert_array_equal(to_uint8(lr), degrade.downscale(to_uint8(hr), 4, True).numpy())
    with pytest.raises(Exception, match="patch_size"):
        config(data_dir, patch_size=40)


def test_validation_faces_are_held_out_of_training(data_dir: Path):
    cfg = config(data_dir, val_count=2, aug_flip=False, aug_color=False, batch_size=2)
    held_out = validation_images(cfg, data_dir)
    assert len(held_out) == 2 and all(image.shape == (128, 128, 3) for _, image in held_out)
    trained = {to_uint8(hr)[i].tobytes() for _, hr in train_dataset(cfg, data_dir) for i in range(len(hr))}
    total = read_manifest(data_dir)["counts"]["train"]
    assert len(trained) == (total - 2) // 2 * 2  # one epoch, incomplete batch dropped
    assert not any(image.tobytes() in trained for _, image in held_out)
    # the stated rule for small data: at most a quarter of the training split, 0 below 4 images
    assert len(validation_images(config(data_dir, val_count=total), data_dir)) == total // 4
    assert (val_faces(100, 10_161), val_faces(100, 40), val_faces(100, 3), val_faces(0, 500)) == (100, 10, 0, 0)


def test_load_test_images(data_dir: Path):
    manifest = read_manifest(data_dir)
    images = load_test_images(data_dir)
    assert [name for name, _ in images] == manifest["test_files"]
    for name, image in images:
        assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
        np.testing.assert_array_equal(image, read_png(data_dir / "test" / f"{name}.png"))
    reordered = list(reversed(manifest["showcase"]))
    assert [name for name, _ in load_test_images(data_dir, names=reordered)] == reordered


def test_missing_manifest_says_to_run_ingest(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"srgan ingest.*") as caught:
        read_manifest(tmp_path / "nothing-here")
    assert "nothing-here" in str(caught.value)


def test_parameter_mismatches_are_explained(data_dir: Path):
    with pytest.raises(ValueError, match="batch_size=64"):
        train_dataset(config(data_dir, batch_size=64), data_dir)
    with pytest.raises(ValueError, match="hr_size=64"):
        train_dataset(config(data_dir, hr_size=64), data_dir)


@pytest.mark.parametrize("content, named", [
    (b"[1]", "a JSON list, not an object"),
    (b'{"format_version": 1', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_a_foreign_manifest_json_is_one_line_naming_it(tmp_path, content, named):
    """--data-dir at a folder whose manifest.json is another tool's (a list, broken, not UTF-8)."""
    from srcore.data.manifest import read_manifest

    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError, match=named) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(caught.value) and "\n" not in str(caught.value)
