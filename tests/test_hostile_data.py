"""Data under hostile input, round 2 (issue 18): a symlink swapped in after the listing,
truncated PNGs, decompression bombs sized for upscale's x4 output, unbounded workers
and demo limits, an edit that hides from the stale check, a hand-made manifest in
`srgan main`. Every input is built on the fly (a few kB at most)."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers_images import celeba_names, noise_image, small_config, write_images
from helpers_time import within
from PIL import Image

from srcore.config import ConfigError
from srcore.data import ingest as ingest_module
from srcore.data import sources
from srcore.data.images import BadImage, crop_to_png, open_checked
from srcore.data.ingest import ingest


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_rows(width: int, height: int, rows: int, value: int = 200) -> bytes:
    """An RGB PNG whose header says width x height but whose (cleanly ended) zlib
    stream holds only `rows` rows, followed by IEND: PIL loads it without complaint."""
    raw = b"".join(b"\0" + bytes([value]) * (width * 3) for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def skip_reasons(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in manifest["skipped"]}


def files_holding(out: Path, needle: bytes) -> list[str]:
    """Output files (test PNGs, train shards) that contain `needle` (PNG bytes are
    deterministic, and a shard stores each crop's PNG as is)."""
    return [p.name for p in out.rglob("*") if p.is_file() and needle in p.read_bytes()]


# ---- item 7: a symlink (or another file) swapped in after the listing -----------------------


@pytest.mark.parametrize("swap", ["symlink to a file outside", "another file renamed over it"])
def test_a_file_swapped_after_the_listing_is_refused_and_counted(swap: str, tmp_path: Path, monkeypatch):
    faces = write_images(tmp_path / "faces", celeba_names(9))
    secret = np.full((218, 178, 3), 7, np.uint8)  # the outside file's pixels: must land nowhere
    outside = tmp_path / "outside.png"
    Image.fromarray(secret).save(outside)
    victim = faces / "000008.jpg"  # the last selected name: it would be in the test split
    listed = ingest_module._list_candidates

    def list_then_swap(cfg, skipped):
        result = listed(cfg, skipped)
        victim.unlink()
        if swap.startswith("symlink"):
            victim.symlink_to(outside)
        else:
            replacement = tmp_path / "other.jpg"
            Image.fromarray(secret).save(replacement, format="JPEG")
            os.replace(replacement, victim)
        return result

    monkeypatch.setattr(ingest_module, "_list_candidates", list_then_swap)
    out = tmp_path / "data"
    with within(60):
        manifest = ingest(small_config(faces, out, limit=8, test_count=2, showcase_count=1))
    assert "changed since listing" in skip_reasons(manifest)["000008"]
    assert "000008" not in manifest["test_files"] and manifest["test_files"] == ["000007", "000009"]
    assert manifest["counts"] == {"train": 6, "test": 2, "skipped": 1}
    swapped_in = crop_to_png(victim.read_bytes(), 128, 10**8)  # what reading it would have made
    assert files_holding(out, crop_to_png((faces / "000007.jpg").read_bytes(), 128, 10**8))  # the check works
    assert files_holding(out, swapped_in) == []


def test_a_file_ref_opens_without_following_a_link_and_checks_the_inode(tmp_path: Path):
    real = tmp_path / "a.jpg"
    real.write_bytes(b"jpeg bytes")
    (entry,) = [e for e in sources.iter_images(str(tmp_path)) if e.name == "a"]
    assert entry.data() == b"jpeg bytes" and entry.data.nofollow
    real.unlink()
    real.symlink_to("/etc/hostname")
    with pytest.raises(sources.ChangedSinceListing, match="symbolic link"):
        entry.data()


# ---- item 8: truncated images ------------------------------------------------------------


def test_a_png_holding_54_of_218_rows_is_skipped_and_never_in_the_test_split(tmp_path: Path):
    faces = write_images(tmp_path / "faces", celeba_names(9))
    truncated = png_with_rows(178, 218, 54)
    assert len(truncated) < 1000
    with Image.open(io.BytesIO(truncated)) as image:
        image.load()  # what PIL alone makes of it: no error, black rows
    (faces / "000008.png").write_bytes(truncated)
    (faces / "000008.jpg").unlink()
    with within(60):
        manifest = ingest(small_config(faces, tmp_path / "data", limit=8, test_count=2, showcase_count=1))
    assert skip_reasons(manifest)["000008"] == "truncated image: its pixel data hold 54 of 218 rows"
    assert manifest["test_files"] == ["000007", "000009"] and manifest["counts"]["skipped"] == 1
    with pytest.raises(BadImage, match="54 of 218 rows"):
        open_checked(truncated, 10**7)


@pytest.mark.parametrize("mode,interlace", [("RGB", 0), ("RGBA", 1), ("L", 0), ("P", 1), ("1", 0), ("I;16", 0)])
def test_complete_pngs_of_every_mode_still_decode(mode: str, interlace: int):
    image = Image.new(mode, (37, 23))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **({"interlace": 1} if interlace else {}))
    assert open_checked(buffer.getvalue(), 10**6).size == (37, 23)


def test_a_cut_interlaced_png_is_refused():
    buffer = io.BytesIO()
    Image.fromarray(noise_image(3, 40, 30)).save(buffer, format="PNG", interlace=1)
    png = buffer.getvalue()
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start:start + 4])
    idat = zlib.decompress(png[start + 8: start + 8 + length])
    cut = png[:start] + chunk(b"IDAT", zlib.compress(idat[: len(idat) // 2])) + chunk(b"IEND", b"")
    with pytest.raises(BadImage, match="truncated image"):
        open_checked(cut, 10**6)


def jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_then_closed_with_eoi_is_refused(progressive: bool):
    whole = jpeg(noise_image(5), progressive=progressive)
    assert open_checked(whole, 10**7).size == (178, 218)
    for fraction in (0.2, 0.6, 0.95):
        cut = whole[: int(len(whole) * fraction)] + b"\xff\xd9"
        with Image.open(io.BytesIO(cut)) as image:
            image.load()  # what PIL alone makes of it: no error, grey (or blurred) blocks
        with pytest.raises(BadImage, match="JPEG data end before the last rows"):
            open_checked(cut, 10**7)


def test_a_complete_jpeg_with_a_grey_bottom_is_kept():
    pixels = noise_image(6)
    pixels[-40:] = 128  # exactly the decoder's fill value: the probe decode must clear it
    assert open_checked(jpeg(pixels), 10**7).size == (178, 218)
    grey = np.asarray(Image.fromarray(noise_image(7)).convert("L"))
    cut = jpeg(grey)
    with pytest.raises(BadImage, match="JPEG data end"):
        open_checked(cut[: len(cut) // 2] + b"\xff\xd9", 10**7)


# ---- item 6: upscale's decoded size, bounded before decoding, output included -----------------


def test_upscale_refuses_a_tiny_png_declaring_a_huge_output_before_decoding(tiny_generator, tmp_path: Path):
    from srcore.upscale import upscale_files

    bomb = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 6400, 6200, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000, 9))
                     + chunk(b"IEND", b""))
    assert bomb.stat().st_size < 120  # 39.7 M input pixels < max_pixels: only the x4 output is too large
    cut = tmp_path / "cut.png"
    cut.write_bytes(png_with_rows(20, 16, 5))
    with within(30):
        written = upscale_files(tiny_generator, [bomb, cut], tmp_path / "out")
    assert list(written) == []
    reasons = dict(written.skipped)
    assert "25600x24800" in reasons[bomb] and "max_pixels" in reasons[bomb]
    assert "5 of 16 rows" in reasons[cut]


# ---- item 6: workers bounded by the cores, memory by the limit ---------------------------------


def test_workers_are_bounded_by_the_cores(caplog):
    cores = ingest_module.worker_count(0)
    with caplog.at_level(logging.INFO, logger="srcore.data.ingest"):
        assert ingest_module.worker_count(64) == cores
    assert f"workers=64 bounded by the {cores} core(s)" in caplog.text
    assert ingest_module.worker_count(1) == 1


def test_the_demo_source_is_bounded_whatever_the_limit():
    with within(60):
        count = sum(1 for _ in sources.iter_images("demo", demo_count=10**9))
    assert count == sources.DEMO_MAX_IMAGES
    assert sources.describe_source("demo", demo_count=10**9)["images"] == sources.DEMO_MAX_IMAGES


def test_results_in_flight_are_bounded_not_the_whole_batch():
    submitted = []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn, *args):
            submitted.append(len(args[1]))
            return super().submit(fn, *args)

    batch = [sources.Entry(f"n{i}", b"") for i in range(1000)]
    with CountingPool(2) as pool:
        outcomes = ingest_module._bounded_map(lambda e: e.name, batch, pool, chunksize=10, in_flight=4)
        assert next(outcomes) == "n0" and len(submitted) == 4  # not 100 chunks at once
        assert list(outcomes) == [f"n{i}" for i in range(1, 1000)]
    assert len(submitted) == 100


# ---- item 10: the stale check sees an edit that keeps the size and restores the mtime ----------


def test_an_edit_keeping_size_and_mtime_is_not_missed(tmp_path: Path):
    faces = write_images(tmp_path / "faces", celeba_names(6))
    out = tmp_path / "data"
    cfg = small_config(faces, out, limit=6, test_count=2, showcase_count=1)
    first = ingest(cfg)
    target = faces / "000006.jpg"  # a test image
    before = os.stat(target)
    edited = Image.fromarray(np.full((218, 178, 3), 90, np.uint8))
    data = bytearray(target.read_bytes())
    buffer = io.BytesIO()
    edited.save(buffer, format="JPEG", quality=90)
    new = buffer.getvalue()
    data[: min(len(new), len(data))] = new[: len(data)]  # same size, different pixels
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = ingest(cfg)  # no --force
    assert second["source"]["fingerprint"] != first["source"]["fingerprint"]
    assert second["content_hash"] != first["content_hash"]


# ---- item 10: `srgan main` with a manifest lacking content_hash --------------------------------


def test_main_with_a_manifest_lacking_content_hash_is_one_line(tmp_path: Path, tracking):
    import mlflow

    from srcore.steps import main_step

    data = tmp_path / "handmade"
    data.mkdir()
    (data / "manifest.json").write_text('{"format_version": 1, "train_shards": [], "test_files": []}')
    cfg = small_config(data, tmp_path / "unused")
    with pytest.raises(ConfigError) as caught:
        main_step(cfg)
    message = str(caught.value)
    assert "\n" not in message and str(data / "manifest.json") in message
    assert "no content_hash" in message and "srgan ingest" in message
    experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
    assert experiment is None or not mlflow.search_runs([experiment.experiment_id]).shape[0]  # no run opened
