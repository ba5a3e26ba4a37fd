"""Causal-LM loss without full-vocabulary logits for the whole batch.

The model runs with its output head bypassed and ``logits_to_keep`` set to the trained positions, so
it returns hidden states only where a label exists. The head then runs on those positions in chunks,
and only one chunk of fp32 logits exists at a time. When the head is frozen (LoRA, QLoRA) and plain
(no bias, no logit post-processing), each chunk's gradient with respect to the hidden states is
computed right away in the forward pass (:class:`_FrozenHeadCE`), so no logits are kept for backward
and nothing is recomputed; otherwise chunks are recomputed in backward when the batch is large. The loss is a *sum* over trained tokens; the trainer divides it by the number of
trained tokens in the whole accumulated batch, which makes gradient accumulation exact.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunewise.train.attention import SEGMENTS_KEY

IGNORE = -100
# Above this many bytes of fp32 logits, chunks are recomputed in backward instead of kept.
CHUNK_BYTES = 256 * 2**20
# fp32 logits per chunk on the frozen-head path (nothing is kept). Bigger chunks run the two head
# matmuls faster (bf16, 2 cores, vocab 49,152: 85 rows 324 and 251 GFLOP/s, 170 rows ~375 and ~325);
# kept under glibc's largest mmap threshold (32 MiB) so the buffers come from its heap, not from fresh
# pages every micro-batch.
FROZEN_CHUNK_BYTES = 32 * 2**20 - 2**16


class _Passthrough(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` module inside DDP / compile / PEFT wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        else:
            break
    return model


def _logit_transform(config):
    """Post-processing some architectures apply to logits after the head (kept exact here)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite

    def apply(logits: torch.Tensor) -> torch.Tensor:
        if scale not in (None, 1, 1.0):
            logits = logits * scale
        if divide not in (None, 1, 1.0):
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


@contextmanager
def _head_bypassed(lm: nn.Module):
    head = getattr(lm, "lm_head", None)
    if not isinstance(head, nn.Module):
        yield None
        return
    lm.lm_head = _Passthrough()
    try:
        yield head
    finally:
        lm.lm_head = head


def _chunk_ce(head: nn.Module, transform, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    weight = getattr(head, "weight", None)
    if weight is not None and weight.is_floating_point() and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)  # accelerate's mixed-precision wrapper returns fp32 outputs
    logits = transform(head(hidden)).float()
    return F.cross_entropy(logits, target, reduction="none")


class _FrozenHeadCE(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T`` for a frozen ``weight``, chunk by chunk.

    Forward computes each chunk's logits, its losses and d(loss)/d(hidden) = (softmax - onehot) @ W,
    then drops the logits; backward only scales the stored [n, d] gradient by the incoming one.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        n, vocab = hidden.shape[0], weight.shape[0]
        h = hidden.to(weight.dtype)
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        rows = min(chunk, n)
        # two buffers for every chunk: the logits in the weight's dtype (later the gradient of the
        # logits, the right operand of the second matmul) and the fp32 log-probabilities, worked on
        # in place (no temporaries of [rows, vocab])
        logits = torch.empty(rows, vocab, dtype=weight.dtype, device=hidden.device)
        shared = weight.dtype == torch.float32
        work = logits if shared else torch.empty(rows, vocab, dtype=torch.float32, device=hidden.device)
        for i in range(0, n, rows):
            m = min(rows, n - i)
            t, lg, lp = targets[i : i + m], logits[:m], work[:m]
            torch.mm(h[i : i + m], weight.t(), out=lg)
            if not shared:
                lp.copy_(lg)
            torch._log_softmax(lp, -1, False, out=lp)
            torch.neg(lp.gather(1, t[:, None]).squeeze(1), out=losses[i : i + m])
            if grad is None:
                continue
            probs = lp.exp_()
            probs[torch.arange(m, device=t.device), t] -= 1.0  # d(loss)/d(logits) = softmax - onehot
            if not shared:
                lg.copy_(probs)
            if grad.dtype == weight.dtype:
                torch.mm(lg, weight, out=grad[i : i + m])
            else:
                grad[i : i + m] = lg @ weight
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        return (grad.float() * grad_losses[:, None].float()).to(grad.dtype), None, None, None


def _frozen_plain_head(head: nn.Module, config) -> bool:
    weight = getattr(head, "weight", None)
    return (isinstance(head, nn.Linear) and getattr(head, "bias", None) is None and weight is not None
            and weight.is_floating_point() and not weight.requires_grad
            and not getattr(config, "final_logit_softcapping", None)
            and getattr(config, "logit_scale", None) in (None, 1, 1.0)
            and getattr(config, "logits_scaling", None) in (None, 1, 1.0))


@lru_cache(maxsize=None)
def bool_logits_to_keep(cls: type) -> bool:
    """Whether a ``*ForCausalLM`` class takes a boolean (batch, seq) ``logits_to_keep`` mask: its module
    slices with transformers' ``slice_logits_to_keep`` (newer 5.x, e.g. 5.24). Older releases (5.17)
    index ``hidden[:, logits_to_keep, :]``, which fails on a 2-D mask; those get 0 (every position)."""
    module = sys.modules.get(cls.__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def token_losses(model: nn.Module, batch: dict, chunk_tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of every trained token in ``batch`` (1-D, in order of position).

    ``batch`` holds ``input_ids`` and ``shift_labels`` (label each position predicts, -100 for
    none), and optionally ``position_ids`` (packed rows) and ``attention_mask``.
    """
    labels = batch["shift_labels"]
    keep = labels.ne(IGNORE)
    targets = labels[keep]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask", SEGMENTS_KEY)}
    lm = causal_lm(model)
    transform = _logit_transform(getattr(lm, "config", None))
    if not keep.any():
        # Keep the graph connected (every trainable parameter gets a zero gradient).
        out = model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits.sum()[None] * 0.0
    with _head_bypassed(lm) as head:
        out = model(**inputs, use_cache=False, logits_to_keep=keep if bool_logits_to_keep(type(lm)) else 0)
    hidden = out.logits
    if hidden.dim() == 3:  # models without boolean logits_to_keep support: every position came back
        hidden = hidden[keep] if hidden.shape[:2] == keep.shape else hidden.reshape(-1, hidden.shape[-1])
    if head is None:  # no separate head module: the model returned logits already
        return F.cross_entropy(hidden.float(), targets, reduction="none")
    n, vocab = hidden.shape[0], int(getattr(head, "out_features", 0) or head.weight.shape[0])
    if torch.is_grad_enabled() and hidden.requires_grad and _frozen_plain_head(head, getattr(lm, "config", None)):
        chunk = chunk_tokens or max(16, FROZEN_CHUNK_BYTES // (4 * vocab))
        return _FrozenHeadCE.apply(hidden, head.weight, targets, chunk)
    if chunk_tokens is None:
        chunk_tokens = max(64, CHUNK_BYTES // (4 * vocab))
    if n * vocab * 4 <= CHUNK_BYTES or not torch.is_grad_enabled():
        pieces = [_chunk_ce(head, transform, hidden[i : i + chunk_tokens], targets[i : i + chunk_tokens])
                  for i in range(0, n, chunk_tokens)]
    else:
        pieces = [
            checkpoint(_chunk_ce, head, transform, hidden[i : i + chunk_tokens], targets[i : i + chunk_tokens],
                       use_reentrant=False)
            for i in range(0, n, chunk_tokens)
        ]
    return torch.cat(pieces)


def summed_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
    """(sum of trained-token losses, number of trained tokens)."""
    losses = token_losses(model, batch)
    return losses.sum(), int(batch["shift_labels"].ne(IGNORE).sum())
