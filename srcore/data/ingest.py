"""Ingest: source images -> 128x128 center crops -> train TFRecord shards, test PNGs,
manifest.json (see docs/ARCHITECTURE.md, "Ingest output").

Selection (as in the seed tutorial, with bad files handled):
  candidates = the source's images sorted by name (basename stem; later duplicates
  dropped), optionally only CelebA partitions 0 and 1 (train + val) of
  `cfg.partition_file`; the first `cfg.limit` candidates that are valid images are
  selected. A bad candidate (empty, truncated, not an image, smaller than hr_size,
  over max_pixels) is skipped, recorded in the manifest with its reason, and the next
  candidate takes its place.
Split: the last `test_count` selected images are the test split, the rest train; the
  last `showcase_count` test images are the showcase.

Decoding, cropping and PNG encoding run in a pool of 'spawn' worker processes that
never import TensorFlow (this module and srcore.data.sources stay TF-free). The
parent writes the TFRecord shards itself with a small TFRecord writer (crc32c from
google-crc32c, which kfp already depends on), falling back to tf.io.TFRecordWriter
when that package is missing, so that ingest does not pay TensorFlow's import.

The output is built in a hidden sibling folder and renamed into place only when
complete; the same inputs give byte-identical outputs.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import secrets
import shutil
import struct
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from srcore.config import Config, ConfigError
from srcore.data import sources
from srcore.progress import progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_DIR, TEST_DIR = "train", "test"
#: zlib level 1 encodes 128x128 crops ~3x faster than PIL's default 6 and the files
#: are only ~3% larger (measured on CelebA crops); a fixed level keeps bytes stable.
PNG_COMPRESS_LEVEL = 1
#: CelebA list_eval_partition.txt: 0 = train, 1 = validation, 2 = test (never used)
KEPT_PARTITIONS = ("0", "1")

SELECTION_RULE = (
    "candidates sorted by name (basename without extension; of equal names the first path "
    "in sorted order is used); with partition_file only partitions 0 and 1; the first "
    "`limit` candidates that are valid images are selected, invalid ones are skipped, "
    "recorded and replaced by the next candidates"
)
SPLIT_RULE = (
    "the last test_count selected images are the test split, the rest train; "
    "showcase = the last showcase_count test images"
)
COLOR_RULE = (
    "8-bit RGB: EXIF orientation applied; grayscale, palette, CMYK and other modes converted "
    "with PIL; 16-bit values scaled by 255/65535; alpha composited on black; ICC profiles ignored"
)


class IngestError(RuntimeError):
    """Ingest cannot produce a usable dataset; the message says why and what to do."""


class BadImage(ValueError):
    """A candidate that cannot be used; the message is the reason in the manifest."""


class Outcome(NamedTuple):
    """What a worker made of one candidate: PNG bytes, or the reason it was skipped."""

    name: str
    png: bytes | None
    reason: str | None


# =====================================================================================
# entry point
# =====================================================================================


def ingest(cfg: Config, out_dir: str | os.PathLike | None = None) -> dict:
    """Build (or reuse) the dataset in `out_dir` (default `cfg.data_dir`); return the manifest."""
    cfg.validate()
    out = Path(out_dir if out_dir is not None else cfg.data_dir).expanduser().absolute()
    source = sources.describe_source(cfg.source, sha256=cfg.sha256, demo_count=cfg.limit)
    params = ingest_params(cfg)

    existing = _read_existing_manifest(out)
    if existing is not None and not cfg.force and _is_up_to_date(existing, out, source, params):
        log.info("%s is up to date (same source and parameters): nothing to do; use --force to redo", out)
        return existing
    _refuse_foreign_dir(out)

    skipped: list[dict[str, str]] = []
    candidates, selection = _list_candidates(cfg, skipped)
    _check_split_params(cfg, len(candidates))

    _warn_about_stale_temp_dirs(out)
    temp = _sibling(out, "tmp")
    try:
        temp.mkdir(parents=True)  # parents: out's parent may not exist yet
        manifest = _build(cfg, candidates, skipped, selection, source, params, temp)
        _install(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    counts = manifest["counts"]
    log.info(
        "ingest done: %d train (%d shards), %d test, %d skipped -> %s (content sha256 %s)",
        counts["train"], len(manifest["train_shards"]), counts["test"], counts["skipped"],
        out, manifest["content_hash"][:12],
    )
    return manifest


def ingest_params(cfg: Config) -> dict[str, Any]:
    """Every parameter that changes the output: equal params + source => same bytes."""
    hr = cfg.hr_size
    partition = Path(cfg.partition_file).expanduser().resolve() if cfg.partition_file else None
    if partition is not None and not partition.is_file():
        raise ConfigError(
            f"invalid parameter partition_file={cfg.partition_file!r}: no such file; pass CelebA's "
            "list_eval_partition.txt or leave it empty"
        )
    return {
        "limit": cfg.limit,
        "test_count": cfg.test_count,
        "showcase_count": cfg.showcase_count,
        "hr_size": hr,
        "shard_size": cfg.shard_size,
        "max_pixels": cfg.max_pixels,
        # The file's name and contents, not its path: a moved copy is the same selection.
        "partition_file": partition.name if partition else "",
        "partition_sha256": _file_sha256(partition) if partition else "",
        "partitions_kept": list(KEPT_PARTITIONS) if partition else [],
        "selection": SELECTION_RULE,
        "split": SPLIT_RULE,
        "crop": (
            f"center {hr}x{hr}, box=((w-{hr})//2, (h-{hr})//2, (w-{hr})//2+{hr}, (h-{hr})//2+{hr}), "
            f"no resize; 178x218 -> {center_box(178, 218, hr) if hr <= 178 else 'too small'}"
        ),
        "color": COLOR_RULE,
        "png": f"lossless, zlib compress_level={PNG_COMPRESS_LEVEL}, no metadata chunks",
    }


# =====================================================================================
# selection and parameter checks (before any work)
# =====================================================================================


def _list_candidates(cfg: Config, skipped: list[dict[str, str]]) -> tuple[list[sources.Entry], dict[str, int]]:
    def on_skip(name: str, path: str, reason: str) -> None:
        skipped.append({"name": name, "path": path, "reason": reason})

    entries = sources.iter_images(
        cfg.source, cache_dir=cfg.cache_dir, sha256=cfg.sha256, demo_count=cfg.limit, on_skip=on_skip
    )
    candidates = sorted(entries, key=lambda entry: entry.name)
    selection = {"in_source": len(candidates), "excluded_by_partition": 0}
    if cfg.partition_file:
        partitions = read_partition_file(cfg.partition_file)
        kept = [c for c in candidates if partitions.get(c.name) in KEPT_PARTITIONS]
        selection["excluded_by_partition"] = len(candidates) - len(kept)
        candidates = kept
    selection["candidates"] = len(candidates)
    return candidates, selection


def read_partition_file(path: str | os.PathLike) -> dict[str, str]:
    """CelebA list_eval_partition.txt ('000001.jpg 0' lines) -> {'000001': '0'}."""
    partitions: dict[str, str] = {}
    for number, line in enumerate(Path(path).expanduser().read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ConfigError(
                f"invalid parameter partition_file={str(path)!r}: line {number} is {line!r}, "
                "expected '<file name> <partition>' as in CelebA's list_eval_partition.txt"
            )
        partitions[sources.name_of(fields[0])] = fields[1]
    return partitions


def _check_split_params(cfg: Config, candidate_count: int) -> None:
    if candidate_count == 0:
        raise ConfigError(f"invalid parameter source={cfg.source!r}: it holds no usable images (.jpg, .jpeg, .png, .webp, .bmp)")
    available = min(cfg.limit, candidate_count)
    if cfg.test_count >= available:
        raise ConfigError(
            f"invalid parameter test_count={cfg.test_count}: must be smaller than the number of "
            f"images available, {available} (= min(limit={cfg.limit}, {candidate_count} candidates "
            "in the source)), so that the train split is not empty; lower test_count or raise limit"
        )
    if cfg.limit > candidate_count:
        log.warning("limit=%d but the source has only %d candidate images: using all", cfg.limit, candidate_count)


# =====================================================================================
# building the output
# =====================================================================================


def _build(
    cfg: Config,
    candidates: Sequence[sources.Entry],
    skipped: list[dict[str, str]],
    selection: dict[str, int],
    source: dict,
    params: dict,
    folder: Path,
) -> dict:
    shards = ShardWriter(folder / TRAIN_DIR, cfg.shard_size)
    # The test split is the tail of the selection, whose end is known only at the end:
    # keep the latest test_count valid crops here, everything older is train.
    tail: deque[Outcome] = deque()
    examined = 0
    for outcome in _select_valid(cfg, candidates):
        examined += 1
        if outcome.png is None:
            log.warning("skipping %s: %s", outcome.name, outcome.reason)
            skipped.append({"name": outcome.name, "reason": outcome.reason or "invalid"})
            continue
        tail.append(outcome)
        if len(tail) > cfg.test_count:
            oldest = tail.popleft()
            shards.write(oldest.name, oldest.png)  # type: ignore[arg-type]
    selection["examined"] = examined

    valid = shards.count + len(tail)
    if valid < cfg.test_count + 1:
        raise IngestError(
            f"only {valid} valid images among the {examined} examined in {cfg.source}: ingest needs "
            f"at least test_count + 1 = {cfg.test_count + 1} (see the skipped reasons logged above); "
            "use a source with more valid images or lower test_count"
        )
    if valid < cfg.limit:
        log.warning("only %d valid images found (limit=%d): the source ran out", valid, cfg.limit)

    train_shards = shards.finish()
    test_names = _write_test_pngs(folder / TEST_DIR, tail)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "params": params,
        "counts": {"train": shards.count, "test": len(test_names), "skipped": len(skipped)},
        "selection": selection,
        "train_shards": train_shards,
        "test_files": test_names,
        "showcase": test_names[len(test_names) - cfg.showcase_count:] if cfg.showcase_count else [],
        "skipped": skipped,
        "content_hash": content_hash(folder),
    }
    # Written last: a folder without manifest.json is never mistaken for a finished ingest.
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_test_pngs(folder: Path, outcomes: Iterable[Outcome]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for outcome in outcomes:
        path = folder / f"{outcome.name}.png"
        if path.parent != folder:  # names are sanitised by sources; this is the last guard
            raise IngestError(f"refusing to write {path}: the name {outcome.name!r} leaves {folder}")
        path.write_bytes(outcome.png)  # type: ignore[arg-type]
        names.append(outcome.name)
    return names


def content_hash(folder: Path) -> str:
    """sha256 over every output file but manifest.json, in sorted relative-path order:
    for each file, `<relative path>\\0<hex sha256 of its bytes>\\n` is hashed."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(_file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# =====================================================================================
# parallel processing
# =====================================================================================


def _select_valid(cfg: Config, candidates: Sequence[sources.Entry]) -> Iterator[Outcome]:
    """Outcomes in candidate order until `limit` valid images are found (or none are left).

    The first round examines exactly `limit` candidates; each later round examines as
    many more as there were bad ones, so the result is "the first `limit` valid images"
    without decoding the whole source.
    """
    first_round = min(cfg.limit, len(candidates))
    work = functools.partial(process_candidate, hr_size=cfg.hr_size, max_pixels=cfg.max_pixels)
    workers = min(worker_count(cfg.workers), first_round)
    with _worker_pool(workers) as pool, progress(total=first_round, desc="ingest", unit="img") as bar:
        position, valid = 0, 0
        while valid < cfg.limit and position < len(candidates):
            batch = candidates[position: position + cfg.limit - valid]
            if position:
                bar.total += len(batch)
                bar.refresh()
            position += len(batch)
            for outcome in _map_in_order(work, batch, pool, workers):
                valid += outcome.png is not None
                bar.update(1)
                yield outcome


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A 'spawn' process pool, or None to work in this process (workers <= 1).

    'spawn' rather than 'fork': the parent may have imported TensorFlow (or MLflow)
    and started threads, and forking such a process can deadlock. An executor rather
    than multiprocessing.Pool: when workers cannot start, Pool respawns them forever,
    the executor reports a broken pool (handled in _map_in_order).
    """
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _map_in_order(
    work: Callable[[sources.Entry], Outcome],
    batch: Sequence[sources.Entry],
    pool: ProcessPoolExecutor | None,
    workers: int,
) -> Iterator[Outcome]:
    done = 0
    if pool is not None:
        try:
            for outcome in pool.map(work, batch, chunksize=_chunksize(len(batch), workers)):
                done += 1
                yield outcome
            return
        except BrokenProcessPool as err:
            log.warning(
                "ingest worker processes failed (%s); continuing in this process. A script that "
                "calls ingest() must guard its top level with `if __name__ == '__main__':`, as "
                "'spawn' workers import the main module", err,
            )
    for entry in batch[done:]:
        yield work(entry)


def _chunksize(items: int, workers: int) -> int:
    # Enough chunks per worker to balance the load, few enough to keep IPC cheap.
    return max(1, min(64, items // (workers * 8)))


def worker_count(requested: int) -> int:
    """`requested`, or when 0 the CPUs this process may really use (affinity and the
    cgroup CPU quota of a Kubernetes pod, which os.cpu_count() does not see)."""
    if requested > 0:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _cgroup_cpu_quota() or cpus))


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


# =====================================================================================
# one image (runs in worker processes: keep TensorFlow out of here)
# =====================================================================================


def process_candidate(entry: sources.Entry, hr_size: int, max_pixels: int) -> Outcome:
    """Read, validate, center-crop and PNG-encode one candidate; never raises."""
    name, data = entry
    try:
        raw = sources.read_bytes(data)
    except sources.EntryTooLarge as err:
        return Outcome(name, None, str(err))
    except Exception as err:  # missing file, corrupt zip member, ...
        return Outcome(name, None, f"unreadable: {type(err).__name__}: {err}")
    if not raw:
        return Outcome(name, None, "empty file")
    try:
        return Outcome(name, crop_to_png(raw, hr_size, max_pixels), None)
    except BadImage as err:
        return Outcome(name, None, str(err))
    except Exception as err:  # whatever else a hostile file provokes in a decoder
        return Outcome(name, None, f"not a valid image: {type(err).__name__}: {err}")


def crop_to_png(raw: bytes, hr_size: int, max_pixels: int) -> bytes:
    """Encoded image bytes -> PNG bytes of its center hr_size x hr_size crop (8-bit RGB)."""
    image = _open_checked(raw, hr_size, max_pixels)
    image = _apply_exif_orientation(image)
    crop = image.crop(center_box(image.width, image.height, hr_size))
    return encode_png(to_rgb8(crop))


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The center size x size crop box; (25, 45, 153, 173) for 178x218 and 128."""
    left, top = (width - size) // 2, (height - size) // 2
    return left, top, left + size, top + size


def _open_checked(raw: bytes, hr_size: int, max_pixels: int) -> Image.Image:
    with _pixel_limit(max_pixels), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise BadImage("not an image: unrecognised format") from None
        width, height = image.size
        # Checked on the header, before decoding a single pixel.
        if width * height > max_pixels:
            raise BadImage(f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
        if width < hr_size or height < hr_size:
            raise BadImage(f"too small: {width}x{height} < {hr_size}x{hr_size}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadImage(f"truncated or corrupt image: {err}") from None
    return image


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's own bomb check uses a global; make it ours for the duration."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    # Phone photos store rotation as a tag; CelebA has none, so this is usually a no-op.
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF must not cost us an otherwise good image
        return image
    if orientation in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see COLOR_RULE)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _wide_gray_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode == "F":  # floats: assume the 0..255 scale
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    else:  # 16-bit (or 32-bit holding 16-bit) integers: rescale, don't clip at 255
        wide = np.clip(values.astype(np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)))


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    pixels = np.asarray(rgba).astype(np.uint32)
    rgb = (pixels[..., :3] * pixels[..., 3:4] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG with deterministic bytes: a fresh image has no info to copy into
    chunks (ICC profile, EXIF, dpi, text), and the zlib level is fixed."""
    clean = Image.frombytes("RGB", image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


# =====================================================================================
# TFRecord shards
# =====================================================================================


def serialize_example(name: str, png: bytes) -> bytes:
    """tf.train.Example{"image": bytes_list[png], "name": bytes_list[name]} encoded by hand.

    Byte-identical to `tf.train.Example(...).SerializeToString(deterministic=True)`
    (map keys in sorted order), without importing TensorFlow; tests check that.
    """

    def feature(value: bytes) -> bytes:
        return _proto_field(1, _proto_field(1, value))  # Feature.bytes_list.value

    def map_entry(key: str, value: bytes) -> bytes:
        return _proto_field(1, _proto_field(1, key.encode()) + _proto_field(2, feature(value)))

    features = map_entry("image", png) + map_entry("name", name.encode())
    return _proto_field(1, features)  # Example.features


def _proto_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class _RecordFile:
    """TFRecord framing: len (u64) | masked crc32c(len) | data | masked crc32c(data)."""

    def __init__(self, path: Path, crc32c: Callable[[bytes], int]):
        self._file = open(path, "wb")
        self._crc32c = crc32c

    def _masked_crc(self, data: bytes) -> bytes:
        crc = self._crc32c(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + self._masked_crc(length) + record + self._masked_crc(record))

    def close(self) -> None:
        self._file.close()


def open_record_file(path: Path) -> Any:
    """A TFRecord writer (write(bytes), close()) without TensorFlow when possible."""
    try:
        import google_crc32c
    except ImportError:
        import tensorflow as tf  # slow import, but correct

        return tf.io.TFRecordWriter(str(path))
    return _RecordFile(path, google_crc32c.value)


class ShardWriter:
    """Writes train examples into shards of `shard_size`; names them
    train-00000-of-0000N.tfrecord once N is known (in finish())."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder = folder
        self.shard_size = shard_size
        self.count = 0
        self._paths: list[Path] = []
        self._writer: Any = None

    def write(self, name: str, png: bytes) -> None:
        if self.count % self.shard_size == 0:
            self._close_current()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._paths.append(self.folder / f"train-{len(self._paths):05d}.partial")
            self._writer = open_record_file(self._paths[-1])
        self._writer.write(serialize_example(name, png))
        self.count += 1

    def finish(self) -> list[str]:
        self._close_current()
        total = len(self._paths)
        names = []
        for index, path in enumerate(self._paths):
            final = path.with_name(f"train-{index:05d}-of-{total:05d}.tfrecord")
            path.rename(final)
            names.append(final.name)
        return names

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# =====================================================================================
# idempotence and atomic replacement
# =====================================================================================


def _read_existing_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _is_up_to_date(manifest: dict, out: Path, source: dict, params: dict) -> bool:
    # Compare through JSON so that tuples and lists, ints and floats compare as stored.
    same = (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("source") == json.loads(json.dumps(source))
        and manifest.get("params") == json.loads(json.dumps(params))
    )
    if not same:
        return False
    expected = [out / TRAIN_DIR / s for s in manifest.get("train_shards", [])]
    expected += [out / TEST_DIR / f"{n}.png" for n in manifest.get("test_files", [])]
    return all(path.is_file() for path in expected)


def _refuse_foreign_dir(out: Path) -> None:
    """Never replace a folder that is not an earlier ingest output (e.g. --data-dir .)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ConfigError(
            f"invalid parameter data_dir={str(out)!r}: it exists and is not an ingest output "
            f"(no {MANIFEST}); pass a new or empty folder"
        )


def _warn_about_stale_temp_dirs(out: Path) -> None:
    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        log.warning("%s is left over from an interrupted ingest (or one running now); delete it when none runs", stale)


def _sibling(out: Path, role: str) -> Path:
    """A hidden folder name beside `out` (same file system, so renames are atomic).
    The pid plus a random suffix: pods sharing a volume can have equal pids."""
    return out.parent / f".{out.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"


def _install(temp: Path, out: Path) -> None:
    """Move the finished folder into place; an old output is replaced only now."""
    if not out.exists():
        os.rename(temp, out)
        return
    old = _sibling(out, "old")
    os.rename(out, old)
    try:
        os.rename(temp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
