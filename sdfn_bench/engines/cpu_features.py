"""What this CPU can do in reduced precision, read from the machine (never assumed).

Reduced precision only pays where the CPU has instructions for it:

- bf16: AVX512-BF16 (``avx512_bf16``, AMD Zen 4 and Intel Cooper Lake+) or AMX (``amx_bf16``,
  Intel Sapphire Rapids+). Without them PyTorch's bf16 convolutions are emulated and many times
  slower than fp32, so bf16 is refused there.
- int8: VNNI (``avx512_vnni`` or ``avx_vnni``) or AMX (``amx_int8``) give the fast int8 dot
  products; with VNNI, ONNX Runtime's int8 needs no ``reduce_range`` (that option exists for
  the saturation of pre-VNNI ``vpmaddubsw``).

Flags come from ``/proc/cpuinfo`` (Linux); elsewhere from PyTorch's
``torch.backends.cpu.get_cpu_capability()`` (which only says ``AVX512``/``AVX2``/..., so bf16 and
VNNI are then reported absent: refused rather than guessed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The reduced-precision facts of one CPU.

    Attributes:
        model: the model name (``/proc/cpuinfo`` ``model name``).
        vendor: ``AuthenticAMD``, ``GenuineIntel``, ... (empty when unknown).
        flags: the subset of :data:`BF16_FLAGS` + :data:`INT8_FLAGS` + ``avx512f``/``avx2`` present.
        source: where the flags came from (``/proc/cpuinfo`` or ``torch``).
    """

    model: str
    vendor: str
    flags: frozenset[str]
    source: str

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def int8_vnni(self) -> bool:
        return any(f in self.flags for f in INT8_FLAGS)

    def bf16_refusal(self) -> str | None:
        """None when bf16 is native here, else the reason to refuse it."""
        if self.bf16:
            return None
        return (f"this CPU ({self.model}) has neither AVX512-BF16 nor AMX-BF16 (flags from {self.source}); "
                "bf16 would be emulated and many times slower than fp32: use --precision fp32 or int8")

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "vendor": self.vendor, "flags": sorted(self.flags), "source": self.source,
                "bf16": self.bf16, "int8_vnni": self.int8_vnni}


_KEPT = frozenset(BF16_FLAGS + INT8_FLAGS + ("avx512f", "avx2"))


def parse_cpuinfo(text: str) -> CpuFeatures:
    """:class:`CpuFeatures` of the first processor in a ``/proc/cpuinfo`` text (pure; testable)."""
    model = vendor = ""
    flags: Iterable[str] = ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = value.split()
        elif not line.strip() and model and flags:
            break
    return CpuFeatures(model=model or "unknown", vendor=vendor, flags=frozenset(flags) & _KEPT, source="/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (cached)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        import platform

        import torch

        capability = str(torch.backends.cpu.get_cpu_capability()).lower()
        flags = {"avx512f"} if "avx512" in capability else ({"avx2"} if "avx2" in capability else set())
        return CpuFeatures(model=platform.processor() or "unknown", vendor="", flags=frozenset(flags),
                           source=f"torch ({capability})")
