"""Safe outputs: files written under a temporary name and renamed into place, and output
folders that are only ever written into, or replaced, when srgan made them.

The ownership rule, one for every step that writes a folder (ingest, train, evaluate,
upscale, export; a sweep's trials are train and evaluate outputs):

- A folder srgan writes carries a marker file, MARKER (`.srgan-output.json`), naming the
  kind of output (`kind`: the step) and, for folders that are replaced as a whole, every
  file it holds.
- A step writes into a folder only when it is new (created), empty, or carries a marker
  of the same kind. Anything else (a file, a folder with other content, another kind's
  output) is refused with OutputDirError in one line naming the folder and a few of its
  entries: srgan never overwrites, renames or deletes what it did not write. File names
  prove nothing (a user's `generator.keras` or `metrics.json` looks like ours).
- `check_output_dir(path, kind)` checks without touching anything: steps call it before
  slow work (loading a model, reading data), so a refusal costs nothing, and
  `claim_output_dir(path, kind)` creates and marks the folder only when the step is about
  to write (a bad model URI leaves no empty folder behind).
- `replace_dir_atomically(path, kind, build)` builds a new folder under a hidden sibling
  name and swaps it in. It replaces an old folder only when the old folder's marker is of
  the same kind and the folder holds no file the marker does not list (a file a user
  dropped into it is never deleted).
- Folders written before markers existed: ingest outputs are adopted when their own
  record proves it (manifest.json's sha256 over every file matches, see
  `check_replaceable(proven_files=...)`); for every other kind nothing in the folder
  proves it, so the refusal says how to adopt it by hand:
  `python -m srcore.atomic adopt KIND FOLDER` (writes the marker, listing the files).
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
import stat
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


def spreadsheet_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ (or a tab or
    CR, which some spreadsheets skip before such a character) gets a leading single quote
    (OWASP CSV injection). Numbers are left alone: a negative number is data, not a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


# ---- folders ------------------------------------------------------------------------


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one)."""
    path = folder / MARKER
    try:
        # a symlink (or a folder, FIFO) in the marker's place is not srgan's marker: a link can
        # lend a foreign folder another output's marker, and a FIFO would block the read
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_marker(folder: Path, kind: str, files: list[str] | None = None) -> None:
    marker: dict = {"format": MARKER_FORMAT, "kind": kind, "written_by": "srgan"}
    if files is not None:
        marker["files"] = sorted(files)
    write_text_atomic(folder / MARKER, json.dumps(marker, indent=1) + "\n")


def _exists(folder: Path) -> bool:
    try:
        return folder.exists() or folder.is_symlink()
    except OSError as err:
        raise path_error(err, folder, "cannot use output folder") from err


def check_output_dir(path: str | os.PathLike, kind: str) -> Path:
    """Raise OutputDirError unless step `kind` may write into `path` (absent, an empty
    folder, or a folder with a `kind` marker); touches nothing. OSError names the folder."""
    folder = Path(path).expanduser()
    if not _exists(folder):
        return folder
    if not folder.is_dir():
        raise OutputDirError(f"output folder {folder} exists and is not a folder ({_what(folder)}); "
                             "pass a folder path")
    marker = read_marker(folder)
    if marker is not None and marker["kind"] == kind:
        return folder
    try:
        empty = not any(folder.iterdir())
    except OSError as err:
        raise path_error(err, folder, "cannot use output folder") from err
    if not empty:
        raise OutputDirError(_not_ours(folder, kind, marker))
    return folder


def claim_output_dir(path: str | os.PathLike, kind: str) -> Path:
    """Make `path` a folder that step `kind` writes into (see the module doc): checked,
    created when absent, marked. Call it when the step is about to write."""
    folder = check_output_dir(path, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise path_error(err, folder, "cannot create output folder") from err
    marker = read_marker(check_output_dir(folder, kind))  # again: another process may have raced us
    if marker is None:
        write_marker(folder, kind)
    return folder


def _what(path: Path) -> str:
    try:
        return "a symbolic link" if path.is_symlink() else f"a file of {path.stat().st_size} bytes"
    except OSError:
        return "not readable"


def describe_entries(folder: Path, shown: int = 4) -> str:
    """`a.txt, notes/ and 3 more`: a few entries of a folder, for error messages."""
    try:
        names = sorted(e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in os.scandir(folder))
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    text = ", ".join(repr(n) if not n.isprintable() else n for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _not_ours(folder: Path, kind: str, marker: dict | None) -> str:
    holds = describe_entries(folder)
    if marker is not None:
        return (f"output folder {folder} is a {printable_kind(marker['kind'])} output, not a {kind} output "
                f"(it holds {holds}); srgan writes only into new or empty folders or its own {kind} "
                "outputs: pass another folder")
    return (f"output folder {folder} was not written by srgan {kind} (it holds {holds} and no {MARKER} "
            f"marker); srgan never overwrites or deletes files it did not write: pass a new or empty folder "
            f"(if srgan {kind} wrote it before markers existed: python -m srcore.atomic adopt {kind} {folder})")


def printable_kind(kind: str) -> str:
    return kind if kind.isprintable() and len(kind) <= 40 else repr(kind[:40])


def check_replaceable(
    path: str | os.PathLike, kind: str, proven_files: Callable[[Path], set[str] | None] | None = None
) -> None:
    """Raise OutputDirError unless `path` is absent, empty, or a complete `kind` output that
    holds only files its marker lists. `proven_files(folder)` may prove, from the folder's
    own records, that it is a `kind` output written before markers existed: it returns the
    files it holds (None: not proven); the folder is then adopted (marked)."""
    folder = Path(path).expanduser()
    if not _exists(folder):
        return
    if folder.is_symlink():
        raise OutputDirError(
            f"output folder {folder} is a symbolic link: it is replaced as a whole, so pass the real folder "
            f"({os.path.realpath(folder)}) instead"
        )
    if not folder.is_dir():
        raise OutputDirError(f"output folder {folder} exists and is not a folder ({_what(folder)}); "
                             "pass a folder path")
    if not any(folder.iterdir()):
        return
    marker = read_marker(folder)
    listed: set[str] | None = None
    if marker is not None and marker["kind"] == kind and isinstance(marker.get("files"), list):
        listed = set(marker["files"]) | {MARKER}
    elif marker is None and proven_files is not None:
        listed = proven_files(folder)
        if listed is not None:
            log.info("%s: its own records prove srgan %s wrote it (before markers existed): adopting it", folder, kind)
            write_marker(folder, kind, sorted(listed - {MARKER}))
            listed |= {MARKER}
    if listed is None:
        raise OutputDirError(_not_ours(folder, kind, marker))
    foreign = sorted(set(relative_files(folder)) - listed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputDirError(
            f"output folder {folder} is an earlier {kind} output but also holds files it did not "
            f"write ({shown}); move them away or pass another folder"
        )


def adopt(path: str | os.PathLike, kind: str) -> Path:
    """Mark a folder written by srgan `kind` before markers existed as that kind's output
    (listing the files it holds now). The user's decision: nothing in such a folder proves
    who wrote it. Refused when it carries another kind's marker."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or folder.is_symlink():
        raise OutputDirError(f"{folder} is not a folder (a symbolic link is not adopted: pass the real folder)")
    marker = read_marker(folder)
    if marker is not None and marker["kind"] != kind:
        raise OutputDirError(f"{folder} already carries a {printable_kind(marker['kind'])} marker; not changed")
    write_marker(folder, kind, [f for f in relative_files(folder) if f != MARKER])
    log.info("%s is now marked as a srgan %s output (%s)", folder, kind, describe_entries(folder))
    return folder


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
    proven_files: Callable[[Path], set[str] | None] | None = None,
) -> T:
    """Run `build(temp)` in a hidden sibling of `path`, mark it, then swap it into place.
    An old folder is replaced only if check_replaceable allows it (checked before the
    build and again before the swap); on failure nothing but the temporary is removed."""
    out = Path(path).expanduser().absolute()
    check_replaceable(out, kind, proven_files)
    remove_stale_siblings(out)
    temp = sibling(out, "tmp")
    try:
        try:
            temp.mkdir(parents=True)  # parents: out's parent may not exist yet
        except OSError as err:
            raise path_error(err, out, "cannot create output folder") from err
        result = build(temp)
        write_marker(temp, kind, [f for f in relative_files(temp) if f != MARKER])
        check_replaceable(out, kind, proven_files)
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


KINDS = ("ingest", "train", "evaluate", "upscale", "export")


def main(argv: list[str] | None = None) -> int:
    """`python -m srcore.atomic adopt KIND FOLDER`: the migration for folders srgan wrote
    before ownership markers existed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m srcore.atomic", description=main.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("adopt", help="mark FOLDER as srgan KIND's output (only if srgan wrote it)")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        adopt(args.folder, args.kind)
    except (OutputDirError, OSError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
