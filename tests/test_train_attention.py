"""tunewise's per-example attention: the CPU kernel against PyTorch's SDPA (values and gradients, one
and several query blocks, GQA), a packed row of examples, and the models it must not be used for."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from tunewise.train import attention


def _qkv(b, h, hkv, t, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()  # as transformers does
    k = torch.randn(b, t, hkv, d, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()
    v = torch.randn(b, t, hkv, d, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()
    return q, k, v


def _reference(q, k, v, segments, scale):
    outs = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[1]) for s, e in segments]
    return torch.cat(outs, 2).transpose(1, 2)


@pytest.mark.parametrize("chunk", [128, 5])
@pytest.mark.parametrize("b,h,hkv,n", [(1, 6, 2, 37), (2, 4, 4, 9), (1, 3, 1, 1)])
def test_kernel_matches_sdpa(b, h, hkv, n, chunk, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    q, k, v = _qkv(b, h, hkv, n, 16)
    out = attention._CausalAttention.apply(q, k, v, 0.3, ((0, n),))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=h != hkv).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    dout = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)


def test_kernel_in_bf16_is_as_close_as_sdpa():
    """In bf16 the kernel's error against an fp64 reference is of the same size as SDPA's own."""
    q, k, v = _qkv(1, 9, 3, 300, 64)  # three query blocks
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    dout = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    low = [x.detach().bfloat16().requires_grad_() for x in (q, k, v)]

    def errors(out):
        grads = torch.autograd.grad(out, low, dout.bfloat16())
        return [float((out.detach().double() - ref.detach()).abs().max())] + [
            float((gr.double() - w).abs().max() / w.abs().max()) for gr, w in zip(grads, want)]

    sdpa = errors(F.scaled_dot_product_attention(*low, is_causal=True, enable_gqa=True).transpose(1, 2))
    mine_out = attention._CausalAttention.apply(*low, 64 ** -0.5, ((0, 300),))
    assert mine_out.dtype == torch.bfloat16
    mine = errors(mine_out)
    assert all(m < 3 * e + 1e-3 for m, e in zip(mine, sdpa)), (mine, sdpa)


def test_packed_row_matches_each_example_alone(monkeypatch):
    """A row of examples (one or several query blocks each) = each example's own causal attention."""
    monkeypatch.setattr(attention, "QUERY_CHUNK", 8)
    q, k, v = _qkv(1, 4, 2, 75, 8)
    segments = ((0, 12), (12, 45), (45, 50), (50, 75))
    module = types.SimpleNamespace(training=True)
    out, _ = attention.segment_attention(module, q, k, v, None, scaling=0.25, **{attention.SEGMENTS_KEY: segments})
    ref = _reference(q, k, v, segments, 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    dout = torch.randn_like(ref)
    for a, w in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(ref, (q, k, v), dout)):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)


def test_kernel_under_autocast_keeps_input_dtype():
    q, k, v = _qkv(1, 2, 2, 10, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention._CausalAttention.apply(q, k, v, 0.5, ((0, 10),))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5).transpose(1, 2))


def test_spans_must_tile_the_row():
    q, k, v = _qkv(1, 2, 2, 10, 8)
    module = types.SimpleNamespace(training=True)
    for bad in (((0, 4), (5, 10)), ((0, 4), (4, 9)), ((1, 10),), ((0, 0), (0, 10))):
        with pytest.raises(RuntimeError, match="do not tile"):
            attention.segment_attention(module, q, k, v, None, **{attention.SEGMENTS_KEY: bad})


def test_unsupported_models_and_windows():
    cfg = types.SimpleNamespace
    assert attention.unsupported(cfg(), 2048) is None
    assert attention.unsupported(cfg(sliding_window=4096), 2048) is None
    assert attention.unsupported(cfg(sliding_window=512, use_sliding_window=False), 2048) is None
    assert "sliding window" in attention.unsupported(cfg(sliding_window=512), 2048)
    assert "soft-capping" in attention.unsupported(cfg(attn_logit_softcapping=50.0), 2048)
    q, k, v = _qkv(1, 2, 2, 10, 8)
    module = types.SimpleNamespace(training=False)
    with pytest.raises(RuntimeError, match="sliding"):
        attention.segment_attention(module, q, k, v, None, sliding_window=4,
                                    **{attention.SEGMENTS_KEY: ((0, 3), (3, 10))})
    out, _ = attention.segment_attention(module, q, k, v, None, sliding_window=8,
                                         **{attention.SEGMENTS_KEY: ((0, 3), (3, 10))})
    assert out.shape == (1, 10, 2, 8)


def test_choose_keeps_transformers_sdpa_on_cuda():
    """Training on CUDA keeps transformers' sdpa (measured 5-7x faster there than a call per
    example); on CPU tunewise's own attention, unless the model needs what it lacks."""
    cfg = types.SimpleNamespace
    assert attention.choose(cfg(), 2048, "cuda") == (False, None)
    assert attention.choose(cfg(), 2048, "cuda:1") == (False, None)
    assert attention.choose(cfg(sliding_window=512), 2048, "cuda") == (False, None)  # no warning either
    assert attention.choose(cfg(), 2048, "cpu") == (True, None)
    use, why = attention.choose(cfg(sliding_window=512), 2048, "cpu")
    assert not use and "sliding window" in why
