"""Benchmark: parallel ingest vs a one-process PIL loop, and tf.data throughput.

    python benchmarks/ingest.py [--source ../shared/data/celeba] [--count 2000]
                                [--workers 0] [--batch-size 30] [--batches 40] [--repeat 1]

Measured in the same run, on the first `count` images (sorted by name) of `source`:
  1. a one-process PIL loop: open, center crop, save PNG, with PIL's default zlib
     level (what a straightforward script does);
  2. the same loop with ingest's compress level (isolates the gain of the workers);
  3. `srcore.data.ingest.ingest` (workers, TFRecord shards, test PNGs, manifest);
  4. `train_dataset` of that output: images/s over `batches` batches after warm-up.
The files are read once beforehand so that every variant starts from a warm page cache.
TensorFlow is imported only for step 4: `srgan ingest` does not need it.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srcore.config import Config  # noqa: E402  (after the sys.path tweak)
from srcore.data import ingest as ingest_module  # noqa: E402
from srcore.data import sources  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/celeba"), help="directory or zip of 178x218 faces")
    parser.add_argument("--count", type=int, default=2000, help="images to ingest")
    parser.add_argument("--test-count", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0, help="ingest workers (0 = all usable cores)")
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--batches", type=int, default=40, help="timed batches of the input pipeline")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the ingest measurements, keep the best")
    return parser.parse_args()


def first_images(source: str, count: int) -> list[sources.Entry]:
    return sorted(sources.iter_images(source, demo_count=count), key=lambda e: e.name)[:count]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ingest workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(*args)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - start, cpu_seconds() - cpu


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(runs)


def pil_loop(entries: list[sources.Entry], out: Path, compress_level: int | None) -> None:
    """The one-process baseline."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    options = {} if compress_level is None else {"compress_level": compress_level}
    for name, data in entries:
        with Image.open(str(data) if isinstance(data, sources.FileRef) else _as_file(data)) as image:
            box = ingest_module.center_box(image.width, image.height, 128)
            image.crop(box).save(out / f"{name}.png", **options)


def _as_file(data: sources.ImageData):
    import io

    return io.BytesIO(sources.read_bytes(data))




def pipeline_throughput(cfg: Config, data_dir: Path, warmup: int, batches: int) -> float:
    from srcore.data.dataset import train_dataset  # TensorFlow only from here on

    iterator = iter(train_dataset(cfg, data_dir).repeat())
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    entries = first_images(args.source, args.count)
    if len(entries) < args.count:
        raise SystemExit(f"{args.source} has only {len(entries)} images, --count is {args.count}")
    for _, data in entries:  # warm the page cache for every variant alike
        sources.read_bytes(data)

    cfg = Config(
        source=args.source, limit=args.count, test_count=args.test_count, workers=args.workers,
        force=True, batch_size=args.batch_size, shard_size=500,
    )
    workers = ingest_module.worker_count(args.workers)
    level = ingest_module.PNG_COMPRESS_LEVEL
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        default = best([timed(pil_loop, entries, root / f"pil-default-{i}", None) for i in range(args.repeat)])
        same = best([timed(pil_loop, entries, root / f"pil-level-{i}", level) for i in range(args.repeat)])
        ingested = best([timed(ingest_module.ingest, cfg, root / "data") for _ in range(args.repeat)])
        pipeline = pipeline_throughput(cfg, root / "data", args.warmup, args.batches)

    n = args.count
    rows = [
        ("PIL loop, 1 process, default compress_level", default),
        (f"PIL loop, 1 process, compress_level={level}", same),
        (f"ingest(), {workers} workers, compress_level={level}", ingested),
    ]
    print(f"\n{n} images from {args.source}")
    print(f"{'variant':<48} {'wall s':>7} {'images/s':>9} {'CPU s':>7}")
    for label, (wall, cpu) in rows:
        print(f"{label:<48} {wall:7.2f} {n / wall:9.1f} {cpu:7.2f}")
    print(f"ingest speed-up vs default PIL loop:    {default[0] / ingested[0]:.2f}x")
    print(f"ingest speed-up vs same-level PIL loop: {same[0] / ingested[0]:.2f}x")
    print(f"train_dataset, batch {args.batch_size}: {pipeline:.1f} images/s "
          f"({args.batches} batches after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
