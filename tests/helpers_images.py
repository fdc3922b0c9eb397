"""Small synthetic images and sources for the data tests (no CelebA, no network)."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from srcore.config import Config

CELEBA_DIR = Path(__file__).resolve().parents[2] / "shared/data/celeba"
CELEBA_BOX = (25, 45, 153, 173)  # the seed's center crop of a 178x218 image


def noise_image(seed: int, width: int = 178, height: int = 218) -> np.ndarray:
    """A textured RGB uint8 image: smooth gradient plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x[..., None] * rng.uniform(0.3, 1.0, 3) + y[..., None] * rng.uniform(0.3, 1.0, 3)) % 256
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(seed: int, width: int = 178, height: int = 218) -> bytes:
    return encode(noise_image(seed, width, height), "JPEG", quality=90)


def write_images(folder: Path, names: list[str], fmt: str = "jpg", first_seed: int = 0) -> Path:
    """`folder/<name>.<fmt>` 178x218 images, one distinct noise image each."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, name in enumerate(names):
        image = noise_image(first_seed + offset)
        data = encode(image, "JPEG", quality=90) if fmt == "jpg" else encode(image, fmt.upper())
        (folder / f"{name}.{fmt}").write_bytes(data)
    return folder


def celeba_names(count: int, start: int = 1) -> list[str]:
    return [f"{i:06d}" for i in range(start, start + count)]


def write_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """A zip with `members` (arcname -> bytes) and symlink entries (arcname -> target)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3  # unix, so that external_attr carries the file type
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def small_config(source: str | Path, data_dir: str | Path, **overrides: Any) -> Config:
    """Tiny, single-process defaults for fast tests; overrides win."""
    values: dict[str, Any] = dict(
        source=str(source), data_dir=str(data_dir), limit=8, test_count=3, showcase_count=2,
        shard_size=3, workers=1, batch_size=2, shuffle_buffer=16, cache_dir=str(Path(data_dir).parent / "cache"),
    )
    values.update(overrides)
    return Config(**values)


def tree(root: Path) -> set[str]:
    """All paths under root, relative, for before/after comparisons."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def read_train_examples(data_dir: Path, manifest: dict) -> list[tuple[str, bytes]]:
    """(name, png) of every train record in shard order, read by TensorFlow itself
    (which also checks the records' crc32c)."""
    import tensorflow as tf

    out = []
    for shard in manifest["train_shards"]:
        for record in tf.data.TFRecordDataset(str(data_dir / "train" / shard)):
            example = tf.train.Example.FromString(record.numpy())
            feature = example.features.feature
            out.append((feature["name"].bytes_list.value[0].decode(), feature["image"].bytes_list.value[0]))
    return out
