"""srcore.upscale under hostile input (issue 13): clear errors naming the path, skipped
and recorded items, nothing written outside the output folder, no hang."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcore.atomic import MARKER, OutputDirError
from srcore.models import load_generator
from srcore.upscale import UpscaleTimeout, upscale_array, upscale_files
from helpers_time import within




def image(path: Path, h: int = 10, w: int = 12) -> Path:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_out_that_is_a_file_or_inside_one_is_a_clear_error(tiny_generator, tmp_path: Path):
    src = image(tmp_path / "a.png")
    blocker = tmp_path / "taken"
    blocker.write_text("precious")
    with pytest.raises(OutputDirError, match=f"{blocker}.*not a folder"):
        upscale_files(tiny_generator, [src], blocker)
    with pytest.raises(OSError, match=f"{blocker}/sub"):
        upscale_files(tiny_generator, [src], blocker / "sub")
    with pytest.raises(OSError, match="too long"):
        upscale_files(tiny_generator, [src], tmp_path / ("x" * 300))
    assert blocker.read_text() == "precious"


def test_a_folder_upscale_did_not_make_is_refused(tiny_generator, tmp_path: Path):
    src = image(tmp_path / "a.png")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_x4.png").write_bytes(b"the user's own file")
    (photos / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(OutputDirError, match="photos"):
        upscale_files(tiny_generator, [src], photos)
    assert (photos / "a_x4.png").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in photos.iterdir()) == ["a_x4.png", "holiday.jpg"]

    out = tmp_path / "out"
    upscale_files(tiny_generator, [src], out)
    assert len(upscale_files(tiny_generator, [src], out)) == 1  # its own folder: fine again


def test_special_files_oversized_and_unwritable_items_are_skipped_the_rest_written(tiny_generator, tmp_path: Path):
    good = image(tmp_path / "good.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    big = image(tmp_path / "big.png", 100, 100)
    long_name = image(tmp_path / (("l" * 249) + ".png"))  # its output name is too long
    out = tmp_path / "out"
    with within(60):
        written = upscale_files(
            tiny_generator, [fifo, Path("/dev/zero"), big, long_name, good], out, max_pixels=5000
        )
    assert written == [out / "good_x4.png"]
    reasons = dict(written.skipped)
    assert "fifo" in reasons[fifo] and "character device" in reasons[Path("/dev/zero")]
    assert "max_pixels" in reasons[big] and "10000" in reasons[big]
    assert "too long" in reasons[long_name] and str(out) in reasons[long_name]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "good_x4.png"]


def test_a_deadline_stops_between_tiles(tiny_generator):
    generator = load_generator(str(tiny_generator))
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(UpscaleTimeout, match="ran out of time"):
        upscale_array(generator, img, tile=4, overlap=0, deadline=time.monotonic() - 1)
