"""Ingest: selection, crop geometry, colour modes, bad inputs, zip safety, split,
determinism, idempotence, atomicity (issue #2). Small synthetic images; the one
acceptance test on real faces is marked `celeba`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from helpers_images import (
    CELEBA_BOX,
    CELEBA_DIR,
    celeba_names,
    encode,
    jpeg_bytes,
    noise_image,
    read_png,
    read_train_examples,
    small_config,
    tree,
    write_images,
    write_zip,
)
from PIL import Image

from srcore.config import ConfigError
from srcore.data import ingest as ingest_module
from srcore.data import sources
from srcore.data.ingest import IngestError, center_box, ingest
from srcore.progress import progress


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """10 JPEG 'faces' 000001..000010, 178x218."""
    return write_images(tmp_path / "faces", celeba_names(10))


def _skip_reasons(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in manifest["skipped"]}


# ---- geometry and pixels ----------------------------------------------------------------


def test_center_box_is_the_seed_box():
    assert center_box(178, 218, 128) == CELEBA_BOX
    assert center_box(128, 128, 128) == (0, 0, 128, 128)
    assert center_box(129, 131, 128) == (0, 1, 128, 129)  # odd margins: floor on the left/top


def test_crops_are_pixel_exact_pil_crops(faces: Path, tmp_path: Path):
    out = tmp_path / "data"
    manifest = ingest(small_config(faces, out))

    for name in manifest["test_files"]:
        with Image.open(faces / f"{name}.jpg") as original:
            expected = np.asarray(original.crop(CELEBA_BOX))
        assert read_png(out / "test" / f"{name}.png").shape == (128, 128, 3)
        np.testing.assert_array_equal(read_png(out / "test" / f"{name}.png"), expected)
    for name, png in read_train_examples(out, manifest):
        with Image.open(faces / f"{name}.jpg") as original:
            expected = np.asarray(original.crop(CELEBA_BOX))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_pngs_carry_no_metadata(tmp_path: Path):
    folder = tmp_path / "src"
    folder.mkdir()
    image = Image.fromarray(noise_image(1))
    exif = Image.Exif()
    exif[0x0131] = "camera software"
    for i in range(4):  # an ICC profile and EXIF that must not reach the crops
        image.save(folder / f"{i:06d}.jpg", quality=90, icc_profile=b"fake-icc" * 10, exif=exif)
    manifest = ingest(small_config(folder, tmp_path / "data", limit=4, test_count=1, showcase_count=1))
    png = (tmp_path / "data" / "test" / f"{manifest['test_files'][0]}.png").read_bytes()
    chunks = _png_chunk_types(png)
    assert chunks == ["IHDR"] + ["IDAT"] * (len(chunks) - 2) + ["IEND"]


def _png_chunk_types(png: bytes) -> list[str]:
    types, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        types.append(png[pos + 4:pos + 8].decode())
        pos += 12 + length
    return types


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("L", lambda a: Image.fromarray(a[..., 0])),
        ("1", lambda a: Image.fromarray(a[..., 0] > 128)),
        ("P", lambda a: Image.fromarray(a).convert("P")),
        ("CMYK", lambda a: Image.fromarray(a).convert("CMYK")),
        ("LA", lambda a: Image.fromarray(a).convert("LA")),
        ("RGBA", lambda a: Image.fromarray(a).convert("RGBA")),
    ],
)
def test_modes_become_8bit_rgb(mode: str, make, tmp_path: Path):
    image = make(noise_image(3))
    assert image.mode == mode
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    png = ingest_module.crop_to_png(encode(image, fmt), 128, 10**7)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "RGB" and decoded.size == (128, 128)


def test_alpha_is_composited_on_black():
    rgba = np.zeros((218, 178, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[100, 100, 3] = 0  # fully transparent pixel: black
    rgba[100, 101, 3] = 128  # half transparent: about half as bright
    crop = np.asarray(Image.open(io.BytesIO(ingest_module.crop_to_png(encode(rgba), 128, 10**7))))
    left, top = CELEBA_BOX[:2]
    assert crop[100 - top, 100 - left].tolist() == [0, 0, 0]
    assert crop[100 - top, 101 - left].tolist() == [100, 100, 100]  # 200 * 128 / 255 = 100.4
    assert crop[0, 0].tolist() == [200, 200, 200]


def test_palette_with_transparency_and_16bit_gray():
    palette = Image.fromarray(noise_image(4)).convert("P")
    palette.info["transparency"] = 0
    assert Image.open(io.BytesIO(ingest_module.crop_to_png(encode(palette), 128, 10**7))).mode == "RGB"

    gray16 = np.full((218, 178), 65535, np.uint16)
    gray16[:, :89] = 32768
    image = Image.fromarray(gray16)
    assert image.mode.startswith("I;16")
    crop = np.asarray(Image.open(io.BytesIO(ingest_module.crop_to_png(encode(image), 128, 10**7))))
    assert crop[0, 0].tolist() == [128, 128, 128]  # 32768 * 255 / 65535 = 127.5 -> 128 (not clipped to 255)
    assert crop[0, -1].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    pixels = noise_image(5, width=218, height=178)  # stored landscape, shown portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(pixels, "JPEG", quality=95, exif=exif)
    upright = Image.open(io.BytesIO(ingest_module.crop_to_png(data, 128, 10**7)))
    expected = Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270).crop(CELEBA_BOX)
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(expected))


# ---- bad inputs -----------------------------------------------------------------------


def test_bad_inputs_are_skipped_recorded_and_replaced(tmp_path: Path):
    src = write_images(tmp_path / "src", celeba_names(12))
    (src / "000002.jpg").write_bytes(b"")  # zero bytes
    (src / "000003.jpg").write_bytes(jpeg_bytes(30)[:3000])  # truncated JPEG
    (src / "000004.jpg").write_text("this is not an image\n")  # text named .jpg
    (src / "000005.jpg").write_bytes(jpeg_bytes(31, 100, 150))  # smaller than 128 on a side
    (src / "000007.jpg").write_bytes(jpeg_bytes(32, 500, 500))  # 250,000 px > max_pixels
    (src / "000008.jpg").write_bytes(jpeg_bytes(33, 1000, 1000))  # > 2x: PIL's own DecompressionBombError
    dup = write_images(tmp_path / "src" / "zz-copy", ["000001"], first_seed=99)  # same name, later path
    assert (dup / "000001.jpg").exists()

    cfg = small_config(src, tmp_path / "data", limit=6, test_count=2, showcase_count=1, max_pixels=200_000)
    manifest = ingest(cfg)

    reasons = _skip_reasons(manifest)
    assert reasons["000002"] == "empty file"
    assert reasons["000003"].startswith("truncated or corrupt image")
    assert reasons["000004"].startswith("not an image")
    assert reasons["000005"].startswith("too small: 100x150")
    assert reasons["000007"].startswith("decompression bomb")
    assert reasons["000008"].startswith("decompression bomb")
    assert reasons["000001"] == "duplicate name"
    assert [s["path"] for s in manifest["skipped"] if s["name"] == "000001"] == ["zz-copy/000001.jpg"]
    # The first 6 *valid* images: bad candidates were replaced by the next ones.
    selected = [n for n, _ in read_train_examples(tmp_path / "data", manifest)] + manifest["test_files"]
    assert selected == ["000001", "000006", "000009", "000010", "000011", "000012"]
    assert manifest["counts"] == {"train": 4, "test": 2, "skipped": 7}
    # The duplicate's pixels (seed 99) were not used: the first path won.
    first = read_train_examples(tmp_path / "data", manifest)[0]
    with Image.open(src / "000001.jpg") as original:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(first[1]))), np.asarray(original.crop(CELEBA_BOX)))


def test_too_few_valid_images_is_a_clear_error(tmp_path: Path):
    src = write_images(tmp_path / "src", celeba_names(4))
    (src / "000001.jpg").write_bytes(b"")
    (src / "000002.jpg").write_text("nope")
    out = tmp_path / "data"
    with pytest.raises(IngestError, match=r"only 2 valid images.*test_count \+ 1 = 3"):
        ingest(small_config(src, out, limit=4, test_count=2, showcase_count=1))
    assert not out.exists()
    assert not list(tmp_path.glob(".data.tmp-*"))


# ---- parameters fail before work ---------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Make any image processing fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("images were processed before the parameters were checked")

    monkeypatch.setattr(ingest_module, "process_candidate", forbidden)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("limit", -1, "limit"),
        ("limit", 0, "limit"),
        ("test_count", 0, "test_count"),
        ("test_count", 10, "test_count=10.*10"),  # == the 10 available images
        ("test_count", 7, "test_count=7.*limit=7"),  # == limit
        ("showcase_count", 9, "showcase_count"),
        ("source", "/no/such/images.zip", "source="),
        ("partition_file", "/no/such/list_eval_partition.txt", "partition_file"),
    ],
)
def test_invalid_parameters_fail_before_any_work(field, value, pattern, faces: Path, tmp_path: Path, no_work):
    cfg = small_config(faces, tmp_path / "data", limit=7 if field == "test_count" and value == 7 else 20)
    setattr(cfg, field, value)  # bypass __post_init__ validation: ingest must check again
    with pytest.raises(ConfigError, match=pattern):
        ingest(cfg)
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.glob(".data.tmp-*"))


def test_refuses_to_replace_a_folder_that_is_not_an_ingest_output(faces: Path, tmp_path: Path, no_work):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="data_dir"):
        ingest(small_config(faces, out, force=True))
    assert (out / "thesis.tex").read_text() == "years of work"


# ---- split, shards, manifest -------------------------------------------------------------


def test_split_order_showcase_and_shards(faces: Path, tmp_path: Path):
    out = tmp_path / "data"
    manifest = ingest(small_config(faces, out, limit=9, test_count=3, showcase_count=2, shard_size=4))

    assert manifest["test_files"] == ["000007", "000008", "000009"]
    assert manifest["showcase"] == ["000008", "000009"]
    assert manifest["counts"] == {"train": 6, "test": 3, "skipped": 0}
    assert manifest["train_shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert [n for n, _ in read_train_examples(out, manifest)] == celeba_names(6)
    assert sorted(p.name for p in (out / "test").iterdir()) == [f"{n}.png" for n in manifest["test_files"]]
    assert "(25, 45, 153, 173)" in manifest["params"]["crop"] and "no resize" in manifest["params"]["crop"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    contract = ("format_version", "source", "params", "counts", "train_shards", "test_files", "showcase", "skipped")
    assert all(key in manifest for key in contract) and len(manifest["content_hash"]) == 64


def test_partition_file_keeps_train_and_val_only(faces: Path, tmp_path: Path):
    partition = tmp_path / "list_eval_partition.txt"
    lines = [f"{n}.jpg {p}" for n, p in zip(celeba_names(9), "001220011")]  # 000010 not listed
    partition.write_text("\n".join(lines) + "\n")
    manifest = ingest(small_config(faces, tmp_path / "data", limit=5, test_count=2, partition_file=str(partition)))
    selected = [n for n, _ in read_train_examples(tmp_path / "data", manifest)] + manifest["test_files"]
    assert selected == ["000001", "000002", "000003", "000006", "000007"]  # 000004/5 are partition 2
    assert manifest["selection"]["excluded_by_partition"] == 3  # 000004, 000005, 000010


def test_determinism_serial_and_parallel(faces: Path, tmp_path: Path):
    serial = ingest(small_config(faces, tmp_path / "a", workers=1))
    parallel = ingest(small_config(faces, tmp_path / "b", workers=2))  # 'spawn' worker processes
    assert serial["content_hash"] == parallel["content_hash"]
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    for rel in tree(tmp_path / "a"):
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_demo_source_is_offline_and_deterministic(tmp_path: Path):
    manifest = ingest(small_config("demo", tmp_path / "a", limit=12, test_count=4))
    again = ingest(small_config("demo", tmp_path / "b", limit=12, test_count=4))
    assert manifest["counts"] == {"train": 8, "test": 4, "skipped": 0}
    assert manifest["content_hash"] == again["content_hash"]
    assert manifest["source"]["kind"] == "demo"
    crop = read_png(tmp_path / "a" / "test" / f"{manifest['test_files'][0]}.png")
    assert crop.shape == (128, 128, 3) and crop.std() > 20  # textured, not flat


def test_record_writer_matches_tensorflow(tmp_path: Path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    png = encode(noise_image(7)[:128, :128])
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"000042"])),
    }))
    assert ingest_module.serialize_example("000042", png) == example.SerializeToString(deterministic=True)

    ours = tmp_path / "ours.tfrecord"
    writer = ingest_module.open_record_file(ours)
    assert not isinstance(writer, tf.io.TFRecordWriter)  # google-crc32c is installed here
    writer.write(b"abc" * 1000)
    writer.close()
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # -> ImportError: TF fallback
    theirs = tmp_path / "theirs.tfrecord"
    fallback = ingest_module.open_record_file(theirs)
    assert isinstance(fallback, tf.io.TFRecordWriter)
    fallback.write(b"abc" * 1000)
    fallback.close()
    assert ours.read_bytes() == theirs.read_bytes()


# ---- zip sources ----------------------------------------------------------------------


def test_zip_is_streamed_not_extracted(tmp_path: Path, monkeypatch):
    members = {f"img_align_celeba/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(8))}
    archive = write_zip(tmp_path / "img_align_celeba.zip", members)
    folder = tmp_path / "same-as-folder"
    folder.mkdir()
    for arcname, data in members.items():
        (folder / Path(arcname).name).write_bytes(data)

    def no_extraction(*args, **kwargs):
        raise AssertionError("the zip must be read member by member, not extracted")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extraction)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extraction)
    from_zip = ingest(small_config(archive, tmp_path / "data-zip"))
    from_folder = ingest(small_config(folder, tmp_path / "data-folder"))
    assert from_zip["source"]["kind"] == "zip"
    assert from_zip["content_hash"] == from_folder["content_hash"]
    assert tree(tmp_path / "data-zip") == tree(tmp_path / "data-folder")


def test_zip_slip_and_symlink_entries_are_refused(tmp_path: Path, caplog):
    work = tmp_path / "work"
    work.mkdir()
    members = {f"img/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    members.update({
        "../evil.jpg": jpeg_bytes(40),
        "img/../../evil2.jpg": jpeg_bytes(41),
        "/abs.jpg": jpeg_bytes(42),
        "..\\backslash.jpg": jpeg_bytes(43),
        "C:/drive.jpg": jpeg_bytes(44),
    })
    archive = write_zip(work / "evil.zip", members, symlinks={"img/link.jpg": "../../../etc/passwd"})
    before_outside = tree(tmp_path)

    manifest = ingest(small_config(archive, work / "data", limit=6, test_count=2))

    reasons = _skip_reasons(manifest)
    assert reasons["evil"].startswith("unsafe zip entry: path escapes")
    assert reasons["evil2"].startswith("unsafe zip entry: path escapes")
    assert reasons["backslash"].startswith("unsafe zip entry: path escapes")
    assert reasons["abs"] == "unsafe zip entry: absolute path"
    assert reasons["drive"] == "unsafe zip entry: absolute path"
    assert reasons["link"] == "unsafe zip entry: symbolic link"
    assert "unsafe zip entry" in caplog.text  # logged as warnings
    assert manifest["counts"] == {"train": 4, "test": 2, "skipped": 6}
    # Nothing appeared anywhere but inside the output folder.
    new = tree(tmp_path) - before_outside
    assert new and all(p == "work/data" or p.startswith("work/data/") for p in new)
    for name in ("evil", "evil2", "abs", "backslash", "drive", "link"):
        assert not list(tmp_path.rglob(f"{name}*.png"))


def test_unsafe_member_reason_reads_the_symlink_mode():
    link = zipfile.ZipInfo("a/b.jpg")
    link.external_attr = 0o120777 << 16
    plain = zipfile.ZipInfo("a/b.jpg")
    plain.external_attr = 0o100644 << 16
    assert sources.unsafe_member_reason(link) == "unsafe zip entry: symbolic link"
    assert sources.unsafe_member_reason(plain) is None


def test_directory_source_is_recursive_and_case_insensitive(tmp_path: Path):
    src = tmp_path / "src"
    write_images(src / "a", ["000001"], fmt="png")
    (src / "b" / "c").mkdir(parents=True)
    (src / "b" / "c" / "000002.JPG").write_bytes(jpeg_bytes(2))
    (src / "b" / "000003.JPEG").write_bytes(jpeg_bytes(3))
    (src / "b" / "000004.webp").write_bytes(encode(noise_image(4), "WEBP", lossless=True))
    (src / "b" / "000005.Bmp").write_bytes(encode(noise_image(5), "BMP"))
    (src / "notes.txt").write_text("not a candidate")
    (src / "b" / "._000006.jpg").write_bytes(b"macOS metadata")
    names = [name for name, _ in sources.iter_images(str(src))]
    assert sorted(names) == ["000001", "000002", "000003", "000004", "000005"]


# ---- idempotence and atomicity ---------------------------------------------------------


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_rerun_is_a_no_op_and_force_redoes(faces: Path, tmp_path: Path, monkeypatch, caplog):
    out = tmp_path / "data"
    first = ingest(small_config(faces, out))
    stamps = _mtimes(out)

    calls = []
    real = ingest_module.process_candidate
    monkeypatch.setattr(ingest_module, "process_candidate", lambda *a, **k: calls.append(1) or real(*a, **k))
    caplog.set_level("INFO")
    assert ingest(small_config(faces, out)) == first
    assert "up to date" in caplog.text
    assert calls == [] and _mtimes(out) == stamps

    redone = ingest(small_config(faces, out, force=True))
    assert calls and redone["content_hash"] == first["content_hash"]
    assert (out / "manifest.json").stat().st_mtime_ns != stamps["manifest.json"]

    calls.clear()
    changed = ingest(small_config(faces, out, test_count=2))  # other parameters: redone
    assert calls and changed["counts"]["test"] == 2


def test_crash_leaves_no_output_and_no_complete_looking_temp_dir(faces: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "data"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(ingest_module.ShardWriter, "write", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        ingest(small_config(faces, out))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def test_crash_during_rebuild_keeps_the_old_output(faces: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "data"
    good = ingest(small_config(faces, out))
    before = {rel: (out / rel).read_bytes() for rel in tree(out) if (out / rel).is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-way (simulated)")

    monkeypatch.setattr(ingest_module, "_write_test_pngs", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        ingest(small_config(faces, out, force=True))
    after = {rel: (out / rel).read_bytes() for rel in tree(out) if (out / rel).is_file()}
    assert after == before and json.loads(before["manifest.json"]) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "faces"]


def test_broken_worker_pool_falls_back_to_this_process(faces: Path):
    entries = sorted(sources.iter_images(str(faces)), key=lambda e: e.name)[:4]
    work = lambda entry: ingest_module.process_candidate(entry, 128, 10**7)  # noqa: E731

    class DyingPool:  # the first chunk comes back, then the pool breaks
        submitted = 0

        def submit(self, fn, *args):
            future = Future()
            if self.submitted == 0:
                future.set_result(fn(*args))
            else:
                future.set_exception(BrokenProcessPool("a worker died"))
            self.submitted += 1
            return future

    outcomes = list(ingest_module._map_in_order(work, entries, DyingPool(), 2))
    assert [o.name for o in outcomes] == [e.name for e in entries]
    assert all(o.png is not None for o in outcomes)


def test_worker_modules_do_not_import_tensorflow():
    # 'spawn' workers import these; TensorFlow there would cost seconds and memory per worker.
    code = "import sys, srcore.data.ingest, srcore.data.sources; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---- progress bars ----------------------------------------------------------------------


def test_progress_writes_whole_lines_when_not_a_tty(capsys):
    for _ in progress(range(5), desc="unit", unit="img"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    assert "unit" in err.splitlines()[-1] and "5/5" in err.splitlines()[-1]


# ---- acceptance on real faces ------------------------------------------------------------


@pytest.mark.celeba
@pytest.mark.skipif(not CELEBA_DIR.is_dir(), reason=f"real CelebA faces not found at {CELEBA_DIR} (team machines only)")
def test_acceptance_celeba_1000(tmp_path: Path):
    cfg = small_config(CELEBA_DIR, tmp_path / "data", limit=1000, test_count=50, showcase_count=5,
                       shard_size=2000, workers=0)
    manifest = ingest(cfg)
    assert manifest["counts"] == {"train": 950, "test": 50, "skipped": 0}
    first_1000 = sorted(p.stem for p in CELEBA_DIR.glob("*.jpg"))[:1000]
    assert manifest["test_files"] == first_1000[-50:]
    assert manifest["showcase"] == first_1000[-5:]
    for name in manifest["test_files"]:
        with Image.open(CELEBA_DIR / f"{name}.jpg") as original:
            assert original.size == (178, 218)
            expected = np.asarray(original.crop(CELEBA_BOX))
        np.testing.assert_array_equal(read_png(tmp_path / "data" / "test" / f"{name}.png"), expected)
    assert os.path.getsize(tmp_path / "data" / "train" / manifest["train_shards"][0]) > 950 * 20_000


def test_a_partition_file_that_is_not_a_small_text_file_is_one_line(tmp_path):
    """A FIFO (would block), a folder, bytes that are not UTF-8: refused naming the parameter."""
    import os

    from srcore.config import ConfigError
    from srcore.data.ingest import read_partition_file

    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9.jpg 0\n")
    for path, named in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                        (tmp_path / "absent.txt", "no such file"), (latin, "not UTF-8")):
        with pytest.raises(ConfigError, match=f"partition_file=.*{named}"):
            read_partition_file(path)
    good = tmp_path / "list_eval_partition.txt"
    good.write_text("000001.jpg 0\n000002.jpg 2\n")
    assert read_partition_file(good) == {"000001": "0", "000002": "2"}
