"""`precision: auto` reads the hardware: native bf16 CPU flags, GPU compute capability."""

from __future__ import annotations

import pytest

from srcore import precision as P

ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma bmi2\n"
SAPPHIRE = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN5 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN3, "float32"), (SAPPHIRE, "mixed_bfloat16"),
                                               (ZEN5, "mixed_bfloat16")])
def test_cpu_auto_uses_bf16_only_where_native(tmp_path, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    policy, reason = P.auto_precision(gpu_capabilities=[], flags=P.cpu_flags(path))
    assert policy == expected
    assert reason.startswith("CPU has native bf16") == (expected == "mixed_bfloat16")


def test_avx2_only_cpu_resolves_to_float32_with_a_reason(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN3)
    assert P.cpu_model(path) == "AMD EPYC 7B13"
    policy, reason = P.auto_precision(gpu_capabilities=[], flags=P.cpu_flags(path))
    assert policy == "float32" and "emulated" in reason


@pytest.mark.parametrize("caps, expected", [([(8, 0)], "mixed_bfloat16"), ([(9, 0), (8, 6)], "mixed_bfloat16"),
                                            ([(7, 5)], "mixed_float16"), ([(8, 0), (7, 0)], "mixed_float16")])
def test_gpu_auto_by_compute_capability(caps, expected):
    assert P.auto_precision(gpu_capabilities=caps, flags=set())[0] == expected


def test_explicit_choice_is_kept():
    assert P.resolve_precision("mixed_float16") == ("mixed_float16", "requested")


def test_this_machine_resolves_to_a_real_policy():
    policy, reason = P.resolve_precision("auto")
    assert policy in ("float32", "mixed_bfloat16", "mixed_float16") and reason
    native = bool(set(P.NATIVE_BF16_CPU_FLAGS) & P.cpu_flags())
    if not native:
        assert policy == "float32"
