"""Sizes and device names as users type them."""

from __future__ import annotations

import re

from .errors import ArgsError

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
MAX_SIZE = 1024**5  # 1 PiB: more memory than any one device has; a bigger size is a typo
MAX_DEVICE_INDEX = 255  # llama.cpp's backends count a handful of devices (GGML_CUDA_MAX_DEVICES is 16)


def parse_size(text: str) -> int:
    """'24GiB', '24G' (binary), '24GB' (decimal), '512MiB', '1.5g', '1073741824' -> bytes (at most 1 PiB)."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ArgsError(f"bad size {text!r} (examples: 24GiB, 512MiB, 16G)")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]  # a 400-digit number is inf here, not an error
    if not n <= MAX_SIZE:
        raise ArgsError(f"bad size {text!r}: more than 1 PiB")
    return int(n)


def device_name(text: str) -> str:
    """'cpu' -> CPU, 'cuda0' -> CUDA0, 'rocm1' -> ROCm1, 'vulkan0' -> Vulkan0 (llama.cpp's spelling)."""
    t = text.strip()
    low = t.lower()
    if low == "cpu":
        return "CPU"
    for prefix in ("CUDA", "ROCm", "Vulkan", "SYCL", "Metal"):
        index = low[len(prefix):]
        if low.startswith(prefix.lower()) and index.isascii() and index.isdigit():  # not '²' or '１'
            if int(index) > MAX_DEVICE_INDEX:
                raise ArgsError(f"unknown device {text!r}: device numbers go up to {MAX_DEVICE_INDEX}")
            return prefix + str(int(index))  # cuda00 is CUDA0, as llama.cpp names it
    raise ArgsError(f"unknown device {text!r} (examples: cpu, cuda0, rocm1)")


def gib(n: int | float) -> str:
    return f"{n / 1024**3:,.2f} GiB"
