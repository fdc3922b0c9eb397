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

Bounds: workers = min(cfg.workers, the usable cores) (0 = the cores); memory holds the
candidate list (a name and a small reader per file of the source; the demo source has
at most sources.DEMO_MAX_IMAGES), the test tail (test_count PNGs, < limit) and at most
4 * workers chunks of <= 64 images in flight; train images are written to the shards as
they come, so nothing else grows with `limit`.

The output is built in a hidden sibling folder and renamed into place only when
complete (srcore.atomic.replace_dir_atomically: an existing folder is replaced only
when it is an earlier ingest output holding nothing else); the same inputs give
byte-identical outputs. Worker processes die with ingest (parent-death signal), and
the hidden folders of an ingest that was killed are removed by the next run.

The pieces live beside this module: srcore.data.sources (reading sources),
srcore.data.images (decode, crop, PNG), srcore.data.tfrecord (the shard codec) and
srcore.data.manifest (the manifest format).
"""

from __future__ import annotations

import ctypes
import contextlib
import functools
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

from srcore.atomic import OutputDirError, path_error, remove_stale_siblings, replace_dir_atomically
from srcore.config import Config, ConfigError
from srcore.data import sources
from srcore.data.images import (  # noqa: F401 - re-exported: ingest's image rules
    COLOR_RULE, PNG_COMPRESS_LEVEL, BadImage, center_box, crop_to_png, encode_png, to_rgb8,
)
from srcore.data.manifest import (  # noqa: F401 - re-exported for older imports
    FORMAT_VERSION, MANIFEST, TEST_DIR, TRAIN_DIR, content_hash, file_sha256, proven_output_files,
    load_manifest, write_manifest,
)
from srcore.data.tfrecord import ShardWriter, open_record_file, serialize_example  # noqa: F401
from srcore.progress import progress

log = logging.getLogger(__name__)

OUTPUT_KIND = "ingest"
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


class IngestError(RuntimeError):
    """Ingest cannot produce a usable dataset; the message says why and what to do."""


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
    params = ingest_params(cfg)
    _check_output_dir(out)
    _check_source_outside_output(cfg.source, out)
    remove_stale_siblings(out)

    skipped: list[dict[str, str]] = []
    candidates, selection = _list_candidates(cfg, skipped)
    source = source_identity(cfg, candidates)
    existing = load_manifest(out)
    if existing is not None and not cfg.force and _is_up_to_date(existing, out, source, params):
        log.info("%s is up to date (same source files and parameters): nothing to do; use --force to redo", out)
        return existing
    _check_split_params(cfg, len(candidates))

    def build(folder: Path) -> dict:
        return _build(cfg, candidates, skipped, selection, source, params, folder)

    try:
        manifest = replace_dir_atomically(out, OUTPUT_KIND, build, proven_files=proven_output_files)
    except OutputDirError as err:
        raise ConfigError(f"invalid parameter data_dir={str(out)!r}: {err}") from None
    counts = manifest["counts"]
    log.info(
        "ingest done: %d train (%d shards), %d test, %d skipped -> %s (content sha256 %s)",
        counts["train"], len(manifest["train_shards"]), counts["test"], counts["skipped"],
        out, manifest["content_hash"][:12],
    )
    return manifest


def source_identity(cfg: Config, candidates: Sequence[sources.Entry]) -> dict:
    """The source's location plus a fingerprint of every candidate file (size + mtime in a
    folder, CRC + size in a zip): a changed, added or removed image re-ingests."""
    source = sources.describe_source(cfg.source, sha256=cfg.sha256, demo_count=cfg.limit)
    if source["kind"] in ("directory", "zip", "url"):
        source["candidates"] = len(candidates)
        source["fingerprint"] = sources.fingerprint(candidates)
    return source


def _check_source_outside_output(spec: str, out: Path) -> None:
    """A source inside the output folder would be deleted by the very ingest reading it."""
    if spec == sources.DEMO_NAME or "://" in spec:
        return
    source = Path(spec).expanduser().resolve()
    if source == out.resolve() or out.resolve() in source.parents:
        raise ConfigError(
            f"invalid parameter data_dir={str(out)!r}: the source {source} is inside it, and ingest replaces "
            "data_dir as a whole; pass a data_dir outside the source"
        )


def _check_output_dir(out: Path) -> None:
    """Before any work: the output must be replaceable (srcore.atomic's ownership rule)."""
    from srcore.atomic import check_replaceable

    try:
        check_replaceable(out, OUTPUT_KIND, proven_files=proven_output_files)
    except OutputDirError as err:
        raise ConfigError(f"invalid parameter data_dir={str(out)!r}: {err}") from None
    except OSError as err:
        raise path_error(err, out, "cannot use output folder") from err


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
        "partition_sha256": file_sha256(partition) if partition else "",
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
        cfg.source, cache_dir=cfg.cache_dir, sha256=cfg.sha256, demo_count=cfg.limit, on_skip=on_skip,
        max_bytes=cfg.max_file_bytes, follow_symlinks=cfg.follow_symlinks,
        download_timeout_s=cfg.download_timeout_s, max_download_bytes=cfg.max_download_bytes,
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


#: CelebA's list_eval_partition.txt is 3.4 MB for 202,599 faces
MAX_PARTITION_BYTES = 64 << 20


def read_partition_file(path: str | os.PathLike) -> dict[str, str]:
    """CelebA list_eval_partition.txt ('000001.jpg 0' lines) -> {'000001': '0'}."""
    partitions: dict[str, str] = {}
    file = Path(path).expanduser()
    bad = f"invalid parameter partition_file={str(path)!r}"
    if not file.is_file():  # a FIFO would block, /dev/zero would fill memory
        raise ConfigError(f"{bad}: {'not a regular file' if file.exists() else 'no such file'}; pass "
                          "CelebA's list_eval_partition.txt")
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_PARTITION_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{bad}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{bad}: not UTF-8 text (byte {err.start})") from None
    if len(raw) > MAX_PARTITION_BYTES:
        raise ConfigError(f"{bad}: larger than {MAX_PARTITION_BYTES} bytes (CelebA's is 3.4 MB)")
    for number, line in enumerate(text.splitlines(), start=1):
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
        raise ConfigError(
            f"invalid parameter source={sources.redact_url(cfg.source)!r}: it holds no usable images "
            "(.jpg, .jpeg, .png, .webp, .bmp)"
        )
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
            log.warning("skipping %s: %s", sources.printable(outcome.name), sources.printable(outcome.reason or ""))
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
            f"only {valid} valid images among the {examined} examined in {sources.redact_url(cfg.source)}: ingest needs "
            f"at least test_count + 1 = {cfg.test_count + 1} (see the skipped reasons logged above); "
            "use a source with more valid images or lower test_count"
        )
    if valid < cfg.limit:
        log.warning("only %d valid images found (limit=%d): the source ran out", valid, cfg.limit)

    train_shards = shards.finish()
    test_names = _write_test_pngs(folder / TEST_DIR, tail, skipped)
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
    write_manifest(folder, manifest)
    return manifest


def _write_test_pngs(folder: Path, outcomes: Iterable[Outcome], skipped: list[dict[str, str]]) -> list[str]:
    """Write the test PNGs; one that the file system refuses is skipped and recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for outcome in outcomes:
        path = folder / f"{outcome.name}.png"
        if path.parent != folder:  # names are sanitised by sources; this is the last guard
            raise IngestError(f"refusing to write {path}: the name {outcome.name!r} leaves {folder}")
        try:
            path.write_bytes(outcome.png)  # type: ignore[arg-type]
        except OSError as err:
            reason = str(path_error(err, path, "cannot write"))
            log.warning("skipping %s: %s", sources.printable(outcome.name), sources.printable(reason))
            skipped.append({"name": outcome.name, "reason": reason})
            path.unlink(missing_ok=True)
            continue
        names.append(outcome.name)
    return names


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
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent, initargs=(os.getpid(),),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when ingest ends, even by kill -9.

    Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG).
    Elsewhere (or if prctl fails): a daemon thread polls the parent pid once a second.
    """
    if _set_parent_death_signal(signal.SIGKILL) and os.getppid() == parent_pid:
        return
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _set_parent_death_signal(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signum), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _map_in_order(
    work: Callable[[sources.Entry], Outcome],
    batch: Sequence[sources.Entry],
    pool: ProcessPoolExecutor | None,
    workers: int,
) -> Iterator[Outcome]:
    done = 0
    if pool is not None:
        try:
            for outcome in _bounded_map(work, batch, pool, _chunksize(len(batch), workers), workers * 4):
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


def _bounded_map(
    work: Callable[[sources.Entry], Outcome],
    batch: Sequence[sources.Entry],
    pool: ProcessPoolExecutor,
    chunksize: int,
    in_flight: int,
) -> Iterator[Outcome]:
    """pool.map(work, batch) in order, with at most `in_flight` chunks submitted ahead of
    the consumer: Executor.map submits the whole batch at once and holds every result
    that the consumer has not taken yet, so its memory grew with `limit`."""
    pending: deque = deque()
    chunks = (batch[i: i + chunksize] for i in range(0, len(batch), chunksize))
    for chunk in chunks:
        pending.append(pool.submit(_run_chunk, work, chunk))
        if len(pending) >= in_flight:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


def _run_chunk(work: Callable[[sources.Entry], Outcome], chunk: Sequence[sources.Entry]) -> list[Outcome]:
    return [work(entry) for entry in chunk]


def _chunksize(items: int, workers: int) -> int:
    # Enough chunks per worker to balance the load, few enough to keep IPC cheap.
    return max(1, min(64, items // (workers * 8)))


def worker_count(requested: int) -> int:
    """The CPUs this process may really use (affinity and the cgroup CPU quota of a
    Kubernetes pod, which os.cpu_count() does not see) when `requested` is 0, else
    `requested` bounded by them: decoding is CPU-bound, so more workers than cores only
    add memory (each spawn worker costs ~150 MB; 64 of them took 10 GB)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    cores = max(1, min(cpus, _cgroup_cpu_quota() or cpus))
    if requested <= 0:
        return cores
    if requested > cores:
        log.info("workers=%d bounded by the %d core(s) this process may use: %d workers", requested, cores, cores)
    return min(requested, cores)


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
    except (sources.EntryTooLarge, sources.NotRegularFile, sources.ChangedSinceListing) as err:
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


# =====================================================================================
# idempotence and atomic replacement
# =====================================================================================


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
