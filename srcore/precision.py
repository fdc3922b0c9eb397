"""`precision: auto`: the fastest Keras dtype policy the hardware runs natively.

- GPU: mixed_bfloat16 from compute capability 8.0 (Ampere) on, mixed_float16 below
  (bf16 is emulated there, fp16 has tensor cores since 7.0).
- CPU: mixed_bfloat16 only where the CPU has native bf16 arithmetic (AVX512_BF16 or
  AMX-BF16 in /proc/cpuinfo, which oneDNN uses); elsewhere bf16 is emulated and about
  10x slower than float32 (measured on an AVX2-only AMD Zen 3: 0.15 vs 1.50 img/s).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str]:
    """The CPU feature flags of the first processor ('flags' on x86, 'Features' on ARM)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | Path = CPUINFO) -> str:
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown CPU"


def _gpu_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability") or (0, 0)))
    return caps


def auto_precision(gpu_capabilities: list[tuple[int, int]] | None = None,
                   flags: set[str] | None = None) -> tuple[str, str]:
    """(policy, reason) for this machine; arguments override detection (tests)."""
    caps = _gpu_capabilities() if gpu_capabilities is None else gpu_capabilities
    if caps:
        low = min(caps)
        if low >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {low[0]}.{low[1]} >= 8.0 runs bf16 natively"
        return "mixed_float16", f"GPU compute capability {low[0]}.{low[1]} < 8.0: fp16 with loss scaling"
    flags = cpu_flags() if flags is None else flags
    native = sorted(set(NATIVE_BF16_CPU_FLAGS) & flags)
    if native:
        return "mixed_bfloat16", f"CPU has native bf16 ({', '.join(native)})"
    return "float32", "CPU without native bf16 (no avx512_bf16/amx_bf16): bf16 would be emulated"


def resolve_precision(requested: str) -> tuple[str, str]:
    """The policy to use and why; explicit choices are kept as they are."""
    if requested != "auto":
        return requested, "requested"
    policy, reason = auto_precision()
    log.info("precision auto -> %s (%s)", policy, reason)
    return policy, reason
