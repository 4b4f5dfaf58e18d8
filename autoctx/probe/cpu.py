"""Host CPU facts that change what llama.cpp allocates: which weight types its CPU backend repacks."""

from __future__ import annotations

import functools
import platform

from ..memory import REPACK_ARM_I8MM, REPACK_X86_AVX2, REPACK_X86_AVX512


def repack_rules(machine: str, flags: set[str]) -> dict[str, int]:
    """ggml-cpu/repack.cpp's choice for this ISA: {ggml type name: required ne1 multiple}."""
    if machine in ("x86_64", "amd64", "i686"):
        if "avx512f" in flags:
            return dict(REPACK_X86_AVX512)
        if "avx2" in flags:
            return dict(REPACK_X86_AVX2)
        return {}
    if machine in ("aarch64", "arm64"):
        return dict(REPACK_ARM_I8MM) if "i8mm" in flags else {}
    return {}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def host_repack_rules() -> dict[str, int]:
    return repack_rules(platform.machine().lower(), _cpu_flags())
