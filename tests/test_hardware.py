"""The CPU line every figure carries, the emulated-ISA switch, and the MFU formula."""

from __future__ import annotations

import pytest

from tunewise import hardware
from tunewise.errors import TunewiseError
from tunewise.estimate import ModelShape, measure_matmul_peak, model_flops_per_token

EPYC_AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_vnni
"""
EPYC_AVX2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
XEON_AMX = ("model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")


@pytest.fixture()
def cpuinfo(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEWISE_CPU_ISA", raising=False)
    hardware.cpu_info.cache_clear()

    def write(text: str) -> str:
        p = tmp_path / "cpuinfo"
        p.write_text(text)
        hardware.cpu_info.cache_clear()
        return str(p)

    yield write
    hardware.cpu_info.cache_clear()


@pytest.mark.parametrize("text, kind, native, flags", [
    (EPYC_AVX512, "AVX-512 BF16", True, ["avx2", "avx512f", "avx512_bf16"]),
    (EPYC_AVX2, "AVX2", False, ["avx2"]),
    (XEON_AMX, "AMX", True, ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]),
    ("model name\t: Some ARM\nFeatures\t: fp asimd\n", "unknown", False, []),
])
def test_cpu_info_reads_kind_and_flags(cpuinfo, text, kind, native, flags):
    info = hardware.cpu_info(cpuinfo(text))
    assert info["kind"] == kind
    assert info["native_bf16"] is native
    assert info["flags"] == flags
    assert info["cores"] >= 1
    assert hardware.describe_cpu(info).startswith(info["model"] + ", " + kind + ", ")


def test_emulated_isa_drops_newer_flags(cpuinfo, monkeypatch):
    path = cpuinfo(EPYC_AVX512)
    monkeypatch.setenv("TUNEWISE_CPU_ISA", "avx2")
    info = hardware.cpu_info(path)
    assert info == {**info, "kind": "AVX2 (emulated)", "native_bf16": False, "flags": ["avx2"]}
    hardware.cpu_info.cache_clear()
    monkeypatch.setenv("TUNEWISE_CPU_ISA", "avx512")
    assert hardware.cpu_info(path)["kind"] == "AVX-512 (emulated)"


def test_emulated_isa_reaches_precision_choice(monkeypatch):
    """`precision: auto` follows the emulated class (fp32 on AVX2)."""
    import torch

    from tunewise.models import resolve_dtype

    monkeypatch.setattr(hardware, "cpu_info", lambda *a: {"native_bf16": False})
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(hardware, "cpu_info", lambda *a: {"native_bf16": True})
    assert resolve_dtype("auto", "cpu") == torch.bfloat16


def test_unknown_emulated_isa_is_a_clear_error(cpuinfo, monkeypatch):
    monkeypatch.setenv("TUNEWISE_CPU_ISA", "sse9")
    with pytest.raises(TunewiseError, match="TUNEWISE_CPU_ISA"):
        hardware.cpu_info(cpuinfo(EPYC_AVX2))


def test_isa_cap_env_caps_every_library():
    env = hardware.isa_cap_env("avx2")
    assert env == {"TUNEWISE_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    with pytest.raises(ValueError):
        hardware.isa_cap_env("avx1")


# A shape small enough to count by hand: 2 layers, hidden 8, MLP 16, 2 query heads of 4, 1 KV head.
TINY = ModelShape("tiny", n_layers=2, hidden=8, intermediate=16, n_heads=2, n_kv_heads=1, vocab=10)


def _count_by_hand(method: str, lora_r: int, lengths: list[int], loss_tokens: int) -> float:
    """Walk every matmul of a training step and add up its FLOPs, token by token."""
    linears = [(8, 8), (8, 4), (8, 4), (8, 8), (8, 16), (8, 16), (16, 8)]  # q k v o gate up down
    tokens = sum(lengths)
    total = 0.0
    for _layer in range(2):
        for a, b in linears:
            fwd = 2 * a * b * tokens
            total += fwd + fwd  # forward + gradient w.r.t. the input
            if method == "full":
                total += fwd  # + gradient w.r.t. the weight
            else:
                total += 3 * 2 * lora_r * (a + b) * tokens  # the adapter's A and B, all three passes
        for n in lengths:  # causal attention: query i sees i keys (counted as l^2/2 per example)
            fwd = 2 * (2 * 8 * n * n / 2)  # QK^T and PV, q width 8
            total += 3 * fwd
    head_passes = 3 if method == "full" else 2
    total += head_passes * 2 * 8 * 10 * loss_tokens
    return total / tokens


@pytest.mark.parametrize("method", ["lora", "full"])
def test_model_flops_formula_matches_a_hand_count(method):
    lengths, loss_tokens = [3, 5, 12], 10
    tokens = sum(lengths)
    lora = 0 if method == "full" else TINY.lora_params(2)
    got = model_flops_per_token(TINY, method, lora, attention_len=sum(n * n for n in lengths) / tokens,
                                head_share=loss_tokens / tokens)
    assert got == pytest.approx(_count_by_hand(method, 2, lengths, loss_tokens))


def test_lora_needs_two_thirds_of_full_on_frozen_weights():
    """The old 6N rule overstated LoRA's work: frozen weights cost 4N, not 6N."""
    full = model_flops_per_token(TINY, "full")
    lora = model_flops_per_token(TINY, "lora")
    assert lora == pytest.approx(full * 4 / 6)


def test_matmul_peak_is_the_best_shape_and_skips_hopeless_ones(monkeypatch):
    import torch

    calls: list[tuple[int, ...]] = []
    real = torch.randn

    def spy(*shape, **kw):
        calls.append(shape)
        return real(*shape, **kw)

    monkeypatch.setattr(torch, "randn", spy)
    # a shape of 2 TFLOPs cannot run in 1 s on a 2-core machine: skipped after the small ones
    peak = measure_matmul_peak("fp32", seconds=1.0, shapes=((10_000, 10_000, 10_000), (64, 64, 64), (96, 96, 96)))
    assert peak > 0
    assert (10_000, 10_000) not in calls
    assert calls[:2] == [(64, 64), (64, 64)] and (96, 96) in calls  # smallest first


def test_restart_with_isa_execs_once_with_the_caps(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.delenv("TUNEWISE_CPU_ISA", raising=False)
    for argv in ([], ["--steps", "2"], ["--isa", "native"], ["--isa=sse9"], ["--isa"]):
        hardware.restart_with_isa("bench.py", argv, {"PATH": "/bin"})  # nothing to do / left to argparse
    assert calls == []
    hardware.restart_with_isa("bench.py", ["--steps", "2", "--isa", "avx2"], {"PATH": "/bin"})
    hardware.restart_with_isa("bench.py", ["--isa=avx512"], {})
    (argv, env), (argv2, env2) = calls
    assert argv[1:] == ["bench.py", "--steps", "2", "--isa", "avx2"]
    assert env == {"PATH": "/bin", **hardware.isa_cap_env("avx2")}
    assert env2["TUNEWISE_CPU_ISA"] == "avx512"
    monkeypatch.setenv("TUNEWISE_CPU_ISA", "avx2")  # the restarted process: no second restart
    hardware.restart_with_isa("bench.py", ["--isa", "avx2"], {})
    assert len(calls) == 2


def test_train_and_estimate_resolve_precision_one_way(monkeypatch):
    """`precision: auto` and the explicit choices mean the same in train and estimate."""
    from tunewise.estimate import cpu_dtype
    from tunewise.train.trainer import resolve_precision as train_precision

    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(hardware, "cpu_info", lambda *a, n=native: {"native_bf16": n})
        assert train_precision("auto") == cpu_dtype("auto") == want
    assert train_precision("fp32") == cpu_dtype("fp32") == "fp32"
    for resolve in (train_precision, cpu_dtype):
        with pytest.raises(TunewiseError, match="fp16 needs a CUDA GPU"):
            resolve("fp16")
