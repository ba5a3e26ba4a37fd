"""Attention over packed rows without a dense mask: each example gets its own causal attention.

transformers turns restarting ``position_ids`` into a dense block-diagonal ``[T, T]`` mask for the
``sdpa`` implementation, so a flattened micro-batch pays attention (and mask building) over the whole
row, ∝ T², and SDPA cannot use its causal fast path. Flash-attention kernels take the example
boundaries instead, but they need CUDA. This implementation is registered with transformers'
``AttentionInterface`` and does the same thing with plain PyTorch: the collator passes the example
boundaries (``tunewise_segments``, a tuple of ``(start, end)`` pairs), and each example gets its own
causal attention. Cost: Σ len² instead of T², and no mask in memory. Measured on the embedded model
(LoRA, bf16, 2 CPU cores, a 1,536-token row of 192-token examples): 208 → 340 trained tokens/s.

Where it is used (:func:`choose`): training on CPU. On CUDA training keeps transformers' own
``sdpa``, measured 5-7x faster there than a call per example. Which kernel a row gets: with attention
dropout (or mixed dtypes), ``scaled_dot_product_attention(is_causal=True)`` per example. Otherwise,
:class:`_CausalAttention`, one autograd node for the whole row: per example and per block of
:data:`QUERY_CHUNK` query positions, one matmul for the scores with the causal mask added
as a bias inside it (``baddbmm``), one fused softmax, one matmul with v; the backward recomputes the
probabilities and uses PyTorch's fused softmax backward. Blocks skip the keys after their last query,
so about half of the score matrix is never computed. PyTorch's CPU flash kernel is much slower at
these sizes, its backward 3–5× its forward. Measured forward + backward per layer (bf16, 2 cores,
9 query / 3 KV heads of 64; bench/attention_cpu.py --reps 20): 128 tokens 2.53 → 1.25 ms, 512 tokens
17.5 → 8.4, 1,024 tokens 42 → 25, 4,096 tokens 506 → 374. It keeps only q, k and v for backward (the flash kernel also keeps its output
and log-sum-exp). Handling the whole row in one node instead of one call per example saves autograd's
per-example slicing, concatenation and gradient scatter: a row of 8 examples (1,694 tokens), forward +
backward, 31 → 26 ms per layer; 12 examples of 60 tokens 11.8 → 7.6 ms.

Only the training model uses it (no KV cache, no padding): without boundaries it treats the input as
one causal sequence, and it refuses anything else rather than attend wrongly.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "tunewise_segments"
SEGMENTS_KEY = "tunewise_segments"
# Query positions per block of the CPU kernel: 128 was fastest or tied from 300 to 4,096 tokens
# (forward + backward, bf16, 2 cores); 64 is slower, 192-256 alike within noise.
QUERY_CHUNK = 128


@functools.lru_cache(maxsize=16)
def _causal_bias(rows: int, keys: int, offset: int, groups: int, dtype: torch.dtype, device: torch.device):
    """[groups·rows, keys]: 0 where query ``offset + r`` may see key ``j`` (j ≤ offset + r), else -inf."""
    r = torch.arange(rows, device=device)[:, None] + offset
    j = torch.arange(keys, device=device)[None, :]
    bias = torch.zeros(rows, keys, dtype=dtype, device=device).masked_fill_(j > r, float("-inf"))
    return bias.repeat(groups, 1)


def _blocks(n: int) -> list[tuple[int, int]]:
    """Query blocks of at most QUERY_CHUNK positions, of near-equal size."""
    count = -(-n // QUERY_CHUNK)
    size = -(-n // count)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _probs(q: torch.Tensor, k: torch.Tensor, a: int, c: int, groups: int) -> torch.Tensor:
    """Causal softmax(q kᵀ) of query block [a, c): q [G, groups·(c-a), D] (scaled), k [G, ≥c, D]."""
    bias = _causal_bias(c - a, c, a, groups, q.dtype, q.device)
    return torch.softmax(torch.baddbmm(bias, q, k[:, :c].transpose(-1, -2)), dim=-1)


class _CausalAttention(torch.autograd.Function):
    """Causal attention of every example of a row: q [B, H, T, D], k/v [B, Hkv, T, D] and the examples'
    ``(start, end)`` spans → [B, T, H, D], the layout the output projection reads.

    One autograd node for the whole row: each example's blocks read and write their span of the
    row's tensors in place, so no per-example slices, concatenation or gradient scatter (autograd's
    backward of slicing a row into examples zero-fills and adds a whole-row gradient per example).
    The query heads that share a KV head are stacked along the query axis ([Hkv, groups·rows, D]),
    so grouped-query attention needs no copies of k and v and their gradients no reduction.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, segments):
        b, h, t, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        with torch.autocast(q.device.type, enabled=False):
            qs = torch.empty(b, h, t, d, dtype=q.dtype, device=q.device)  # contiguous whatever q's strides
            qs = torch.mul(q, scale, out=qs).view(b, hkv, g, t, d)
            out = torch.empty(b, t, h, d, dtype=q.dtype, device=q.device)
            for i in range(b):
                o = out[i].view(t, hkv, g, d).permute(1, 2, 0, 3)  # [Hkv, groups, T, D] view
                for s, e in segments:
                    ks, vs = k[i, :, s:e], v[i, :, s:e]
                    for a, c in _blocks(e - s):
                        p = _probs(qs[i, :, :, s + a : s + c].reshape(hkv, g * (c - a), d), ks, a, c, g)
                        o[:, :, s + a : s + c] = torch.bmm(p, vs[:, :c]).view(hkv, g, c - a, d)
        ctx.save_for_backward(qs, k, v)  # the scaled q (no second scaling pass in backward)
        ctx.scale, ctx.segments = scale, segments
        return out

    @staticmethod
    def backward(ctx, dout):
        qs, k, v = ctx.saved_tensors
        scale, segments = ctx.scale, ctx.segments
        b, hkv, g, t, d = qs.shape
        with torch.autocast(qs.device.type, enabled=False):
            dq = torch.empty_like(qs)
            # k and v gradients add up over query blocks: in fp32 for 16-bit inputs, as flash kernels do
            acc = torch.float32 if qs.dtype in (torch.bfloat16, torch.float16) else qs.dtype
            dk = torch.zeros(k.shape, dtype=acc, device=k.device)
            dv = torch.zeros(v.shape, dtype=acc, device=v.device)
            for i in range(b):
                do = dout[i].view(t, hkv, g, d).permute(1, 2, 0, 3)
                for s, e in segments:
                    ks, vs, dks, dvs = k[i, :, s:e], v[i, :, s:e], dk[i, :, s:e], dv[i, :, s:e]
                    for a, c in _blocks(e - s):
                        rows = g * (c - a)
                        qc = qs[i, :, :, s + a : s + c].reshape(hkv, rows, d)
                        doc = do[:, :, s + a : s + c].reshape(hkv, rows, d)
                        p = _probs(qc, ks, a, c, g)
                        dvs[:, :c] += torch.bmm(p.transpose(-1, -2), doc)
                        ds = torch._softmax_backward_data(torch.bmm(doc, vs[:, :c].transpose(-1, -2)), p, -1, p.dtype)
                        del p
                        dq[i, :, :, s + a : s + c] = torch.bmm(ds, ks[:, :c]).view(hkv, g, c - a, d)
                        dks[:, :c] += torch.bmm(ds.transpose(-1, -2), qc)
            dq.mul_(scale)
        return dq.view(b, hkv * g, t, d), dk.to(k.dtype), dv.to(v.dtype), None, None


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
    if segments[0][0] != 0 or segments[-1][1] != query.shape[2] or any(
            a[1] != b[0] or a[0] >= a[1] for a, b in zip(segments, segments[1:])):
        raise RuntimeError(f"{NAME}: example spans {segments} do not tile the row of {query.shape[2]} tokens")
    groups = query.shape[1] // key.shape[1]
    drop = dropout if module.training else 0.0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.device.type == "cpu" and drop == 0.0 and query.dtype == key.dtype == value.dtype:
        return _CausalAttention.apply(query, key, value, scale, tuple(segments)), None
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           dropout_p=drop, scale=scale, enable_gqa=groups > 1) for s, e in segments]
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


def choose(config, sequence_len: int, device) -> tuple[bool, str | None]:
    """Whether training on ``device`` uses this implementation, and a warning when it cannot.

    On CUDA it is not used: transformers' own ``sdpa`` (packed examples masked from the restarting
    ``position_ids``) trained 5.0-6.7x faster than one ``scaled_dot_product_attention`` call per
    example (measured on an H200, LoRA, 2,048-token rows of ~200-token examples: SmolLM2-135M's
    shape 2,795 -> 18,638 tokens/s, a 1.07B Llama shape 3,522 -> 17,732; docs/train.md), whose
    per-call cost there dwarfs the T^2 mask. On CPU it is (see the module docstring)."""
    if str(device).startswith("cuda"):
        return False, None
    why_not = unsupported(config, sequence_len)
    return why_not is None, why_not


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention)
    return NAME
