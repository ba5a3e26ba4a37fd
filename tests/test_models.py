"""The model loader: embedded name, local HF dir, .gguf file, run dirs, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.models import (
    EMBEDDED_MODELS,
    bf16_native,
    check_cache,
    embedded_gguf_path,
    list_models,
    load_model,
    load_tokenizer,
    resolve_model,
)


def test_load_local_hf_dir(tiny_model_dir):
    import torch

    model = load_model(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    assert model.config.num_hidden_layers == 2
    # auto: bf16 where the hardware computes it natively, else fp32
    assert next(model.parameters()).dtype == (torch.bfloat16 if bf16_native("cpu") else torch.float32)
    assert next(load_model(tiny_model_dir, dtype="fp32").parameters()).dtype == torch.float32
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == 49152
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_dtype_override(tiny_model_dir):
    import torch

    assert next(load_model(tiny_model_dir, dtype="bf16").parameters()).dtype == torch.bfloat16
    with pytest.raises(TunewiseError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="fp8")


def _write_tiny_gguf(src_dir: Path, out: Path) -> Path:
    """Write a real (f32) GGUF of the tiny Llama with the gguf library, as llama.cpp would."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((src_dir / "config.json").read_text())
    tok = json.loads((src_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(cfg["vocab_size"])
    # BPE tokenizer (GPT-2 style, as SmolLM2 ships it)
    vocab = tok["model"]["vocab"]
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    for added in tok.get("added_tokens", []):
        if added["id"] < len(tokens):
            tokens[added["id"]] = added["content"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    specials = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    w.add_token_types([gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template((src_dir / "chat_template.jinja").read_text())

    tensors = load_file(str(src_dir / "model.safetensors"))
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(wt, n_head):  # HF -> GGUF rotary layout (the inverse of what transformers undoes)
        return wt.reshape(n_head, 2, wt.shape[0] // n_head // 2, *wt.shape[1:]).swapaxes(1, 2).reshape(wt.shape)

    for name, arr in tensors.items():
        if name in names:
            w.add_tensor(names[name], arr.astype(np.float32))
            continue
        parts = name.split(".")
        layer = parts[2]
        key = ".".join(parts[3:-1])
        arr = arr.astype(np.float32)
        if key == "self_attn.q_proj":
            arr = permute(arr, heads)
        elif key == "self_attn.k_proj":
            arr = permute(arr, kv)
        w.add_tensor(f"blk.{layer}.{per_layer[key]}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_load_local_gguf_matches_source(tiny_model_dir, tmp_path, tunewise_home):
    import torch

    gguf_file = _write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    resolved = resolve_model(gguf_file)
    assert resolved.path.parent == tunewise_home / "models"
    assert (resolved.path / "model.safetensors").is_file()
    from_gguf = load_model(gguf_file)
    from_dir = load_model(tiny_model_dir)
    tok = load_tokenizer(gguf_file)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        a = from_gguf(**ids).logits
        b = from_dir(**ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # converted once: a second resolve reuses the cache
    mtime = (resolved.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(gguf_file).path == resolved.path
    assert (resolved.path / "model.safetensors").stat().st_mtime_ns == mtime


def test_unknown_model_name_is_clear():
    with pytest.raises(TunewiseError, match="unknown model 'gpt-17'") as e:
        resolve_model("gpt-17")
    assert "tunewise models" in e.value.hint


def test_hub_id_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(TunewiseError, match="not on this machine") as e:
        resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    assert "never downloads" in e.value.message


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(TunewiseError, match="does not exist"):
        resolve_model(tmp_path / "nope.gguf")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TunewiseError, match="not a .gguf"):
        resolve_model(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunewiseError, match="not a model directory"):
        resolve_model(tmp_path / "empty")


def test_corrupt_cache_is_detected(tiny_model_dir, tmp_path, tunewise_home):
    gguf_file = _write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    cached = resolve_model(gguf_file).path
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])  # truncated by a full disk, say
    with pytest.raises(TunewiseError, match="corrupt") as e:
        check_cache(cached)
    assert "--clear" in e.value.hint
    with pytest.raises(TunewiseError, match="corrupt"):
        load_model(gguf_file)


def test_corrupt_local_dir_is_clear(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(TunewiseError, match="cannot load the model"):
        load_model(broken)


def test_interrupted_conversion_leaves_no_model(tiny_model_dir, tmp_path, tunewise_home, monkeypatch):
    gguf_file = _write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    import tunewise.models as m

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        m.resolve_model(gguf_file)
    leftovers = list((tunewise_home / "models").iterdir())
    assert leftovers == [], "an interrupted conversion must not leave a (half) model behind"
    monkeypatch.undo()
    monkeypatch.setenv("TUNEWISE_HOME", str(tunewise_home))
    assert (m.resolve_model(gguf_file).path / "tunewise_manifest.json").is_file()


def test_run_dir_with_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, dtype="fp32")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    (run / "adapter" / "tunewise_base.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    resolved = resolve_model(run)
    assert resolved.adapter_dir == run / "adapter" and resolved.path == Path(tiny_model_dir)
    loaded = load_model(run, dtype="fp32")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model(ids).logits)
        merged = load_model(run, merge_adapter=True, dtype="fp32")
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-4)


def test_embedded_package_present():
    path = embedded_gguf_path(EMBEDDED_MODELS["smollm2-135m"])
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_list_models_before_conversion(tunewise_home):
    models = {m.name: m for m in list_models()}
    assert not models["smollm2-135m"].cached
    assert models["smollm2-135m"].size_bytes > 50_000_000


@pytest.mark.e2e
def test_embedded_model_answers_paris(embedded_model):
    from tunewise.generate import generate

    model, tok = load_model(embedded_model), load_tokenizer(embedded_model)
    out = generate(model, tok, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=30)
    assert "Paris" in out.text
    assert out.stopped
    info = {m.name: m for m in list_models()}["smollm2-135m"]
    assert info.cached and 130e6 < info.parameters < 140e6
