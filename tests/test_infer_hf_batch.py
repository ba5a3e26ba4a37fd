"""HFBatchEngine: transformers' generate on left-padded batches answers as the one-at-a-time
reference (HFEngine) does, row by row: text, token counts, finish reasons, stop strings."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError
from tunewise.infer import Completion, Engine, Request, open_engine
from tunewise.infer.hf import HFEngine
from tunewise.infer.hf_batch import HFBatchEngine, stop_string_end

# Prompts of different lengths, so the batch really pads (left) and positions differ per row.
PROMPTS = ["Name three colours.", "Hello", "Write a long poem about the sea, the sky and the wind at night.",
           "What is 2 + 2?", "Tell me a story about a cat who lives in a lighthouse by the sea."]


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def talky_dir(tmp_path_factory, smol_tokenizer_dir):
    """A tiny random Llama with an untied output layer: greedy text varies token by token."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("talky-batch"), smol_tokenizer_dir, tie=False)


@pytest.fixture(scope="module")
def engines(talky_dir):
    batch = HFBatchEngine(str(talky_dir), precision="fp32", batch_size=4)
    ref = HFEngine.from_loaded(batch.hf_model, batch.tokenizer, str(talky_dir))  # the same weights
    yield batch, ref
    batch.close()


def _same(a: Completion, b: Completion) -> None:
    assert (a.text, a.output_tokens, a.input_tokens, a.finish_reason) == \
           (b.text, b.output_tokens, b.input_tokens, b.finish_reason)


def test_batched_greedy_equals_the_reference_row_by_row(engines):
    batch, ref = engines
    assert isinstance(batch, Engine) and batch.name == "hf-batch" and batch.precision == "fp32"
    # different max_tokens in one batch; 5 requests in batches of 4 (a full one and a partial one)
    reqs = [Request(_msgs(p), max_tokens=n) for p, n in zip(PROMPTS, (12, 7, 12, 20, 3))]
    seen = []
    got = batch.generate(reqs, on_result=lambda i, c: seen.append(i))
    want = ref.generate(reqs)
    assert sorted(seen) == list(range(len(reqs)))
    for g, w in zip(got, want):
        _same(g, w)
        assert g.engine == "hf-batch" and g.seconds > 0 and g.ttft_s is not None and g.extra["batch"] in (1, 4)
    assert [g.output_tokens for g in got] == [12, 7, 12, 20, 3]
    assert all(g.finish_reason == "length" for g in got)
    assert len({g.text for g in got}) > 1  # the rows really differ (no accidental broadcast)


def test_a_row_that_ends_its_turn_stops_while_the_others_go_on(engines, talky_dir, tmp_path):
    """A model whose end-of-turn id is a token the tiny model emits: rows end at different steps."""
    import torch

    from tunewise.infer.hf import render_prompt

    batch, ref = engines
    # make the 3rd token the first prompt generates an end-of-turn id for this test
    enc = batch.tokenizer(render_prompt(batch.tokenizer, _msgs(PROMPTS[0])), return_tensors="pt",
                          add_special_tokens=False)
    with torch.inference_mode():
        out = batch.hf_model.generate(**enc, max_new_tokens=3, do_sample=False, eos_token_id=[2], pad_token_id=2)
    eos = int(out[0, -1])
    old = batch.hf_model.generation_config.eos_token_id
    batch.hf_model.generation_config.eos_token_id = [2, eos]
    try:
        reqs = [Request(_msgs(p), max_tokens=10) for p in PROMPTS]
        got, want = batch.generate(reqs), ref.generate(reqs)
    finally:
        batch.hf_model.generation_config.eos_token_id = old
    for g, w in zip(got, want):
        _same(g, w)
    assert got[0].finish_reason == "stop" and got[0].output_tokens <= 3
    assert any(g.finish_reason == "length" and g.output_tokens == 10 for g in got)


def test_stop_strings_per_row_cut_the_text_and_count_the_tokens(engines):
    batch, ref = engines
    full = ref.generate([Request(_msgs(PROMPTS[0]), max_tokens=16)])[0].text
    assert len(full) > 8, full
    stop = full[len(full) // 2:len(full) // 2 + 3]
    reqs = [Request(_msgs(PROMPTS[0]), max_tokens=16, stop=(stop,)),
            Request(_msgs(PROMPTS[2]), max_tokens=16),
            Request(_msgs(PROMPTS[0]), max_tokens=16, stop=("never-appears-xyz",))]
    got, want = batch.generate(reqs), ref.generate(reqs)
    for g, w in zip(got, want):
        _same(g, w)
    assert got[0].finish_reason == "stop" and stop not in got[0].text and got[0].output_tokens < 16
    assert got[0].text == full[:full.index(stop)].strip()
    assert got[1].finish_reason == "length" and got[2].finish_reason == "length" and got[2].text == full


def test_stop_string_end_finds_the_first_token_that_completes_it(smol_tokenizer):
    ids = smol_tokenizer("alpha beta gamma delta", add_special_tokens=False)["input_ids"]
    k = stop_string_end(smol_tokenizer, ids, ["gam"])
    assert "gam" in smol_tokenizer.decode(ids[:k]) and "gam" not in smol_tokenizer.decode(ids[:k - 1])
    assert stop_string_end(smol_tokenizer, ids, ["zeta"]) is None
    assert stop_string_end(smol_tokenizer, ids, []) is None


def test_seeded_sampling_repeats_whatever_else_is_in_the_call(engines):
    batch, _ = engines
    req = Request(_msgs(PROMPTS[0]), max_tokens=8, temperature=1.0, top_p=0.95, seed=7)
    alone = batch.generate([req])[0]
    crowded = batch.generate([Request(_msgs(PROMPTS[1]), max_tokens=5, temperature=1.0), req,
                              Request(_msgs(PROMPTS[2]), max_tokens=4)])
    assert crowded[1].text == alone.text and crowded[1].output_tokens == 8
    unseeded = batch.generate([Request(_msgs(PROMPTS[0]), max_tokens=8, temperature=1.0)] * 4)
    assert len({c.text for c in unseeded}) > 1  # rows of one sampled batch draw separately


def test_stream_answers_as_generate(engines):
    batch, _ = engines
    req = Request(_msgs(PROMPTS[3]), max_tokens=10)
    pieces = list(batch.stream(req))
    assert isinstance(pieces[-1], Completion) and pieces[-1].engine == "hf-batch"
    assert "".join(pieces[:-1]).strip() == pieces[-1].text == batch.generate([req])[0].text


def test_open_engine_hf_batch_and_its_errors(tiny_model_dir):
    eng = open_engine(str(tiny_model_dir), engine="hf-batch", precision="fp32", n_parallel=3)
    assert isinstance(eng, HFBatchEngine) and eng.batch_size == 3 and eng.precision == "fp32"
    eng.close()
    with pytest.raises(TunewiseError, match="batch_size"):
        HFBatchEngine(str(tiny_model_dir), precision="fp32", batch_size=0)


def test_hf_batch_passes_the_parity_gate_and_reports_its_batch(engines, talky_dir):
    from tunewise.infer.run import concurrency_of, open_checked

    _, ref = engines
    checked = open_checked(str(talky_dir), "hf-batch", "fp32", ref, [Request(_msgs(p), max_tokens=8) for p in PROMPTS],
                           on_failure="stop", n_parallel=4, ctx_per_request=256)
    try:
        assert isinstance(checked.engine, HFBatchEngine) and not checked.fell_back
        assert checked.parity.passed and checked.parity.identical == 1.0
        assert concurrency_of(checked.engine) == 4
    finally:
        checked.engine.close()
