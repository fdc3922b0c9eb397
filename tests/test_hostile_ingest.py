"""Ingest under hostile input (issue 13): every case is built on the fly and must end in a
clear error or a recorded skip, write nothing outside the output folder, delete nothing
it did not write, and never hang (each case runs under an alarm)."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_images import CELEBA_BOX, celeba_names, jpeg_bytes, read_png, small_config, tree, write_images, write_zip
from helpers_time import within
from PIL import Image

from srcore.atomic import MARKER, OutputDirError, check_replaceable, claim_output_dir
from srcore.config import Config, ConfigError, build_config
from srcore.data import sources
from srcore.data.ingest import ingest




def skip_reasons(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in manifest["skipped"]}


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return write_images(tmp_path / "faces", celeba_names(8))


def config(source, out, **kw) -> Config:
    return small_config(source, out, limit=kw.pop("limit", 8), test_count=kw.pop("test_count", 2), showcase_count=1, **kw)


# ---- 1. output-folder ownership ------------------------------------------------------------


@pytest.mark.parametrize("manifest_text", ['{"name": "my web app", "start_url": "/"}', "not json at all"])
def test_a_foreign_manifest_json_does_not_make_a_folder_ingests(manifest_text, faces: Path, tmp_path: Path):
    out = tmp_path / "webapp"
    out.mkdir()
    (out / "manifest.json").write_text(manifest_text)
    (out / "index.html").write_text("<html>precious</html>")
    before = {p: (out / p).read_bytes() for p in tree(out)}
    with within(60), pytest.raises(ConfigError, match=f"data_dir=.*{out.name}.*not written by srgan ingest"):
        ingest(config(faces, out, force=True))
    assert {p: (out / p).read_bytes() for p in tree(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "webapp"]


def test_an_ingest_output_with_a_users_file_in_it_is_not_replaced(faces: Path, tmp_path: Path):
    out = tmp_path / "data"
    ingest(config(faces, out))
    assert json.loads((out / MARKER).read_text())["kind"] == "ingest"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        ingest(config(faces, out, force=True))
    assert (out / "notes.txt").read_text() == "mine"


def test_own_output_is_replaced_and_a_legacy_one_without_marker_is_recognised(faces: Path, tmp_path: Path):
    out = tmp_path / "data"
    first = ingest(config(faces, out))
    (out / MARKER).unlink()  # as written before markers existed
    again = ingest(config(faces, out, force=True))
    assert again["content_hash"] == first["content_hash"] and (out / MARKER).is_file()


def test_claim_output_dir_is_the_one_rule(tmp_path: Path):
    mine = claim_output_dir(tmp_path / "new" / "eval", "evaluate")
    assert json.loads((mine / MARKER).read_text())["kind"] == "evaluate"
    assert claim_output_dir(mine, "evaluate") == mine  # again: fine
    with pytest.raises(OutputDirError, match="evaluate output"):
        claim_output_dir(mine, "upscale")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputDirError, match="full"):
        claim_output_dir(tmp_path / "full", "upscale")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        claim_output_dir(tmp_path / "file", "upscale")
    with pytest.raises(OSError, match="file.*sub"):
        claim_output_dir(tmp_path / "file" / "sub", "upscale")
    with pytest.raises(OutputDirError):
        check_replaceable(tmp_path / "full", "ingest")


# ---- 3. special files in a folder source --------------------------------------------------


def test_fifo_dev_zero_and_escaping_symlinks_are_skipped_not_read(faces: Path, tmp_path: Path):
    os.mkfifo(faces / "000100.jpg")
    os.symlink("/dev/zero", faces / "000101.jpg")
    outside = write_images(tmp_path / "elsewhere", ["000102"])
    os.symlink(outside / "000102.jpg", faces / "000102.jpg")
    out = tmp_path / "data"
    with within(60):
        manifest = ingest(config(faces, out, limit=20))
    reasons = skip_reasons(manifest)
    assert reasons["000100"] == "not a regular file (fifo)"
    assert "leaves the source folder" in reasons["000101"] and "leaves the source folder" in reasons["000102"]
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 8

    with within(60):  # allowed to follow: the outside image is used, /dev/zero still is not read
        followed = ingest(config(faces, tmp_path / "data2", limit=20, follow_symlinks=True))
    reasons = skip_reasons(followed)
    assert reasons["000101"] == "not a regular file (character device)" and "000102" not in reasons


def test_size_cap_is_enforced_while_reading(tmp_path: Path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(sources.EntryTooLarge, match="more than 4096 bytes"):
        sources.FileRef(str(path), max_bytes=4096)()  # st_size is not trusted: the read is capped
    archive = write_zip(tmp_path / "a.zip", {"a.jpg": b"y" * 5000})
    with pytest.raises(sources.EntryTooLarge):
        sources.ZipMember(str(archive), "a.jpg", 0, max_bytes=4096)()
    os.mkfifo(tmp_path / "fifo.jpg")
    with within(10), pytest.raises(sources.NotRegularFile, match="fifo"):
        sources.FileRef(str(tmp_path / "fifo.jpg"))()  # swapped for a FIFO after listing: no hang


def test_files_over_max_file_bytes_are_skipped_with_reason(faces: Path, tmp_path: Path):
    (faces / "000050.jpg").write_bytes(jpeg_bytes(50) + b"\0" * 300_000)
    manifest = ingest(config(faces, tmp_path / "data", limit=20, max_file_bytes=200_000))
    assert skip_reasons(manifest)["000050"].startswith("file too large")


def test_too_long_names_are_skipped_and_the_rest_is_written(faces: Path, tmp_path: Path):
    (faces / ("a" * 251 + ".jpg")).write_bytes(jpeg_bytes(77))
    manifest = ingest(config(faces, tmp_path / "data", limit=20))
    assert "longer than 250 bytes" in skip_reasons(manifest)["a" * 251]
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 8


# ---- 4. a changed source is re-ingested ---------------------------------------------------


def test_changed_image_reingests_and_unchanged_is_up_to_date(faces: Path, tmp_path: Path, caplog):
    out = tmp_path / "data"
    first = ingest(config(faces, out))
    caplog.set_level(logging.INFO)
    assert ingest(config(faces, out)) == first and "up to date" in caplog.text

    last = faces / "000008.jpg"  # a test image: its PNG must change
    stat = last.stat()
    last.write_bytes(jpeg_bytes(999))
    os.utime(last, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime: size differs
    caplog.clear()
    changed = ingest(config(faces, out))
    assert "up to date" not in caplog.text
    assert changed["content_hash"] != first["content_hash"]
    assert changed["source"]["fingerprint"] != first["source"]["fingerprint"]
    pixels = read_png(out / "test" / "000008.png")
    assert pixels.shape == (128, 128, 3)


# ---- 5. malformed sha256 at parse time -----------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "g" * 64, "a" * 63, "sha256:" + "a" * 64])
def test_malformed_sha256_is_rejected_when_parsed(value):
    with pytest.raises(ConfigError, match="sha256"):
        build_config(overrides={"source": "demo", "sha256": value})


# ---- 7. zip archives ----------------------------------------------------------------------


def test_duplicate_zip_paths_use_the_first_entry_and_the_manifest_says_so(tmp_path: Path):
    archive = tmp_path / "dup.zip"
    members = {f"img/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    write_zip(archive, members)
    with zipfile.ZipFile(archive, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("img/000006.jpg", jpeg_bytes(1234))  # a second entry, other bytes
    out = tmp_path / "data"
    manifest = ingest(config(archive, out, limit=6))
    assert skip_reasons(manifest)["000006"].startswith("duplicate zip entry")
    with Image.open(io.BytesIO(jpeg_bytes(5))) as first_entry:  # 000006 is member #5
        expected = np.asarray(first_entry.crop(CELEBA_BOX))
    assert (read_png(out / "test" / "000006.png") == expected).all()  # the first entry's bytes


def test_undecodable_zip_name_is_skipped_and_the_rest_ingested(tmp_path: Path):
    archive = tmp_path / "names.zip"
    members = {f"img/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    members["img/bad_\u00e9.jpg"] = jpeg_bytes(99)  # stored flagged UTF-8 ...
    write_zip(archive, members)
    raw = archive.read_bytes()
    archive.write_bytes(raw.replace("bad_\u00e9".encode(), b"bad_\xff\xfe"))  # ... but not UTF-8
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(archive)  # what used to abort the whole ingest
    manifest = ingest(config(archive, tmp_path / "data", limit=6))
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 6
    assert any("not valid UTF-8" in s["reason"] for s in manifest["skipped"])


def test_control_characters_in_names_are_escaped_in_logs(tmp_path: Path, caplog):
    members = {f"img/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    members["img/evil\x1b[2J\rname.jpg"] = jpeg_bytes(7)
    archive = write_zip(tmp_path / "ctl.zip", members)
    caplog.set_level(logging.WARNING)
    manifest = ingest(config(archive, tmp_path / "data", limit=6))
    assert any(s["reason"].startswith("unsafe name") for s in manifest["skipped"])
    assert "\x1b" not in caplog.text and "\r" not in caplog.text and "\\x1b" in caplog.text


# ---- 6. file-system errors name the path ---------------------------------------------------


def test_out_inside_a_file_is_a_one_line_error_naming_it(faces: Path, tmp_path: Path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises((ConfigError, OSError), match="afile"):
        ingest(config(faces, blocker / "data"))
    with pytest.raises((ConfigError, OSError), match="afile"):
        ingest(config(faces, blocker))
    assert blocker.read_text() == "x"
    too_long = tmp_path / ("d" * 300)
    with pytest.raises(OSError, match="too long"):
        ingest(config(faces, too_long))


# ---- 8. interrupted ingest: kill -9 ----------------------------------------------------------

_KILLED_INGEST = r"""
import sys, time
from pathlib import Path
from srcore.config import Config
from srcore.data import ingest as ingest_module

def stuck_build(cfg, candidates, skipped, selection, source, params, folder):
    # a build that is busy in its worker pool when the parent gets killed
    with ingest_module._worker_pool(2) as pool:
        for _ in range(2):
            pool.submit(time.sleep, 300)
        (folder / "train").mkdir()
        (folder / "train" / "half-written.partial").write_bytes(b"x")
        while len(pool._processes) < 2:
            time.sleep(0.05)
        print("READY", *pool._processes, flush=True)
        time.sleep(300)

ingest_module._build = stuck_build
cfg = Config(source=sys.argv[1], data_dir=sys.argv[2], limit=8, test_count=2, showcase_count=1, workers=2)
ingest_module.ingest(cfg)
"""


def _alive(pid: int) -> bool:
    from srcore.atomic import process_alive

    return process_alive(pid)


def test_kill_9_takes_the_workers_along_and_the_next_run_cleans_up(faces: Path, tmp_path: Path):
    import subprocess
    import sys
    import time

    out = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_INGEST, str(faces), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        with within(120):
            line = proc.stdout.readline()
        assert line.startswith("READY"), line
        workers = [int(pid) for pid in line.split()[1:]]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        temp = [p for p in tmp_path.iterdir() if p.name.startswith(".data.tmp-")]
        assert len(temp) == 1 and temp[0].name.split("-")[-2] == str(proc.pid)

        proc.kill()  # SIGKILL: no cleanup code runs in the parent
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers outlived their parent"
    finally:
        proc.kill()
        proc.wait(timeout=30)

    assert temp[0].exists() and not out.exists()
    with within(120):
        manifest = ingest(config(faces, out))  # the next run removes the dead run's temp folder
    assert not temp[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "faces"]
    assert manifest["counts"]["train"] == 6


# ---- more hostile layouts ---------------------------------------------------------------------


def test_output_inside_the_source_is_not_read_back_and_source_inside_output_is_refused(faces: Path, tmp_path: Path, caplog):
    out = faces / "data"  # e.g. --source . --data-dir ./data
    first = ingest(config(faces, out))
    caplog.set_level(logging.INFO)
    assert ingest(config(faces, out)) == first and "up to date" in caplog.text  # its own PNGs are not candidates
    assert not any("data/" in s.get("path", "") for s in first["skipped"])

    with pytest.raises(ConfigError, match="not written by srgan ingest"):
        ingest(config(faces, faces, force=True))
    assert sorted(p.name for p in faces.iterdir() if p.suffix == ".jpg") == [f"{n}.jpg" for n in celeba_names(8)]
    with pytest.raises(ConfigError, match="source .* is inside it"):  # re-ingesting an output's own test PNGs
        ingest(config(out / "test", out, limit=2, test_count=1, force=True))
    assert ingest(config(faces, out)) == first


def test_a_symlinked_output_folder_is_refused_not_replaced(faces: Path, tmp_path: Path):
    real = tmp_path / "big-disk"
    real.mkdir()
    (real / "keep.txt").write_text("x")
    link = tmp_path / "data"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        ingest(config(faces, link))
    assert link.is_symlink() and (real / "keep.txt").read_text() == "x"
