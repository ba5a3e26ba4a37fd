"""Training across the transformers 5.x releases pyproject allows (the GPU machines run 5.17, this
checkout 5.24), and the peak CUDA memory a run records."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch

import tunewise.train.loss as loss_mod
import tunewise.train.trainer as trainer_mod
from tunewise.train.loss import IGNORE, token_losses


def test_checkpointing_arguments_use_the_name_this_transformers_has(tmp_path):
    from transformers import TrainingArguments

    kwargs = trainer_mod.checkpointing_arguments(True)
    (key,) = [k for k in kwargs if not k.endswith("_kwargs")]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)
    assert getattr(args, key) is True and kwargs[f"{key}_kwargs"] == {"use_reentrant": False}


def test_checkpointing_arguments_fall_back_to_gradient_checkpointing(monkeypatch):
    import transformers

    @dataclass
    class OldTrainingArguments:  # transformers 5.17's names
        output_dir: str = ""
        gradient_checkpointing: bool = False
        gradient_checkpointing_kwargs: dict | None = None

    monkeypatch.setattr(transformers, "TrainingArguments", OldTrainingArguments)
    assert trainer_mod.checkpointing_arguments(False) == {
        "gradient_checkpointing": False, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def test_boolean_logits_to_keep_is_detected_per_model_module(monkeypatch):
    from transformers import LlamaForCausalLM

    llama = sys.modules[LlamaForCausalLM.__module__]
    assert loss_mod.bool_logits_to_keep(LlamaForCausalLM) == hasattr(llama, "slice_logits_to_keep")
    old = types.ModuleType("old_modeling")  # a modeling module without slice_logits_to_keep (5.17)
    monkeypatch.setitem(sys.modules, "old_modeling", old)
    cls = type("OldForCausalLM", (), {"__module__": "old_modeling"})
    assert loss_mod.bool_logits_to_keep(cls) is False


def test_loss_without_boolean_logits_to_keep_is_the_same(tiny_model_dir, monkeypatch):
    """Where the model cannot take a mask (older transformers), every position comes back and the
    trained ones are picked out: the same losses and gradients."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 49000, (2, 24), generator=g)
    shift = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE)], dim=1)
    shift[0, :7] = IGNORE
    shift[1, 15:] = IGNORE
    batch = {"input_ids": ids, "shift_labels": shift}

    def run():
        model.zero_grad()
        losses = token_losses(model, batch)
        losses.sum().backward()
        return losses.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    masked, masked_grads = run()
    seen = []
    monkeypatch.setattr(loss_mod, "bool_logits_to_keep", lambda cls: seen.append(cls) or False)
    full, full_grads = run()
    assert seen and masked.shape == full.shape == (int(shift.ne(IGNORE).sum()),)
    torch.testing.assert_close(full, masked)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(full_grads[name], grad)


def test_cuda_peak_memory_is_none_without_cuda_and_read_from_torch_with_it(monkeypatch):
    if not torch.cuda.is_available():
        assert trainer_mod.cuda_peak_memory() == {"peak_gpu_allocated_bytes": None, "peak_gpu_reserved_bytes": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: 4 * 2**30)
    assert trainer_mod.cuda_peak_memory() == {"peak_gpu_allocated_bytes": 3 * 2**30,
                                              "peak_gpu_reserved_bytes": 4 * 2**30}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA never used by this process
    assert trainer_mod.cuda_peak_memory()["peak_gpu_allocated_bytes"] is None


@pytest.mark.parametrize("value", [None, 5 * 10**9])
def test_the_summary_shows_peak_gpu_memory_when_there_is_one(tmp_path, value):
    from rich.console import Console

    from tunewise.commands.train import print_summary
    from tunewise.train import TrainResult

    result = TrainResult(output_dir=tmp_path, adapter_dir=None, model_dir=None, steps=1, final_loss=1.0,
                         eval_loss=None, tokens_per_second=10.0, trained_tokens=10, seconds=1.0,
                         peak_gpu_allocated_bytes=value, peak_gpu_reserved_bytes=value and value + 10**9)
    console = Console(record=True, width=200)
    print_summary(result, console)
    text = console.export_text()
    assert ("5.00 GB allocated, 6.00 GB reserved" in text) == (value is not None)
    assert result.to_json()["peak_gpu_allocated_bytes"] == value
