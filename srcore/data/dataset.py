"""tf.data input pipelines over an ingest output (see docs/ARCHITECTURE.md).

train_dataset: shards -> shuffle -> decode PNG -> (without the validation faces) ->
    augment the HR crop (optional) -> random patch (optional) -> batch -> LR by the
    shared x4 degradation -> (lr, hr) float32 in [-1, 1].
validation_images: the last `val_faces` training faces (shard order), held out of
    training for per-epoch metrics and hyper-parameter choice; the test split stays
    untouched until the final evaluation. `val_faces` = min(val_count, a quarter of the
    training split): none only when val_count is 0 or the split has < 4 images.
load_test_images: the test PNGs in manifest order, never augmented (evaluation degrades
    them with srcore.data.degrade exactly as train_dataset does).

Augmentation uses stateless random ops whose per-image seeds come from
`tf.data.Dataset.random(seed=cfg.seed)`: the same config gives the same images in
the same order in every run, and each epoch draws new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from srcore.config import Config
from srcore.data import degrade
from srcore.data.manifest import MANIFEST, TEST_DIR, TRAIN_DIR, read_manifest  # noqa: F401 - read_manifest re-exported

AUTOTUNE = tf.data.AUTOTUNE
# the record layout written by srcore.data.tfrecord.serialize_example
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "name": tf.io.FixedLenFeature([], tf.string),
}
#: how many shards are read at once (interleaved), so that shuffling mixes shards
_INTERLEAVE_SHARDS = 4


def train_count(data_dir: str | Path) -> int:
    """Number of training images (one epoch without drop_remainder)."""
    return int(read_manifest(data_dir)["counts"]["train"])


# ---- training ------------------------------------------------------------------------


def train_dataset(cfg: Config, data_dir: str | Path) -> tf.data.Dataset:
    """Batches of (lr, hr), float32 in [-1, 1], shapes (B, lr, lr, 3) and (B, hr, hr, 3).

    One iteration is one epoch (incomplete last batch dropped), reshuffled and
    re-augmented on every iteration.
    """
    manifest = _checked_manifest(cfg, data_dir)
    count = manifest["counts"]["train"]
    if count < cfg.batch_size:
        raise ValueError(
            f"the train split of {data_dir} has {count} images, fewer than batch_size="
            f"{cfg.batch_size}: no full batch; lower batch_size or ingest more images"
        )
    shards = _shard_paths(manifest, data_dir)
    held_out = _validation_names(cfg, data_dir)

    records = (
        tf.data.Dataset.from_tensor_slices(shards)
        .shuffle(len(shards), seed=cfg.seed, reshuffle_each_iteration=True)
        .interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(shards), _INTERLEAVE_SHARDS),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        .shuffle(max(1, min(cfg.shuffle_buffer, count)), seed=cfg.seed, reshuffle_each_iteration=True)
    )
    # One random int64 per image, different on every iteration: the augmentation seed.
    image_seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True)

    if held_out:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(held_out), tf.ones(len(held_out), tf.int64)), 0)
        records = records.filter(
            lambda record: table.lookup(tf.io.parse_single_example(record, _FEATURES)["name"]) == 0)

    def decode_and_augment(record: tf.Tensor, image_seed: tf.Tensor) -> tf.Tensor:
        hr = decode_crop(tf.io.parse_single_example(record, _FEATURES)["image"], cfg.hr_size)
        seed = tf.stack([image_seed, tf.constant(cfg.seed, tf.int64)])
        if cfg.augment:
            hr = augment_hr(hr, seed, cfg)
        if cfg.patch_size and cfg.patch_size < cfg.hr_size:
            # a random HR patch (the SRGAN paper trains on 96x96): more steps per CPU-minute
            patch_seed = tf.random.experimental.stateless_fold_in(seed, 99)
            hr = tf.image.stateless_random_crop(hr, [cfg.patch_size, cfg.patch_size, 3], patch_seed)
        return hr

    return (
        tf.data.Dataset.zip((records, image_seeds))
        .map(decode_and_augment, num_parallel_calls=AUTOTUNE)
        .batch(cfg.batch_size, drop_remainder=True)
        .map(lambda hr: make_pair(hr, cfg), num_parallel_calls=AUTOTUNE)  # whole batches resize faster
        .prefetch(AUTOTUNE)
    )


def _shard_paths(manifest: dict, data_dir: str | Path) -> list[str]:
    return [str(Path(data_dir).expanduser() / TRAIN_DIR / name) for name in manifest["train_shards"]]


#: validation takes at most 1/VAL_FRACTION of the training split (tiny data keeps most for training)
VAL_FRACTION = 4


def val_faces(val_count: int, n_train: int) -> int:
    """How many training faces are held out for validation: min(val_count, n_train // 4),
    so 0 only when val_count is 0 or the training split has fewer than 4 images."""
    return max(0, min(val_count, n_train // VAL_FRACTION))


def _last_records(cfg: Config, data_dir: str | Path) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of the last `val_faces` training records in shard order."""
    if not cfg.val_count:
        return []
    manifest = _checked_manifest(cfg, data_dir)
    count = val_faces(cfg.val_count, manifest["counts"]["train"])
    if not count:
        return []
    found: list[tuple[str, bytes]] = []
    for shard in reversed(_shard_paths(manifest, data_dir)):  # read only the last shard(s)
        parsed = tf.data.TFRecordDataset(shard).map(lambda r: tf.io.parse_single_example(r, _FEATURES))
        records = [(ex["name"].numpy().decode(), ex["image"].numpy()) for ex in parsed]
        found = records + found
        if len(found) >= count:
            break
    return found[-count:]


def _validation_names(cfg: Config, data_dir: str | Path) -> list[str]:
    return [name for name, _ in _last_records(cfg, data_dir)]


def validation_images(cfg: Config, data_dir: str | Path) -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 HxWx3)] of the faces train_dataset holds out (`val_faces`)."""
    return [(name, decode_crop(tf.constant(png), cfg.hr_size).numpy()) for name, png in _last_records(cfg, data_dir)]


def decode_crop(png: tf.Tensor, hr_size: int) -> tf.Tensor:
    """PNG bytes -> uint8 (hr, hr, 3). The crops are PNG: decode_png, not decode_jpeg."""
    return tf.ensure_shape(tf.io.decode_png(png, channels=3), [hr_size, hr_size, 3])


def augment_hr(hr: tf.Tensor, seed: tf.Tensor, cfg: Config) -> tf.Tensor:
    """The seed tutorial's augmentation on a uint8 HR crop, returning uint8.

    Random left-right flip; saturation x[0.95, 1.05], brightness +-0.05,
    contrast x[0.95, 1.05], hue +-0.05 (on the [0, 1] scale), each with its own
    stateless seed derived from `seed` (shape [2], int64). The result is clipped and
    rounded to uint8 so that the LR input is degraded from a real 8-bit image.
    """
    flip_seed, saturation_seed, brightness_seed, contrast_seed, hue_seed = (
        tf.random.experimental.stateless_fold_in(seed, i) for i in range(5)
    )
    if cfg.aug_flip:
        hr = tf.image.stateless_random_flip_left_right(hr, flip_seed)
    if cfg.aug_color:
        x = tf.image.convert_image_dtype(hr, tf.float32)
        x = tf.image.stateless_random_saturation(x, 0.95, 1.05, saturation_seed)
        x = tf.image.stateless_random_brightness(x, 0.05, brightness_seed)
        x = tf.image.stateless_random_contrast(x, 0.95, 1.05, contrast_seed)
        x = tf.image.stateless_random_hue(x, 0.05, hue_seed)
        hr = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
    return hr


def make_pair(hr: tf.Tensor, cfg: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 HR (batch) -> (lr, hr) in [-1, 1] through the shared x4 degradation."""
    lr = degrade.downscale(hr, cfg.scale, cfg.antialias)
    return degrade.to_unit(lr), degrade.to_unit(hr)


# ---- test split ----------------------------------------------------------------------


def load_test_images(data_dir: str | Path, names: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 HxWx3)] of the test split (manifest order, or the order of `names`)."""
    manifest = read_manifest(data_dir)
    folder = Path(data_dir).expanduser() / TEST_DIR
    images = []
    for name in _select_test_names(manifest, data_dir, names):
        with Image.open(folder / f"{name}.png") as image:
            images.append((name, np.asarray(image.convert("RGB"))))
    return images


def _select_test_names(manifest: dict, data_dir: str | Path, names: Sequence[str] | None) -> list[str]:
    available = manifest["test_files"]
    if names is None:
        return list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise KeyError(f"not in the test split of {data_dir}: {', '.join(unknown)} (see test_files in its {MANIFEST})")
    return list(names)


def _checked_manifest(cfg: Config, data_dir: str | Path) -> dict:
    manifest = read_manifest(data_dir)
    stored = manifest["params"]["hr_size"]
    if stored != cfg.hr_size:
        raise ValueError(
            f"{data_dir} holds {stored}x{stored} crops but hr_size={cfg.hr_size}: "
            "use the same hr_size, or ingest again into another --data-dir"
        )
    return manifest
