"""Safe outputs: files written under a temporary name and renamed into place, and output
folders that are only ever written into, or replaced, when srgan made them.

The ownership rule (one place for every step that writes a folder: ingest, evaluate,
upscale, train, export):

- A folder srgan writes carries a marker file, MARKER (`.srgan-output.json`), that names
  the step (`kind`) and, for folders that are replaced as a whole, every file it holds.
- `claim_output_dir(path, kind)` may write into `path` when it does not exist yet (it is
  created), is empty, or carries a marker of the same kind. Anything else (a file, a
  folder with other content, another step's output) is refused with OutputDirError,
  which names the folder: srgan never overwrites or deletes what it did not write.
- `replace_dir_atomically(path, kind, build)` builds a new folder under a hidden sibling
  name and swaps it in. It replaces an old folder only when the old folder's marker is of
  the same kind and the folder holds no file the marker does not list (a file a user
  dropped into it is never deleted).
- Hidden siblings carry the host and pid of their writer in their name;
  `remove_stale_siblings(path)` deletes the ones whose process is gone (kill -9).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

MARKER = ".srgan-output.json"
MARKER_FORMAT = 1
T = TypeVar("T")


class OutputDirError(ValueError):
    """An output folder cannot be used; the message names it and says what to do."""


# ---- files --------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` and rename `tmp` to `path`; the temporary keeps the suffix
    (Keras, for one, insists on `.keras`). OSError messages name `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise path_error(err, path, "cannot write") from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the name itself is too long: nothing was created
            pass
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def path_error(err: OSError, path: str | os.PathLike, doing: str) -> OSError:
    """The same kind of OSError with a one-line message that names `path`."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENAMETOOLONG:
        reason = "file name too long"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST) and not Path(path).is_dir():
        reason = f"{reason} (a parent or the path itself is a file)"
    # one argument: str() is exactly the message (no "[Errno n]" prefix, no repeated path)
    new = type(err)(f"{doing} {path}: {reason}")
    new.path_errno = err.errno  # type: ignore[attr-defined]
    return new


# ---- folders ------------------------------------------------------------------------


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_marker(folder: Path, kind: str, files: list[str] | None = None) -> None:
    marker: dict = {"format": MARKER_FORMAT, "kind": kind, "written_by": "srgan"}
    if files is not None:
        marker["files"] = sorted(files)
    write_text_atomic(folder / MARKER, json.dumps(marker, indent=1) + "\n")


def claim_output_dir(path: str | os.PathLike, kind: str, adopt: Callable[[str], bool] | None = None) -> Path:
    """Make `path` a folder that step `kind` may write into (see the module doc).

    `adopt(relative_path)` recognises the files of an output written before markers
    existed: a folder without a marker whose every file it accepts is claimed too.
    OSError (e.g. a parent is a file, a name too long) names the folder."""
    folder = Path(path).expanduser()
    try:
        exists = folder.exists() or folder.is_symlink()
    except OSError as err:
        raise path_error(err, folder, "cannot use output folder") from err
    if exists:
        if not folder.is_dir():
            raise OutputDirError(f"output folder {folder} exists and is not a folder; pass a folder path")
        marker = read_marker(folder)
        if marker is not None and marker["kind"] == kind:
            return folder
        files = relative_files(folder) if marker is None else []
        legacy = marker is None and adopt is not None and all(adopt(f) for f in files)
        if any(folder.iterdir()) and not legacy:
            raise OutputDirError(_not_ours(folder, kind, marker))
    else:
        try:
            folder.mkdir(parents=True)
        except OSError as err:
            raise path_error(err, folder, "cannot create output folder") from err
    write_marker(folder, kind)
    return folder


def _not_ours(folder: Path, kind: str, marker: dict | None) -> str:
    whose = f"it is a {marker['kind']} output" if marker else f"it has other content and no {MARKER} marker"
    return (
        f"output folder {folder} was not written by srgan {kind} ({whose}); srgan never "
        "overwrites or deletes files it did not write: pass a new or empty folder"
    )


def check_replaceable(
    path: str | os.PathLike, kind: str, legacy_files: Callable[[Path], set[str] | None] | None = None
) -> None:
    """Raise OutputDirError unless `path` is absent, empty, or a complete `kind` output that
    holds only files its marker lists. `legacy_files(folder)` may recognise an output
    written before markers existed, returning the files it lists (None: not ours)."""
    folder = Path(path).expanduser()
    if not (folder.exists() or folder.is_symlink()):
        return
    if folder.is_symlink():
        raise OutputDirError(
            f"output folder {folder} is a symbolic link: it is replaced as a whole, so pass the real folder "
            f"({os.path.realpath(folder)}) instead"
        )
    if not folder.is_dir():
        raise OutputDirError(f"output folder {folder} exists and is not a folder; pass a folder path")
    if not any(folder.iterdir()):
        return
    marker = read_marker(folder)
    listed: set[str] | None = None
    if marker is not None and marker["kind"] == kind and isinstance(marker.get("files"), list):
        listed = set(marker["files"]) | {MARKER}
    elif marker is None and legacy_files is not None:
        listed = legacy_files(folder)
    if listed is None:
        raise OutputDirError(_not_ours(folder, kind, marker))
    foreign = sorted(set(relative_files(folder)) - listed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputDirError(
            f"output folder {folder} is an earlier {kind} output but also holds files it did not "
            f"write ({shown}); move them away or pass another folder"
        )


def relative_files(folder: Path) -> list[str]:
    """Every non-directory below `folder` (symlinks included, not followed), as posix paths."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out.extend((rel / name).as_posix() for name in files)
        out.extend((rel / name).as_posix() for name in dirs if os.path.islink(os.path.join(root, name)))
    return out


def replace_dir_atomically(
    path: str | os.PathLike,
    kind: str,
    build: Callable[[Path], T],
    legacy_files: Callable[[Path], set[str] | None] | None = None,
) -> T:
    """Run `build(temp)` in a hidden sibling of `path`, mark it, then swap it into place.
    An old folder is replaced only if check_replaceable allows it (checked before the
    build and again before the swap); on failure nothing but the temporary is removed."""
    out = Path(path).expanduser().absolute()
    check_replaceable(out, kind, legacy_files)
    remove_stale_siblings(out)
    temp = sibling(out, "tmp")
    try:
        try:
            temp.mkdir(parents=True)  # parents: out's parent may not exist yet
        except OSError as err:
            raise path_error(err, out, "cannot create output folder") from err
        result = build(temp)
        write_marker(temp, kind, [f for f in relative_files(temp) if f != MARKER])
        check_replaceable(out, kind, legacy_files)
        _swap(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return result


def _swap(temp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(temp, out)
        return
    old = sibling(out, "old")
    os.rename(out, old)
    try:
        os.rename(temp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- hidden siblings of dead writers ------------------------------------------------------


def _host_tag() -> str:
    # pods sharing a volume can have equal pids: the host tells whose pid it is
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def sibling(out: Path, role: str) -> Path:
    """A hidden folder name beside `out` (same file system, so renames are atomic),
    naming the writer's host and pid so that a later run can tell it is stale."""
    return out.parent / f".{out.name}.{role}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_siblings(out: Path) -> list[Path]:
    """Delete hidden siblings of `out` left by writers on this host that no longer run."""
    out = Path(out).expanduser().absolute()
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    try:
        names = os.listdir(out.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        host, pid = match.group(2), int(match.group(3))
        stale = out.parent / name
        if host != _host_tag() or process_alive(pid):
            log.warning("%s belongs to a running (or remote) writer: left alone", stale)
            continue
        log.warning("removing %s, left over by process %d, which no longer runs", stale, pid)
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    return removed


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
