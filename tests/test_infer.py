"""The inference layer: the HF reference engine, llama.cpp (xllamacpp), OpenAI-compatible endpoints,
open_engine and the parity gate."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError
from tunewise.infer import Completion, Engine, Request, open_engine
from tunewise.infer.hf import HFEngine, StopTrimmer

MSG = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="session")
def talky_model_dir(tmp_path_factory, smol_tokenizer_dir):
    """A tiny random Llama with an untied output layer: greedy text varies (the tied one repeats "\n")."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("talky"), smol_tokenizer_dir, tie=False)


@pytest.fixture(scope="module")
def hf_engine(talky_model_dir):
    eng = HFEngine(str(talky_model_dir), precision="fp32")
    yield eng
    eng.close()


# --- HF reference ------------------------------------------------------------------------------


def test_hf_engine_is_an_engine_and_greedy_is_deterministic(hf_engine):
    assert isinstance(hf_engine, Engine) and hf_engine.name == "hf" and hf_engine.precision == "fp32"
    reqs = [Request(MSG, max_tokens=12), Request([{"role": "user", "content": "Hello"}], max_tokens=5)]
    seen = []
    a = hf_engine.generate(reqs, on_result=lambda i, c: seen.append(i))
    b = hf_engine.generate(reqs)
    assert seen == [0, 1]
    assert [c.text for c in a] == [c.text for c in b]
    assert a[0].output_tokens == 12 and a[0].finish_reason == "length" and a[0].engine == "hf"
    assert a[0].input_tokens > 5 and a[0].seconds > 0 and a[0].ttft_s is not None


def test_hf_engine_stop_string_cuts_and_stream_never_shows_it(hf_engine):
    full = hf_engine.generate([Request(MSG, max_tokens=16)])[0].text
    assert len(full) > 8, full
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = hf_engine.generate([Request(MSG, max_tokens=16, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)].strip()
    assert cut.output_tokens < 16
    pieces = list(hf_engine.stream(Request(MSG, max_tokens=16, stop=(stop,))))
    assert isinstance(pieces[-1], Completion) and all(isinstance(p, str) for p in pieces[:-1])
    assert "".join(pieces[:-1]).strip() == cut.text and stop not in "".join(pieces[:-1])


def test_hf_engine_seed_repeats_sampling(hf_engine):
    req = Request(MSG, max_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    assert hf_engine.generate([req])[0].text == hf_engine.generate([req])[0].text
    texts = {hf_engine.generate([Request(MSG, max_tokens=10, temperature=1.0, seed=s)])[0].text for s in range(4)}
    assert len(texts) > 1


def test_stop_trimmer_holds_back_a_possible_stop_prefix():
    t = StopTrimmer(["END"])
    assert t.feed("abc E") == "abc"  # "E" may start END; " E" holds back 2 chars
    assert t.feed("N") == " "
    assert t.feed("Dxyz") == "" and t.stopped and t.text == "abc "
    t = StopTrimmer(["END"])
    assert t.feed("abEN") == "ab" and t.flush() == "EN"


def test_old_generate_call_still_works(tiny_model_dir):
    from tunewise.generate import generate
    from tunewise.models import load_model, load_tokenizer

    g = generate(load_model(str(tiny_model_dir), dtype="fp32"), load_tokenizer(str(tiny_model_dir)), MSG,
                 max_new_tokens=4)
    assert g.output_tokens == 4 and g.stopped is False


def test_open_engine_rejects_unknown_engine():
    with pytest.raises(TunewiseError) as e:
        open_engine("smollm2-135m", engine="vllm")
    assert "unknown engine 'vllm'" in e.value.message


def test_open_engine_hf(tiny_model_dir):
    eng = open_engine(str(tiny_model_dir), engine="hf", precision="fp32")
    assert isinstance(eng, HFEngine) and eng.model == str(tiny_model_dir)
