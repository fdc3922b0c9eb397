"""The manifest of an ingest output (manifest.json), reader and writer together.

Layout of an ingest output folder:
  manifest.json         this format (FORMAT_VERSION), written last
  .srgan-output.json    srcore.atomic's ownership marker
  train/train-0000i-of-0000N.tfrecord
  test/<name>.png
`content_hash` is the sha256 over every output file but the manifest and the marker.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from srcore.atomic import MARKER, write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_DIR, TEST_DIR = "train", "test"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_hash(folder: Path) -> str:
    """sha256 over every output file but manifest.json (and the marker), in sorted
    relative-path order: for each file, `<relative path>\\0<hex sha256 of its bytes>\\n`."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write manifest.json (last of all: a folder without one is never mistaken for a
    finished ingest)."""
    return write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def load_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest when it is one of ours (right format version), else None."""
    try:
        manifest = json.loads((Path(folder).expanduser() / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    if not isinstance(manifest.get("train_shards"), list) or not isinstance(manifest.get("test_files"), list):
        return None
    return manifest


#: a manifest lists every test and shard name: ~3 MB for all 202,599 CelebA faces
MAX_MANIFEST_BYTES = 64 << 20


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest.json of an ingest output; a clear error when there is none."""
    path = Path(data_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{data_dir} is not an ingest output (no {MANIFEST}): run `srgan ingest` first, "
            "or pass the --data-dir it wrote to"
        )
    with path.open("rb") as f:  # is_file(): no FIFO or device; capped: a manifest is a list of names
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    redo = "run `srgan ingest` first, or pass the --data-dir it wrote to"
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not an ingest manifest; {redo}")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path} is not an ingest manifest (not valid JSON: {str(err)[:120]}); {redo}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not an ingest manifest (a JSON {type(manifest).__name__}, not an object); {redo}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}: run `srgan ingest --force` to rebuild it"
        )
    return manifest


def listed_files(manifest: dict) -> set[str]:
    """The relative paths of every file an ingest output with this manifest holds."""
    files = {MANIFEST}
    files.update(f"{TRAIN_DIR}/{name}" for name in manifest.get("train_shards", []))
    files.update(f"{TEST_DIR}/{name}.png" for name in manifest.get("test_files", []))
    return files


def proven_output_files(folder: Path) -> set[str] | None:
    """For an ingest output written before ownership markers: the files its manifest lists,
    when its record proves ingest wrote them (a manifest in our format whose content hash,
    the sha256 over every file, matches the folder); else None (not proven ours)."""
    manifest = load_manifest(folder)
    if manifest is None or not isinstance(manifest.get("content_hash"), str):
        return None
    listed = listed_files(manifest)
    try:
        entries = list(folder.rglob("*"))
        if any(p.is_symlink() for p in entries):
            return None
        if {p.relative_to(folder).as_posix() for p in entries if not p.is_dir()} - {MARKER} != listed:
            return None
        return listed if content_hash(folder) == manifest["content_hash"] else None
    except OSError:
        return None
