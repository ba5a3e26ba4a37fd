"""Memory-lean training pieces: the SwiGLU-MLP and RMSNorm autograd functions, the saved-activation
arena and token-bounded micro-batches all give the gradients plain autograd gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tunewise.train import fused
from tunewise.train.arena import SavedActivationArena
from tunewise.train.attention import SEGMENTS_KEY
from tunewise.train.loss import summed_loss
from tunewise.train.packing import PaddingFreeCollator, split_row
from tunewise.train.trainer import build_model, prepare_data
from tunewise.models import load_tokenizer

from train_helpers import make_cfg, small_data  # noqa: F401  (fixture)


def _batch(cfg, n: int = 4):
    tok = load_tokenizer(cfg.base_model)
    examples = prepare_data(cfg, tok, None).train.examples[:n]
    return PaddingFreeCollator()([examples])


def _grads(model, batch, arena: SavedActivationArena | None = None):
    model.zero_grad(set_to_none=True)
    if arena is None:
        total, n = summed_loss(model, batch)
    else:
        with arena.saving():
            total, n = summed_loss(model, batch)
    (total / n).backward()
    return float(total.detach()), {k: p.grad.detach().clone() for k, p in model.named_parameters()
                                   if p.grad is not None}


def _model(tiny_model_dir, small_data, tmp_path, lean: bool, **overrides):  # noqa: F811
    cfg = make_cfg(tiny_model_dir, small_data, tmp_path / "run", precision="fp32", lean_activations=lean,
                   **overrides)
    torch.manual_seed(0)
    model = build_model(cfg, "fp32", "peft")
    model.train()
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; make the adapters matter
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return cfg, model


def _fused_counts(model) -> tuple[int, int]:
    mlp = sum(1 for m in model.modules() if getattr(m, fused._FUSED, False) and hasattr(m, "gate_proj"))
    norms = sum(1 for m in model.modules() if getattr(m, fused._FUSED, False) and not hasattr(m, "gate_proj"))
    return mlp, norms


def _assert_same(a, b, tol=1e-5):
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    assert a[1].keys() == b[1].keys() and a[1]
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], ["gate_proj"]])
def test_lean_mlp_and_norm_give_autograds_gradients(tiny_model_dir, small_data, tmp_path, targets):  # noqa: F811
    cfg, plain = _model(tiny_model_dir, small_data, tmp_path, lean=False, lora_target_modules=targets)
    _, lean = _model(tiny_model_dir, small_data, tmp_path, lean=True, lora_target_modules=targets)
    assert _fused_counts(plain) == (0, 0)
    assert _fused_counts(lean) == (2, 5)  # 2 layers: one MLP each; two norms each + the final norm
    batch = _batch(cfg)
    _assert_same(_grads(lean, batch), _grads(plain, batch))


def test_full_fine_tuning_keeps_autograd_mlp_and_trains_norm_weights(tiny_model_dir, small_data, tmp_path):  # noqa: F811
    cfg = make_cfg(tiny_model_dir, small_data, tmp_path / "run", precision="fp32", method="full")
    torch.manual_seed(0)
    plain = build_model(cfg.model_copy(update={"lean_activations": False}), "fp32", "peft")
    torch.manual_seed(0)
    lean = build_model(cfg, "fp32", "peft")
    assert _fused_counts(lean) == (0, 5)  # trainable MLP weights: PEFT-free autograd path kept
    batch = _batch(cfg)
    a, b = _grads(lean, batch), _grads(plain, batch)
    _assert_same(a, b, tol=1e-4)
    assert any("norm" in k for k in a[1])


def test_modules_that_do_not_match_keep_their_forward(tiny_model_dir, small_data, tmp_path):  # noqa: F811
    # LoRA dropout: PEFT's own path (the lean MLP has no dropout); norms still lean
    _, model = _model(tiny_model_dir, small_data, tmp_path, lean=True, lora_dropout=0.1)
    assert _fused_counts(model) == (0, 5)
    # another activation: the check on a random input rejects the swap
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers import LlamaConfig

    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, hidden_act="gelu"))
    mlp.requires_grad_(False)
    assert fused.install(mlp) == {"mlp": 0, "rmsnorm": 0}
    mlp.act_fn = torch.nn.SiLU()
    assert fused.install(mlp) == {"mlp": 1, "rmsnorm": 0}


def test_arena_gives_the_same_gradients_and_reuses_its_buffer(tiny_model_dir, small_data, tmp_path):  # noqa: F811
    cfg, model = _model(tiny_model_dir, small_data, tmp_path, lean=True)
    arena = SavedActivationArena(model, min_bytes=0)  # the tiny model's tensors are all small
    batch = _batch(cfg)
    ref = _grads(model, batch)
    _assert_same(_grads(model, batch, arena), ref)
    used, cap = arena.peak_bytes, arena.capacity
    assert used > 0 and len(arena._chunks) == 1
    _assert_same(_grads(model, batch, arena), ref)  # second pass: same buffer, same results
    assert arena.capacity == cap and arena.peak_bytes == used


def test_arena_copies_a_tensor_once_and_never_parameters():
    layer = torch.nn.Linear(4, 4)
    arena = SavedActivationArena(layer, min_bytes=0)
    arena.reset()
    x = torch.randn(3, 4)
    first = arena._pack(x)
    assert first is not x and torch.equal(first, x)
    assert arena._pack(x) is first  # saved again by another op: one copy
    assert arena._pack(x.t()) is not first  # another view: its own copy, same values
    x.add_(1)  # changed in place after it was saved: a fresh copy
    assert torch.equal(arena._pack(x), x) and arena._pack(x) is not first
    assert arena._pack(layer.weight) is layer.weight
    assert arena._pack(layer.weight.t()) is not None and arena._pack(layer.weight.t())._base is layer.weight


def test_split_row_cuts_at_example_boundaries():
    ids = torch.arange(100)[None]
    batch = {"input_ids": ids, "position_ids": ids.clone(), "shift_labels": ids.clone(),
             SEGMENTS_KEY: ((0, 30), (30, 50), (50, 90), (90, 100))}
    pieces = split_row(batch, 50)
    assert [p[SEGMENTS_KEY] for p in pieces] == [((0, 30), (30, 50)), ((0, 40), (40, 50))]
    assert torch.equal(torch.cat([p["input_ids"] for p in pieces], dim=1), ids)
    long = split_row(batch, 35)  # an example over the budget is a piece of its own
    assert [p[SEGMENTS_KEY] for p in long] == [((0, 30),), ((0, 20),), ((0, 40),), ((0, 10),)]
    assert split_row(batch, 100) == [batch]


def test_micro_batch_tokens_trains_like_the_whole_micro_batch(tiny_model_dir, small_data, tmp_path):  # noqa: F811
    from tunewise.train import train

    runs = {}
    for name, tokens in (("whole", None), ("pieces", 64)):
        cfg = make_cfg(tiny_model_dir, small_data, tmp_path / name, precision="fp32", micro_batch_size=4,
                       max_steps=3, save_steps=None, micro_batch_tokens=tokens)
        train(cfg, progress=False)
        runs[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                      if "loss" in json.loads(line)]
    assert len(runs["whole"]) == 3
    assert runs["pieces"] == pytest.approx(runs["whole"], rel=1e-4)


def test_importing_tunewise_caps_cpu_kernel_caches_unless_set():
    code = "import os, tunewise; print(os.environ['LRU_CACHE_CAPACITY'], os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["64", "256"]
    env["LRU_CACHE_CAPACITY"] = "7"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "256"]
