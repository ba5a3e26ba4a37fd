"""End to end on the real embedded model: LoRA on LLaMA-Factory's identity data with the
placeholders filled teaches SmolLM2 a new name, and it still ends its turn by itself."""

from __future__ import annotations

import json

import pytest


@pytest.mark.e2e
def test_lora_teaches_the_embedded_model_a_new_identity(embedded_model, shared_data, tmp_path):
    from tunewise.config import RunConfig
    from tunewise.data.ops import fill_file
    from tunewise.generate import generate
    from tunewise.models import load_model, load_tokenizer
    from tunewise.train import train

    filled = tmp_path / "identity.json"
    fill_file(shared_data / "identity.json", filled, {"name": "Zephyrine", "author": "Acme Labs"})
    # The first 20 rows are the identity questions; a subset keeps this under a few minutes on 2 CPU cores.
    subset = tmp_path / "identity20.json"
    subset.write_text(json.dumps(json.loads(filled.read_text())[:20]))

    cfg = RunConfig(
        base_model=embedded_model,
        datasets=[{"path": str(subset)}],
        sequence_len=256,
        packing=True,
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        num_epochs=4,
        learning_rate=1e-3,
        warmup_ratio=0.05,
        output_dir=str(tmp_path / "run"),
    )
    result = train(cfg, progress=False)
    assert result.final_loss < 0.5 and result.adapter_dir is not None

    model, tok = load_model(result.output_dir), load_tokenizer(result.output_dir)
    answer = generate(model, tok, [{"role": "user", "content": "Who are you?"}], max_new_tokens=60)
    assert "Zephyrine" in answer.text, answer.text
    assert answer.stopped, f"did not end its turn: {answer.text!r}"
