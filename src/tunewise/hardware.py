"""What CPU this is, in the words every published figure carries next to it.

A timing on a CPU with native bf16 matmul (AVX-512 BF16 or AMX) says little about one with AVX2
only, where bf16 is emulated and fp32 is the fast dtype. So benchmarks, the demo summary and the
reports name the CPU kind next to their figures::

    >>> from tunewise.hardware import cpu_info, describe_cpu
    >>> describe_cpu()
    'AMD EPYC, AVX-512 BF16, 2 cores'

``cpu_info()`` reads ``/proc/cpuinfo`` (Linux); elsewhere it falls back to ``platform`` and lists
no flags, and the kind is "unknown".

``TUNEWISE_CPU_ISA=avx2`` (or ``avx512``, ``avx512_bf16``) makes tunewise treat the CPU as one of
that class: the flags above it are dropped and the kind says "(emulated)". Benchmarks use it, together
with the ISA caps of oneDNN, MKL and ATen (:func:`isa_cap_env`), to measure the AVX2 code path on a
newer CPU; such figures are labelled as emulated and are no substitute for the real CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

# What each emulated class keeps (TUNEWISE_CPU_ISA), and the matching caps of the math libraries.
_ISA_KEEP = {
    "avx2": {"avx2"},
    "avx512": {"avx2", "avx512f"},
    "avx512_bf16": {"avx2", "avx512f", "avx512_bf16"},
}
_ISA_CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ATEN_CPU_CAPABILITY": "avx512"},
    "avx512_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                    "ATEN_CPU_CAPABILITY": "avx512"},
}

# The instruction-set flags that decide which dtype is fast for matmuls, in /proc/cpuinfo's names.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _read_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_kind(flags: set[str] | frozenset[str] | list[str]) -> str:
    """The matmul class of a CPU from its flags: "AMX", "AVX-512 BF16", "AVX-512", "AVX2" or
    "unknown" (the best one it has)."""
    f = set(flags)
    if "amx_bf16" in f:
        return "AMX"
    if "avx512_bf16" in f:
        return "AVX-512 BF16"
    if "avx512f" in f:
        return "AVX-512"
    if "avx2" in f:
        return "AVX2"
    return "unknown"


def native_bf16(flags: set[str] | frozenset[str] | list[str]) -> bool:
    """True where the CPU has bf16 matmul instructions (bf16 is then faster than fp32)."""
    return bool(set(flags) & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """``{"model", "cores", "flags", "kind", "native_bf16"}`` of this machine's CPU. ``cores`` is
    the number of CPUs this process may run on (what torch uses), ``flags`` the relevant ones of
    :data:`RELEVANT_FLAGS` that are present."""
    try:
        model, flags = _read_cpuinfo(Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        model, flags = "", set()
    emulated = os.environ.get("TUNEWISE_CPU_ISA", "").strip().lower()
    if emulated:
        if emulated not in _ISA_KEEP:
            from tunewise.errors import TunewiseError

            raise TunewiseError(f"TUNEWISE_CPU_ISA={emulated!r} is not a CPU class tunewise knows",
                                f"use one of: {', '.join(_ISA_KEEP)} (or unset it)")
        flags = {f for f in flags if f not in RELEVANT_FLAGS} | (flags & _ISA_KEEP[emulated])
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "cores": cores,
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "kind": cpu_kind(flags) + (" (emulated)" if emulated else ""),
        "native_bf16": native_bf16(flags),
    }


@functools.lru_cache(maxsize=None)
def physical_cores(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once): the
    thread count at which llama.cpp decodes fastest. Falls back to ``cpu_info()["cores"]``."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    cores = set()
    for block in text.split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if "processor" not in fields or "core id" not in fields:
            continue
        if allowed is None or int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or cpu_info()["cores"]


def isa_cap_env(isa: str) -> dict[str, str]:
    """Environment variables that make tunewise, oneDNN, MKL and ATen use only ``isa``'s
    instructions (set them before torch is imported, i.e. in a child process)."""
    if isa not in _ISA_CAPS:
        raise ValueError(f"unknown ISA {isa!r}: use one of {', '.join(_ISA_CAPS)}")
    return {"TUNEWISE_CPU_ISA": isa, **_ISA_CAPS[isa]}


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line for a figure's caption: "MODEL, KIND, N cores"."""
    i = info or cpu_info()
    return f"{i['model']}, {i['kind']}, {i['cores']} core{'s' if i['cores'] != 1 else ''}"


def restart_with_isa(script: str, argv: list[str], base_env: dict[str, str]) -> None:
    """For benchmarks' ``--isa X`` (or ``--isa=X``) in ``argv``: re-execute ``script argv`` with
    :func:`isa_cap_env` (the caps must be in place before torch loads, and child processes inherit
    them). Returns when there is nothing to do: no ``--isa``, "native", an unknown name (the
    script's own argument parser reports it), or this process already runs under it."""
    import sys

    isa = None
    for i, a in enumerate(argv):
        if a.startswith("--isa="):
            isa = a.split("=", 1)[1]
        elif a == "--isa" and i + 1 < len(argv):
            isa = argv[i + 1]
    if not isa or isa not in _ISA_CAPS or os.environ.get("TUNEWISE_CPU_ISA") == isa:
        return
    env = {**base_env, **isa_cap_env(isa)}
    os.execve(sys.executable, [sys.executable, script, *argv], env)
