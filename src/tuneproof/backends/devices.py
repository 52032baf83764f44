"""Where local models run and in which precision: the training device and whether bfloat16 is
fast here (a GPU that supports it, or a CPU with AVX512-BF16 or AMX-BF16)."""

from __future__ import annotations

from pathlib import Path


def bf16_supported(device: str) -> bool:
    """True when bfloat16 is fast on ``device``: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (elsewhere bf16 runs emulated and is slower than float32)."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
