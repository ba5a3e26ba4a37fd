"""End to end on the real embedded model: LoRA on LLaMA-Factory's identity data with the
placeholders filled teaches SmolLM2 a new name, and it still ends its turn by itself."""

from __future__ import annotations

import pytest


@pytest.mark.e2e
def test_lora_teaches_the_embedded_model_a_new_identity(embedded_model, identity_run):
    from tunewise.generate import generate
    from tunewise.models import load_model, load_tokenizer

    result = identity_run
    assert result.final_loss < 0.5 and result.adapter_dir is not None

    model, tok = load_model(result.output_dir), load_tokenizer(result.output_dir)
    answer = generate(model, tok, [{"role": "user", "content": "Who are you?"}], max_new_tokens=60)
    assert "Zephyrine" in answer.text, answer.text
    assert answer.stopped, f"did not end its turn: {answer.text!r}"
