"""The loss: equal to transformers' own causal-LM loss, with the head run in chunks (and recomputed
in backward for big batches) giving the same value and gradients."""

from __future__ import annotations

import pytest
import torch

import tunewise.train.loss as loss_mod
from tunewise.train.loss import IGNORE, summed_loss, token_losses


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


def _batch(seed: int = 0, n: int = 40, masked: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 49000, (1, n), generator=g)
    labels = ids.clone()
    labels[0, :masked] = IGNORE
    shift = torch.cat([labels[:, 1:], torch.full((1, 1), IGNORE)], dim=1)
    return ids, labels, {"input_ids": ids, "shift_labels": shift}


def test_matches_the_transformers_loss(model):
    ids, labels, batch = _batch()
    reference = model(input_ids=ids, labels=labels).loss
    total, n = summed_loss(model, batch)
    assert n == 40 - 12
    torch.testing.assert_close(total / n, reference, rtol=1e-5, atol=1e-5)


def test_chunked_and_recomputed_head_give_the_same_gradients(model, monkeypatch):
    _, _, batch = _batch(seed=1)

    def grads(**kw):
        model.zero_grad()
        token_losses(model, batch, **kw).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    chunked = grads(chunk_tokens=5)
    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 1)  # force the recompute-in-backward path
    recomputed = grads(chunk_tokens=7)
    for name, g in plain.items():
        torch.testing.assert_close(chunked[name], g, rtol=1e-3, atol=2e-5)
        torch.testing.assert_close(recomputed[name], g, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_head_path_matches_autograd(tiny_model_dir, dtype):
    """LoRA-style training (frozen head): the fused path gives the losses and input gradients that
    plain autograd through full logits gives."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype)
    for p in m.parameters():
        p.requires_grad_(False)
    layer = m.model.layers[-1].mlp.down_proj
    layer.weight.requires_grad_(True)  # something below the head trains
    _, _, batch = _batch(seed=3)

    def run(force_plain: bool):
        layer.weight.grad = None
        if force_plain:
            m.lm_head.weight.requires_grad_(True)  # leaves the frozen path; head grad ignored
        losses = token_losses(m, batch, chunk_tokens=6)
        (losses * torch.linspace(0.5, 2.0, losses.numel())).sum().backward()  # non-uniform upstream grad
        m.lm_head.weight.requires_grad_(False)
        m.lm_head.weight.grad = None
        return losses.detach(), layer.weight.grad.clone()

    fused_loss, fused_grad = run(False)
    ref_loss, ref_grad = run(True)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_loss, ref_loss, **tol)
    torch.testing.assert_close(fused_grad.float(), ref_grad.float(), **tol)
    assert fused_grad.abs().max() > 0


def test_head_is_restored_and_a_batch_without_labels_is_zero(model):
    head = model.lm_head
    ids, _, batch = _batch(seed=2)
    batch["shift_labels"] = torch.full_like(ids, IGNORE)
    total, n = summed_loss(model, batch)
    assert n == 0 and float(total.detach()) == 0.0
    assert model.lm_head is head


@pytest.mark.parametrize("hidden_dtype,weight_dtype", [(torch.float32, torch.bfloat16), (torch.float64, torch.float64)])
def test_frozen_head_function_in_chunks(hidden_dtype, weight_dtype):
    """The frozen-head function against autograd through full logits: chunks that do not divide the
    rows, and hidden states in another dtype than the head (accelerate's fp32 outputs)."""
    g = torch.Generator().manual_seed(4)
    weight = (torch.randn(50, 8, generator=g) * 0.5).to(weight_dtype)
    hidden = torch.randn(13, 8, generator=g, dtype=hidden_dtype, requires_grad=True)
    targets = torch.randint(0, 50, (13,), generator=g)
    upstream = torch.linspace(0.5, 2.0, 13, dtype=torch.float32)
    losses = loss_mod._FrozenHeadCE.apply(hidden, weight, targets, 5)
    (grad,) = torch.autograd.grad((losses * upstream).sum(), hidden)
    assert losses.dtype == torch.float32 and grad.dtype == hidden_dtype
    ref_hidden = hidden.detach().to(weight_dtype).double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_hidden @ weight.double().t(), targets, reduction="none")
    (ref_grad,) = torch.autograd.grad((ref * upstream.double()).sum(), ref_hidden)
    # the log-softmax runs in fp32 (as the rest of training's loss does), whatever the head's dtype
    tol = dict(rtol=1e-5, atol=1e-6) if weight_dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(losses.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)
