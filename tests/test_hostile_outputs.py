"""One ownership rule for every step that writes a folder (issue 18, srcore.atomic): a
folder is new, empty, or carries srgan's marker of that step's kind; anything else is
refused in one line naming the folder and some of its entries, and left as it was.
Each writer runs for real on tiny inputs built here; train's accepted cases stop at the
(missing) data, after the ownership check, because a real training run costs minutes
(tests/test_train.py trains into new folders and resumes in its own)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers_images import celeba_names, small_config, tree, write_images
from helpers_store import store, tracked  # noqa: F401 - fixtures
from PIL import Image

from srcore.atomic import MARKER, OutputDirError, adopt, spreadsheet_safe
from srcore.config import Config, ConfigError

KINDS = ["ingest", "train", "evaluate", "upscale", "export"]
REFUSED = (OutputDirError, ConfigError)  # ingest names its parameter: ConfigError (a ValueError too)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("faces") / "faces", celeba_names(4))


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def writers(faces, small_image, smoke_data, tiny_generator, tracked, tmp_path) -> dict[str, Callable[[Path], None]]:
    """kind -> run that step into `folder` (a path ending in <name>/<number>, as export needs)."""
    from srcore.data.ingest import ingest
    from srcore.evaluate import evaluate
    from srcore.export import export_savedmodel
    from srcore.train import train
    from srcore.upscale import upscale_files

    def run_train(folder: Path) -> None:
        # accepted: gets past the ownership check and stops at the data, writing nothing
        cfg = Config(model_dir=str(folder), data_dir=str(tmp_path / "no-data"), content_loss="mse")
        with pytest.raises(FileNotFoundError, match="not an ingest output"):
            train(cfg)

    return {
        "ingest": lambda folder: ingest(small_config(faces, folder, limit=4, test_count=1, showcase_count=1)),
        "train": run_train,
        "evaluate": lambda folder: evaluate(Config(eval_images=2), "bicubic", data_dir=smoke_data, out_dir=folder),
        "upscale": lambda folder: upscale_files(tiny_generator, [small_image], folder),
        "export": lambda folder: export_savedmodel(str(tiny_generator), folder.parent.parent, folder.parent.name,
                                                   folder.name),
    }


def target(tmp_path: Path) -> Path:
    return tmp_path / "out" / "m" / "1"


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p: (None if (root / p).is_dir() else (root / p).read_bytes()) for p in tree(root)}


def other_kind(kind: str) -> str:
    return KINDS[(KINDS.index(kind) + 1) % len(KINDS)]


def assert_refused(write: Callable[[Path], None], folder: Path, root: Path, *shown: str) -> None:
    before = snapshot(root)
    with pytest.raises(REFUSED) as info:
        write(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    for name in shown:
        assert name in message
    assert snapshot(root) == before  # nothing written, renamed or deleted, no hidden sibling left


@pytest.mark.parametrize("kind", KINDS)
def test_a_users_folder_a_forged_marker_and_a_file_are_refused_and_left_alone(kind, writers, tmp_path):
    write, folder = writers[kind], target(tmp_path)
    folder.mkdir(parents=True)
    (folder / "important.txt").write_text("precious")
    (folder / "notes").mkdir()
    (folder / "notes" / "n.txt").write_text("mine")
    assert_refused(write, folder, tmp_path, "important.txt", "notes/", f"adopt {kind}")

    forged = tmp_path / "forged" / "m" / "1"
    forged.mkdir(parents=True)
    (forged / MARKER).write_text(json.dumps({"format": 1, "kind": other_kind(kind), "written_by": "srgan"}))
    (forged / "saved_model.pb").write_bytes(b"not ours to replace")
    assert_refused(write, forged, tmp_path, f"a {other_kind(kind)} output")

    # a marker of the right kind lent by a symbolic link (or a folder in its place) is no marker
    real = tmp_path / "real-marker.json"
    real.write_text(json.dumps({"format": 1, "kind": kind, "written_by": "srgan", "files": ["saved_model.pb"]}))
    for name, make in (("linked", lambda m: m.symlink_to(real)), ("dir", lambda m: m.mkdir())):
        lent = tmp_path / name / "m" / "1"
        lent.mkdir(parents=True)
        make(lent / MARKER)
        (lent / "saved_model.pb").write_bytes(b"not ours to replace")
        assert_refused(write, lent, tmp_path, "saved_model.pb")

    in_place = tmp_path / "file" / "m" / "1"
    in_place.parent.mkdir(parents=True)
    in_place.write_text("a file where the folder would go")
    assert_refused(write, in_place, tmp_path, "not a folder")


@pytest.mark.parametrize("kind", KINDS)
def test_new_and_empty_folders_and_a_rerun_into_its_own_output_are_accepted(kind, writers, tmp_path):
    write, new, empty = writers[kind], target(tmp_path), tmp_path / "empty" / "m" / "1"
    write(new)
    empty.mkdir(parents=True)
    write(empty)
    if kind == "train":  # the data was missing: nothing created; rerun in a folder train marked
        assert not new.exists() and list(empty.iterdir()) == []
        from srcore.atomic import claim_output_dir

        claim_output_dir(new, "train")
        (new / "checkpoints").mkdir()
        (new / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    else:
        for folder in (new, empty):
            assert json.loads((folder / MARKER).read_text())["kind"] == kind
    write(new)  # its own output again: resume, overwrite or replace
    if kind in ("ingest", "export"):  # replaced as a whole: never with a user's file in it
        (new / "mine.txt").write_text("precious")
        assert_refused(write, new, tmp_path, "mine.txt")


def test_a_folder_from_before_markers_is_refused_with_the_fix_and_accepted_once_adopted(tiny_generator, tmp_path):
    from srcore.export import export_savedmodel

    version = tmp_path / "serving" / "m" / "1"
    export_savedmodel(str(tiny_generator), tmp_path / "serving", "m", 1)
    (version / MARKER).unlink()  # as exported before markers existed
    with pytest.raises(OutputDirError, match=re.escape(f"python -m srcore.atomic adopt export {version}")):
        export_savedmodel(str(tiny_generator), tmp_path / "serving", "m", 1)
    (version / MARKER).write_text('{"kind": "upscale"}')
    with pytest.raises(OutputDirError, match="already carries a upscale marker"):
        adopt(version, "export")
    (version / MARKER).unlink()
    out = subprocess.run([sys.executable, "-m", "srcore.atomic", "adopt", "export", str(version)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    export_savedmodel(str(tiny_generator), tmp_path / "serving", "m", 1)
    assert sorted(p.name for p in version.parent.iterdir()) == ["1"]


def test_a_model_that_does_not_resolve_leaves_no_folder(tracked, smoke_data, small_image, tmp_path):
    from srcore.evaluate import evaluate
    from srcore.export import export_savedmodel
    from srcore.upscale import upscale_files

    for write in (lambda out: upscale_files("models:/no-such-model@champion", [small_image], out),
                  lambda out: evaluate(Config(), "models:/no-such-model/3", data_dir=smoke_data, out_dir=out),
                  lambda out: export_savedmodel("runs:/0123456789abcdef/upscaler", out, "m", 1)):
        with pytest.raises(ValueError, match="no-such-model|0123456789abcdef"):  # one line naming it
            write(tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tracked, tmp_path):
    from srcore.data.ingest import ingest
    from srcore.evaluate import evaluate

    names = ["=HYPERLINK(1)", "+1+2", "-3+4", "@SUM(A1)", "plain", "!train"]  # sorted by name: the first one trains
    faces = write_images(tmp_path / "faces", names)
    data = tmp_path / "data"
    ingest(small_config(faces, data, limit=6, test_count=5, showcase_count=1))
    evaluate(Config(eval_images=2), "bicubic", data_dir=data, out_dir=tmp_path / "eval")
    with open(tmp_path / "eval" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [cell for row in rows for cell in row.values()]
    assert sorted(row["name"] for row in rows) == sorted(["'" + n for n in names[:4]] + ["plain"])
    assert not [c for c in cells if c[:1] in ("=", "+", "@")]
    assert [c for c in cells if c.startswith("-")] == [c for c in cells if re.fullmatch(r"-\d+\.\d+", c)]
    assert spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("\t=1") == "'\t=1"


def test_export_to_object_storage_follows_the_same_rule(tiny_generator, monkeypatch, s3_server):
    """deploy_storage_uri s3://, against a real S3 protocol server on loopback (moto): a
    version folder holding someone else's objects is refused and left as it was; an empty
    one is written with export's marker, and export may write it again."""
    from conftest import s3_keys
    from srcore.export import export_step

    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    s3, bucket = s3_server["client"], s3_server["bucket"]
    root = f"owned-{uuid.uuid4().hex[:8]}/serving"  # the session's bucket is shared: a prefix of its own
    s3.put_object(Bucket=bucket, Key=f"{root}/m/1/important.txt", Body=b"precious")
    cfg = Config(deploy_storage_uri=f"s3://{bucket}/{root}")
    with pytest.raises(OutputDirError, match=rf"s3://{bucket}/{root}/m/1 .*important.txt"):
        export_step(cfg, str(tiny_generator), model_name="m", model_version="1")
    assert s3_keys(s3_server, f"{root}/") == [f"{root}/m/1/important.txt"]
    assert s3.get_object(Bucket=bucket, Key=f"{root}/m/1/important.txt")["Body"].read() == b"precious"

    export_step(cfg, str(tiny_generator), model_name="m", model_version="2")
    export_step(cfg, str(tiny_generator), model_name="m", model_version="2")  # its own: again
    keys = set(s3_keys(s3_server, f"{root}/m/2/"))
    assert {f"{root}/m/2/saved_model.pb", f"{root}/m/2/{MARKER}"} <= keys
