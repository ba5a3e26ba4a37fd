"""End-to-end training on the tiny random Llama: LoRA, QLoRA and full fine-tuning, the run
directory, gradient accumulation, NaN/OOM handling, output_dir protection and bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from tunewise.errors import TunewiseError

from train_helpers import cli as _cli, make_cfg, small_data  # noqa: F401  (fixture)


def test_lora_run_writes_the_run_directory_and_loads_with_plain_peft(tiny_model_dir, small_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.train import TrainResult, train

    out = tmp_path / "run"
    cfg = make_cfg(tiny_model_dir, small_data, out, val_set_size=0.2, eval_steps=2)
    result = train(cfg, progress=False)

    assert isinstance(result, TrainResult)
    assert result.steps == 3 and result.adapter_dir == out / "adapter" and result.model_dir is None
    assert result.trained_tokens > 0 and result.tokens_per_second > 0 and result.eval_loss is not None
    for name in ("config.yaml", "versions.json", "data_fingerprint.json", "metrics.jsonl", "loss.png",
                 "summary.json", "adapter/adapter_config.json", "adapter/tunewise_base.json",
                 "adapter/tokenizer_config.json"):
        assert (out / name).exists(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "adapter/tunewise_base.json").read_text())["base_model"] == str(tiny_model_dir)
    fp = json.loads((out / "data_fingerprint.json").read_text())
    assert fp["files"][0]["sha256"] and fp["train_examples"] + fp["eval_examples"] == 24
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(r["tokens_per_second"] > 0 and "lr" in r for r in rows if "loss" in r)
    assert any("eval_loss" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["adapter_dir"] == str(out / "adapter")
    if not torch.cuda.is_available():  # peak GPU memory is recorded where there is a GPU
        assert summary["peak_gpu_allocated_bytes"] is None and summary["peak_gpu_reserved_bytes"] is None
    assert (out / "checkpoints" / "checkpoint-2" / "tunewise_complete.json").is_file()

    # Plain PEFT loads it; the adapter changed the model's output.
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out / "adapter"))
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    tok = AutoTokenizer.from_pretrained(str(out / "adapter"))
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(tiny_model_dir)).chat_template

    # tunewise's own loader understands the run directory.
    from tunewise.models import load_model

    assert load_model(out) is not None


def test_qlora_trains_a_4bit_base_on_cpu(tiny_model_dir, small_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunewise.train import train

    out = tmp_path / "qlora"
    result = train(make_cfg(tiny_model_dir, small_data, out, method="qlora", max_steps=2), progress=False)
    assert result.steps == 2 and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(out / "adapter"))


def test_qlora_keeps_the_other_weights_in_the_compute_dtype(tiny_model_dir, small_data, tmp_path):
    """PEFT upcasts a 4-bit model's embeddings, output layer and norms to fp32; in bf16 training they
    go back to bf16 (as in LoRA), or the residual stream and every saved norm output are fp32 too
    (QLoRA used 2.1x LoRA's GPU memory on an H200 that way). Only the adapters stay fp32."""
    pytest.importorskip("bitsandbytes")
    from tunewise.train.trainer import build_model

    cfg = make_cfg(tiny_model_dir, small_data, tmp_path / "q", method="qlora")
    model = build_model(cfg, "bf16", "peft")
    floats = {n: p.dtype for n, p in model.named_parameters() if p.is_floating_point()}
    assert {d for n, d in floats.items() if "lora_" not in n} == {torch.bfloat16}
    assert any("embed_tokens" in n for n in floats) and any("norm" in n for n in floats)
    assert {d for n, d in floats.items() if "lora_" in n} == {torch.float32}
    fp32 = build_model(cfg, "fp32", "peft")  # an fp32 run keeps everything in fp32
    assert {p.dtype for p in fp32.parameters() if p.is_floating_point()} == {torch.float32}


def test_full_fine_tune_saves_a_loadable_model(tiny_model_dir, small_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunewise.train import train

    out = tmp_path / "full"
    result = train(make_cfg(tiny_model_dir, small_data, out, method="full", learning_rate=1e-3), progress=False)
    assert result.model_dir == out / "model" and result.adapter_dir is None
    tuned = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert not torch.allclose(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_gradient_accumulation_equals_the_large_batch(tiny_model_dir, small_data, tmp_path):
    """One SGD step with 4 examples: 1x4, 2x2 and 4x1 (micro-batch x accumulation) agree exactly,
    although the examples have different numbers of trained tokens."""
    from safetensors.torch import load_file

    from tunewise.train import train

    results = {}
    for mbs, gas in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"ga-{mbs}x{gas}"
        cfg = make_cfg(tiny_model_dir, small_data, out, micro_batch_size=mbs, gradient_accumulation_steps=gas,
                       max_steps=1, packing=False, optimizer="sgd", learning_rate=0.5, max_grad_norm=1e9,
                       save_steps=None, precision="fp32")  # exactness needs fp32
        res = train(cfg, progress=False)
        results[(mbs, gas)] = (res.final_loss, load_file(str(out / "adapter" / "adapter_model.safetensors")))
    ref_loss, ref_w = results[(4, 1)]
    assert any(v.abs().max() > 0 for k, v in ref_w.items() if "lora_B" in k)  # the step moved lora_B
    for key, (loss, weights) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-5), key
        for name, tensor in ref_w.items():
            torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, small_data, tmp_path, monkeypatch):
    import tunewise.train.trainer as trainer_mod
    from tunewise.train import train

    real = trainer_mod.summed_loss
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        total, n = real(model, batch)
        return (total * float("inf"), n) if calls["n"] == 3 else (total, n)

    monkeypatch.setattr(trainer_mod, "summed_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TunewiseError) as err:
        train(make_cfg(tiny_model_dir, small_data, out, max_steps=5, save_steps=1), progress=False)
    assert "inf" in err.value.message and "step 3" in err.value.message
    assert "checkpoint-2" in err.value.message and "learning_rate" in err.value.hint
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "adapter").exists() and not (out / "summary.json").exists()


def test_out_of_memory_names_the_settings_to_lower(tiny_model_dir, small_data, tmp_path, monkeypatch):
    import tunewise.train.trainer as trainer_mod
    from tunewise.train import train

    def oom(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_mod, "summed_loss", oom)
    with pytest.raises(TunewiseError) as err:
        train(make_cfg(tiny_model_dir, small_data, tmp_path / "oom", micro_batch_size=8), progress=False)
    assert "out of memory" in err.value.message
    for setting in ("micro_batch_size (now 8", "sequence_len (now 256)", "gradient_checkpointing", "qlora"):
        assert setting in err.value.hint


def test_existing_output_dir_is_never_overwritten_silently(tiny_model_dir, small_data, tmp_path):
    from tunewise.train import train

    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    cfg = make_cfg(tiny_model_dir, small_data, out, max_steps=1)
    with pytest.raises(TunewiseError, match="already exists and is not empty") as err:
        train(cfg, progress=False)
    assert "--resume" in err.value.hint and "--overwrite" in err.value.hint
    assert (out / "precious.txt").read_text() == "keep me"

    res = train(cfg, progress=False, overwrite=True)
    assert res.steps == 1 and not (out / "precious.txt").exists()

    # --overwrite never deletes a directory holding the training data.
    data_dir = tmp_path / "with-data"
    data_dir.mkdir()
    (data_dir / "d.json").write_text(small_data.read_text())
    cfg2 = make_cfg(tiny_model_dir, data_dir / "d.json", data_dir, max_steps=1)
    with pytest.raises(TunewiseError, match="refusing to --overwrite"):
        train(cfg2, progress=False, overwrite=True)
    assert (data_dir / "d.json").is_file()


def test_bad_configs_give_one_clear_error(tiny_model_dir, small_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base_model: {tiny_model_dir}\nlora_rank: 8\nmethod: dora\ndatasets:\n  - path: {small_data}\n")
    code, text = _cli(["train", str(bad)])
    assert code == 1 and "Traceback" not in text
    assert "lora_rank" in text and "lora_r" in text and "method" in text

    missing = tmp_path / "missing.yaml"
    missing.write_text(f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {tmp_path}/nope.json\n"
                       f"output_dir: {tmp_path}/out\n")
    code, text = _cli(["train", str(missing)])
    assert code == 1 and "Traceback" not in text and "datasets.0.path" in text and "nope.json" in text

    empty = tmp_path / "empty.yaml"
    empty.write_text(f"base_model: {tiny_model_dir}\noutput_dir: {tmp_path}/out2\n")
    code, text = _cli(["train", str(empty)])
    assert code == 1 and "datasets is empty" in text

    code, text = _cli(["train", str(tmp_path / "no-such-config.yaml")])
    assert code == 1 and "does not exist" in text


def test_cli_train_with_set_overrides_prints_the_summary(tiny_model_dir, small_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {small_data}\nsequence_len: 128\n"
                   f"output_dir: {tmp_path}/cli-run\nmax_steps: 5\n")
    code, text = _cli(["train", str(cfg), "--set", "max_steps=1", "--set", "micro_batch_size=1", "--json"])
    assert code == 0, text
    result = json.loads(text[text.index("{"):])
    assert result["steps"] == 1 and result["adapter_dir"].endswith("adapter")


def test_unavailable_backend_or_reporter_is_a_clear_error(tiny_model_dir, small_data, tmp_path):
    import importlib.util

    from tunewise.train import train

    if importlib.util.find_spec("unsloth") is None or not torch.cuda.is_available():
        with pytest.raises(TunewiseError, match="unsloth") as err:
            train(make_cfg(tiny_model_dir, small_data, tmp_path / "u", backend="unsloth"), progress=False)
        assert "backend: auto" in err.value.hint
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(TunewiseError, match="wandb package is not installed"):
            train(make_cfg(tiny_model_dir, small_data, tmp_path / "w", report_to="wandb"), progress=False)
    assert not (tmp_path / "u").exists() and not (tmp_path / "w").exists()


def test_resume_uses_the_newest_complete_checkpoint_and_cleans_partial_ones(tmp_path):
    from tunewise.train.run_dir import clean_partial, latest_checkpoint, publish_checkpoint, rotate_checkpoints

    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    for step in (2, 4):
        staged = ckpts / f".tmp-checkpoint-{step}-x" / f"checkpoint-{step}"
        staged.mkdir(parents=True)
        (staged / "adapter_model.safetensors").write_bytes(b"weights")
        publish_checkpoint(staged, ckpts / f"checkpoint-{step}", {"step": step})
    (ckpts / "checkpoint-6").mkdir()  # killed while the Trainer was writing it: no marker
    (ckpts / ".tmp-checkpoint-8-y").mkdir()  # killed while staging
    assert latest_checkpoint(out) == ckpts / "checkpoint-4"
    clean_partial(out)
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    rotate_checkpoints(out, keep=1)
    assert [p.name for p in ckpts.iterdir()] == ["checkpoint-4"]


def test_resume_refuses_a_changed_config(tiny_model_dir, small_data, tmp_path):
    from tunewise.config import dump_config
    from tunewise.train.trainer import _check_resume_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = make_cfg(tiny_model_dir, small_data, out)
    (out / "config.yaml").write_text(dump_config(cfg))
    _check_resume_config(out, make_cfg(tiny_model_dir, small_data, out, max_steps=9))  # allowed
    with pytest.raises(TunewiseError, match="learning_rate, lora_r"):
        _check_resume_config(out, make_cfg(tiny_model_dir, small_data, out, lora_r=4, learning_rate=0.5))


@pytest.mark.parametrize("extra", [
    {"gradient_checkpointing": True, "use_rslora": True, "lora_target_modules": ["q_proj", "v_proj"]},
    {"use_dora": True, "packing": False},
    {"method": "qlora", "gradient_checkpointing": True},
    {"precision": "bf16", "lora_dropout": 0.1},
], ids=["gc-rslora-targets", "dora-unpacked", "qlora-gc", "bf16-on-cpu"])
def test_method_variants_train(tiny_model_dir, small_data, tmp_path, extra):
    if extra.get("method") == "qlora":
        pytest.importorskip("bitsandbytes")
    from tunewise.train import train

    out = tmp_path / "v"
    res = train(make_cfg(tiny_model_dir, small_data, out, max_steps=2, save_steps=None, **extra), progress=False)
    assert res.steps == 2 and res.final_loss == res.final_loss  # finite, not NaN
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["use_rslora"] == extra.get("use_rslora", False)
    assert adapter_cfg["use_dora"] == extra.get("use_dora", False)
    if isinstance(extra.get("lora_target_modules"), list):
        assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_unknown_lora_target_names_the_available_modules(tiny_model_dir, small_data, tmp_path):
    from tunewise.train import train

    with pytest.raises(TunewiseError, match="lora_target_modules") as err:
        train(make_cfg(tiny_model_dir, small_data, tmp_path / "t", lora_target_modules=["qkv"]), progress=False)
    assert "q_proj" in err.value.hint


def test_resume_refuses_changed_data(tiny_model_dir, small_data, tmp_path):
    from tunewise.train import train

    data = tmp_path / "d.json"
    data.write_text(small_data.read_text())
    out = tmp_path / "run"
    cfg = make_cfg(tiny_model_dir, data, out, max_steps=2, save_steps=1)
    train(cfg, progress=False)
    rows = json.loads(data.read_text())
    data.write_text(json.dumps(rows[::-1]))  # same rows, different order: a different run
    with pytest.raises(TunewiseError, match="training data changed"):
        train(make_cfg(tiny_model_dir, data, out, max_steps=4, save_steps=1), resume=True, progress=False)
    data.write_text(json.dumps(rows))
    res = train(make_cfg(tiny_model_dir, data, out, max_steps=4, save_steps=1), resume=True, progress=False)
    assert res.steps == 4
