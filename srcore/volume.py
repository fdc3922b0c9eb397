"""Is the shared volume writable for this process? Asked by ingest, train and evaluate in
their first second, before any download, training or MLflow run.

Why: the image runs as uid 1000 (group 0). A fresh ReadWriteOnce block volume (EBS, GCE
PD, Azure Disk, Ceph RBD) is formatted and mounted as root:root 0755, and KFP has no
`fsGroup` setting for a task's pod, so without this check ingest would die with a
PermissionError deep inside its first write (and Argo would retry it three times). The
fix is a one-off Job that chowns the volume (pipeline/k8s/volume-permissions.yaml,
applied with the rest of pipeline/k8s).

The check really writes: it creates and removes a temporary file in the folder a step
will write into, or in its nearest existing ancestor when the folder does not exist
yet (that is where the step's mkdir would fail). It creates no folder, so the
ownership markers of srcore.atomic see nothing new. `os.access` is not used: it says
yes to root on a read-only directory and knows nothing of read-only mounts or quotas.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable

from srcore.config import Config

# The Config folders each step writes into (train and evaluate: the weights of the
# content loss and of LPIPS are downloaded into cache_dir when missing).
STEP_OUTPUTS = {
    "ingest": ("data_dir", "cache_dir"),
    "train": ("model_dir", "cache_dir"),
    "evaluate": ("eval_dir", "cache_dir"),
}
FIX_MANIFEST = "pipeline/k8s/volume-permissions.yaml"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class VolumeNotWritableError(OSError):
    """A step's output folder (on the shared volume) cannot be written by this uid."""


def _existing(path: Path) -> Path:
    """`path`, else its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return Path(path.anchor or ".")


def _namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "$NS"
    except OSError:
        return "$NS"


def fix_hint() -> str:
    return (f"make the volume writable once with `kubectl -n {_namespace()} apply -k pipeline/k8s` "
            f"(Job srgan-volume-permissions, {FIX_MANIFEST}; see pipeline/README.md, 'Volume')")


def check_writable(path: str | os.PathLike) -> Path:
    """Raise VolumeNotWritableError (one line: folder, uid, fix) unless this process can
    create a file in `path`, or in its nearest existing ancestor. Returns the folder tried."""
    target = _existing(Path(path).expanduser())
    try:
        if not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
        fd, probe = tempfile.mkstemp(prefix=".srgan-write-check-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise VolumeNotWritableError(
            f"{target} is not writable for uid {os.getuid()} gid {os.getgid()} ({reason}), needed for "
            f"{path}: {fix_hint()}") from e
    return target


def check_step(cfg: Config, step: str, paths: Iterable[str] = ()) -> list[Path]:
    """check_writable for every folder `step` writes into (STEP_OUTPUTS) plus `paths`."""
    folders = [getattr(cfg, field) for field in STEP_OUTPUTS.get(step, ())] + list(paths)
    return [check_writable(folder) for folder in dict.fromkeys(f for f in folders if f)]
