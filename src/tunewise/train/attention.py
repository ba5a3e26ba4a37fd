"""Attention over packed rows without a dense mask: one causal attention call per example.

transformers turns restarting ``position_ids`` into a dense block-diagonal ``[T, T]`` mask for the
``sdpa`` implementation, so a flattened micro-batch pays attention (and mask building) over the whole
row, ∝ T², and SDPA cannot use its causal fast path. Flash-attention kernels take the example
boundaries instead, but they need CUDA. This implementation is registered with transformers'
``AttentionInterface`` and does the same thing with plain PyTorch: the collator passes the example
boundaries (``tunewise_segments``, a tuple of ``(start, end)`` pairs), and each example gets its own
causal attention. Cost: Σ len² instead of T², and no mask in memory. Measured on the embedded model
(LoRA, bf16, 2 CPU cores, a 1,536-token row of 192-token examples): 208 → 340 trained tokens/s.

Which kernel an example gets: on CUDA, and for long examples, ``scaled_dot_product_attention(
is_causal=True)`` (its fused flash kernel). On CPU, examples up to :data:`SHORT_MAX` tokens go
through :class:`_ShortCausalAttention` instead: the whole ``[L, L]`` score matrix of a short example
is small, so three matmuls and one fused softmax beat PyTorch's CPU flash kernel, whose backward is
3–5× its forward at these lengths (measured, bf16, 2 cores, 9 query / 3 KV heads of 64: a row of
8 × 189-token examples 43.5 → 19.8 ms forward + backward per layer; 640 tokens 87 → 74 ms; 1,024
tokens 45 → 88 ms, hence the cut-off). It keeps only q, k and v for backward — what the flash
kernel keeps, less its output and log-sum-exp — and recomputes the probabilities there.

Only the training model uses it (no KV cache, no padding): without boundaries it treats the input as
one causal sequence, and it refuses anything else rather than attend wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tunewise_segments"
SEGMENTS_KEY = "tunewise_segments"
# CPU examples up to this many tokens use _ShortCausalAttention (see the module docstring).
SHORT_MAX = 640

_upper: dict[tuple[int, torch.device], torch.Tensor] = {}


def _causal_block(n: int, device: torch.device) -> torch.Tensor:
    """[n, n] bool, True above the diagonal (the future), cached per length."""
    key = (n, device)
    mask = _upper.get(key)
    if mask is None:
        if len(_upper) > 4 * SHORT_MAX:
            _upper.clear()
        mask = _upper[key] = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)
    return mask


def _probs(q: torch.Tensor, k: torch.Tensor, groups: int) -> torch.Tensor:
    """Causal softmax(q kᵀ) for q [G, groups·L, D] (already scaled) and k [G, L, D]."""
    n = k.shape[1]
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores.view(k.shape[0], groups, n, n).masked_fill_(_causal_block(n, q.device), float("-inf"))
    return torch.softmax(scores, dim=-1)


class _ShortCausalAttention(torch.autograd.Function):
    """Causal attention of one example: q [B, H, L, D], k/v [B, Hkv, L, D] → [B, H, L, D].

    The query heads that share a KV head are stacked along the sequence axis ([B·Hkv, groups·L, D]),
    so grouped-query attention needs no copies of k and v and their gradients no reduction.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale):
        b, h, n, d = q.shape
        hkv = k.shape[1]
        groups = h // hkv
        with torch.autocast(q.device.type, enabled=False):
            qs = (q * scale).reshape(b * hkv, groups * n, d)
            p = _probs(qs, k.reshape(b * hkv, n, d), groups)
            out = torch.matmul(p, v.reshape(b * hkv, n, d))
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return out.view(b, h, n, d)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        scale = ctx.scale
        b, h, n, d = q.shape
        hkv = k.shape[1]
        groups = h // hkv
        with torch.autocast(q.device.type, enabled=False):
            qs = (q * scale).reshape(b * hkv, groups * n, d)
            ks = k.reshape(b * hkv, n, d)
            vs = v.reshape(b * hkv, n, d)
            p = _probs(qs, ks, groups)
            do = dout.reshape(b * hkv, groups * n, d)
            dv = torch.matmul(p.transpose(-1, -2), do)
            ds = torch._softmax_backward_data(torch.matmul(do, vs.transpose(-1, -2)), p, -1, p.dtype)
            del p
            dq = torch.matmul(ds, ks).mul_(scale)
            dk = torch.matmul(ds.transpose(-1, -2), qs)
        return dq.view(b, h, n, d), dk.view(b, hkv, n, d), dv.view(b, hkv, n, d), None


def _attend(query, key, value, scale: float, dropout: float, groups: int) -> torch.Tensor:
    n = query.shape[2]
    if query.device.type == "cpu" and n <= SHORT_MAX and dropout == 0.0 and query.dtype == key.dtype == value.dtype:
        return _ShortCausalAttention.apply(query, key, value, scale)
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, dropout_p=dropout, scale=scale,
                                          enable_gqa=groups > 1)


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: ``query`` [B, H, T, D], ``key``/``value`` [B, Hkv, T, D]."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        raise RuntimeError(
            f"{NAME} attention is for padding-free training rows only (got a mask or a KV cache); "
            "load the model with attn_implementation='sdpa' for generation"
        )
    segments = kwargs.get(SEGMENTS_KEY) or ((0, query.shape[2]),)
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or (window and max(e - s for s, e in segments) > window):
        raise RuntimeError(f"{NAME} attention does not implement logit soft-capping or sliding windows "
                           "shorter than an example")
    if query.shape[0] != 1 and len(segments) > 1:
        raise RuntimeError(f"{NAME} attention expects one flattened row per micro-batch")
    groups = query.shape[1] // key.shape[1]
    drop = dropout if module.training else 0.0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    outs = [_attend(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scale, drop, groups) for s, e in segments]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def unsupported(config, sequence_len: int) -> str | None:
    """What of ``config``'s attention this implementation lacks for rows of ``sequence_len`` (or None)."""
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    window = getattr(config, "sliding_window", None)
    if window and window < sequence_len and getattr(config, "use_sliding_window", True) is not False:
        return f"a {window}-token sliding window (sequence_len {sequence_len})"
    return None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention)
    return NAME
