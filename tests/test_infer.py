"""The inference layer: the HF reference engine, llama.cpp (xllamacpp), OpenAI-compatible endpoints,
open_engine and the parity gate."""

from __future__ import annotations

import threading

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
    gen = hf_engine.stream(Request(MSG, max_tokens=200))  # a reader that stops early
    next(gen)
    gen.close()  # returns once generation has stopped, not at the next token
    assert not [t for t in threading.enumerate() if t.name == "tunewise-hf-stream"]


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


# --- llama.cpp ---------------------------------------------------------------------------------

xllamacpp = pytest.importorskip("xllamacpp")


@pytest.fixture(scope="module")
def tiny_gguf(talky_model_dir, tmp_path_factory):
    """The talky tiny model converted to an f32 GGUF (the converter accepts the random Llama)."""
    from tunewise.export.gguf import convert

    return convert(talky_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


@pytest.fixture(scope="module")
def cpp_engine(tiny_gguf):
    from tunewise.infer.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(str(tiny_gguf), n_parallel=4, ctx_per_request=256)
    yield eng
    eng.close()


def questions(n: int, max_tokens: int = 12) -> list[Request]:
    return [Request([{"role": "user", "content": f"Question number {i}?"}], max_tokens=max_tokens) for i in range(n)]


def test_llamacpp_runs_many_requests_at_once(cpp_engine, hf_engine):
    assert isinstance(cpp_engine, Engine) and cpp_engine.precision == "f32" and cpp_engine.threads >= 1
    reqs = questions(10)
    done: list[int] = []
    out = cpp_engine.generate(reqs, on_result=lambda i, c: done.append(i))
    assert done == list(range(10)) and all(c.engine == "llama.cpp" for c in out)
    ref = hf_engine.generate(reqs)
    for c, r in zip(out, ref):
        assert c.output_tokens == 12 and c.finish_reason == "length"
        assert c.input_tokens == r.input_tokens  # same prompt tokens: the GGUF's template renders like HF's
        assert 0 < c.ttft_s <= c.seconds and c.extra["wall_s"] > 0
    # f32 weights, greedy: llama.cpp answers as the reference does
    assert sum(c.text == r.text for c, r in zip(out, ref)) >= 9


def test_llamacpp_renders_the_hf_chat_template(cpp_engine, hf_engine):
    from tunewise.infer.hf import render_prompt

    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."}]
    for msgs in (conv, conv[1:2], conv[1:]):
        assert cpp_engine.render(msgs) == render_prompt(hf_engine.tokenizer, msgs)


def test_llamacpp_stop_string_seed_and_stream(cpp_engine):
    full = cpp_engine.generate([Request(MSG, max_tokens=16)])[0]
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    cut = cpp_engine.generate([Request(MSG, max_tokens=16, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)].strip()
    sampled = [Request(MSG, max_tokens=10, temperature=1.0, top_p=0.9, seed=s) for s in (1, 1, 2)]
    a, b, c = (x.text for x in cpp_engine.generate(sampled))
    assert a == b and a != c
    pieces = list(cpp_engine.stream(Request(MSG, max_tokens=16)))
    assert isinstance(pieces[-1], Completion) and all(isinstance(p, str) for p in pieces[:-1])
    assert "".join(pieces[:-1]).strip() == pieces[-1].text == full.text
    assert pieces[-1].output_tokens == 16 and pieces[-1].finish_reason == "length" and pieces[-1].input_tokens > 5
    # a reader that stops early frees the slot: the engine still answers afterwards
    gen = cpp_engine.stream(Request(MSG, max_tokens=200))
    assert isinstance(next(gen), str)
    gen.close()
    # ... and close() returns only once the request has ended in the server (the serve slot it
    # held is then truly free)
    assert not [t for t in threading.enumerate() if t.name == "tunewise-llama.cpp-stream"]
    assert cpp_engine.generate([Request(MSG, max_tokens=16)])[0].text == full.text


def test_llamacpp_greedy_asks_for_top_k_1_and_answers_as_a_whole_vocabulary_argmax(cpp_engine):
    """Greedy requests reach llama.cpp with top_k 1 (the fast path through its sampler chain);
    sampled ones keep the whole vocabulary. The greedy answers are those of top_k 0."""
    greedy, sampled = Request(MSG, max_tokens=16), Request(MSG, max_tokens=16, temperature=0.8)
    assert cpp_engine._body(greedy)["top_k"] == 1 and cpp_engine._body(sampled)["top_k"] == 0
    reqs = questions(6, max_tokens=16)
    fast = cpp_engine.generate(reqs)
    for r, c in zip(reqs, fast):
        whole = cpp_engine._call(dict(cpp_engine._body(r), top_k=0))
        assert c.text == whole["choices"][0]["message"]["content"].strip()


def test_ngram_speculation_drafts_tokens_and_changes_no_answer(cpp_engine, tiny_gguf):
    """Speculative decoding with n-gram drafts is lossless: the same greedy answers (generated and
    streamed) as without it, while the model really checked drafted tokens."""
    from tunewise.infer.llamacpp import LlamaCppEngine

    reqs = questions(4, max_tokens=48)
    plain = cpp_engine.generate(reqs)
    spec = LlamaCppEngine(str(tiny_gguf), n_parallel=2, ctx_per_request=256, speculative="ngram")
    try:
        fast = spec.generate(reqs)
        assert [c.text for c in fast] == [c.text for c in plain]
        assert [c.output_tokens for c in fast] == [c.output_tokens for c in plain]
        assert all(0 <= c.extra["draft_accepted"] <= c.extra["draft_tokens"] for c in fast)
        pieces = list(spec.stream(reqs[0]))
        assert pieces[-1].text == plain[0].text == "".join(pieces[:-1]).strip()
    finally:
        spec.close()
    assert "draft_tokens" not in plain[0].extra
    with pytest.raises(TunewiseError, match="speculative 'eagle' is not known"):
        LlamaCppEngine(str(tiny_gguf), speculative="eagle")


def test_llamacpp_errors_are_tunewise_errors(cpp_engine, tmp_path):
    from tunewise.infer.llamacpp import LlamaCppEngine

    with pytest.raises(TunewiseError) as e:
        cpp_engine.generate([Request([{"role": "user", "content": "word " * 400}], max_tokens=4)])
    assert "context" in e.value.message and "ctx_per_request" in e.value.hint
    with pytest.raises(TunewiseError) as e:
        LlamaCppEngine(str(cpp_engine.gguf), precision="q8_0")
    assert "holds f32 weights, not q8_0" in e.value.message


def test_llamacpp_converts_an_hf_dir_once_into_the_cache(talky_model_dir, tunewise_home):
    from tunewise.infer.llamacpp import gguf_for

    path, kind = gguf_for(str(talky_model_dir), "f16")
    assert kind == "f16" and path.parent == tunewise_home / "gguf" and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert gguf_for(str(talky_model_dir), "fp16") == (path, "f16") and path.stat().st_mtime_ns == mtime
    with pytest.raises(TunewiseError):
        gguf_for(str(talky_model_dir), "q4_k_m")


def test_open_engine_auto_picks_llamacpp(tiny_gguf):
    from tunewise.infer.llamacpp import LlamaCppEngine

    eng = open_engine(str(tiny_gguf), n_parallel=2, ctx_per_request=128)
    try:
        assert isinstance(eng, LlamaCppEngine) and eng.n_parallel == 2
    finally:
        eng.close()


# --- parity ------------------------------------------------------------------------------------


def test_spread_prompts_takes_them_in_turn_from_each_group():
    from tunewise.infer.parity import spread_prompts

    assert spread_prompts([["a0", "a1", "a2"], ["b0"], ["c0", "c1"]], 5) == ["a0", "b0", "c0", "a1", "c1"]
    assert spread_prompts([["a0", "a1"], ["b0", "b1"]], 3) == ["a0", "b0", "a1"]
    assert spread_prompts([["a0"]], 4) == ["a0"] and spread_prompts([], 4) == []


def test_parity_passes_on_the_same_model_and_fails_on_another(hf_engine, cpp_engine, smol_tokenizer_dir, tmp_path):
    from conftest import build_tiny_model

    from tunewise.infer.parity import check_parity

    reqs = questions(6)
    same = check_parity(hf_engine, cpp_engine, reqs)
    assert same.passed and same.identical >= 0.8 and same.unit == "tokens", same.summary()
    assert same.summary().startswith("parity passed: llama.cpp f32 vs hf fp32 on 6 prompts")
    other = HFEngine(str(build_tiny_model(tmp_path / "other", smol_tokenizer_dir, seed=1, tie=False)), precision="fp32")
    diff = check_parity(hf_engine, other, reqs)
    assert not diff.passed and diff.identical == 0 and diff.mean_prefix < 0.2
    assert "FAILED" in diff.summary() and diff.first_divergence is not None and diff.to_dict()["passed"] is False


def test_compare_texts_counts_common_prefix_by_words():
    from tunewise.infer.parity import Tolerance, compare_texts

    r = compare_texts(["a b c d", "x y", "same"], ["a b z z", "q", "same"], tolerance=Tolerance(0.3, 0.5))
    assert r.unit == "words" and r.identical == pytest.approx(1 / 3)
    assert r.mean_prefix == pytest.approx((0.5 + 0 + 1) / 3) and r.passed
    assert r.first_divergence.index == 1 and r.first_divergence.position == 0


# --- OpenAI-compatible endpoints ---------------------------------------------------------------


def test_openai_engine_against_a_fake_server(monkeypatch):
    from conftest import FakeOpenAI

    from tunewise.infer.openai import OpenAIEngine

    monkeypatch.setenv("TW_INFER_KEY", "sk-test")
    with FakeOpenAI("Nine days of leave.") as fake:
        eng = OpenAIEngine("fake-model", base_url=fake.base_url, api_key_env="TW_INFER_KEY", concurrency=3)
        out = eng.generate([Request(MSG, max_tokens=7, seed=3, stop=("END",))] * 5)
        assert [c.text for c in out] == ["Nine days of leave."] * 5
        assert out[0].input_tokens == 30 and out[0].output_tokens == 5 and out[0].finish_reason == "stop"
        body = fake.requests[0]["body"]
        assert body["max_tokens"] == 7 and body["seed"] == 3 and body["stop"] == ["END"]
        assert fake.requests[0]["auth"] == "Bearer sk-test"
        pieces = list(eng.stream(Request(MSG)))
        assert "".join(pieces[:-1]) == "Nine days of leave." and pieces[-1].output_tokens == 5
        eng.close()
    with FakeOpenAI(status=401) as fake:
        eng = OpenAIEngine("fake-model", base_url=fake.base_url, api_key_env="TW_INFER_KEY", max_retries=0)
        with pytest.raises(TunewiseError) as e:
            eng.generate([Request(MSG)])
        assert fake.base_url in e.value.message and "401" in e.value.message and "TW_INFER_KEY" in e.value.hint
    with pytest.raises(TunewiseError) as e:
        OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=2).generate([Request(MSG)])
    assert "cannot reach http://127.0.0.1:9/v1/chat/completions" in e.value.message


def test_physical_cores_counts_hyperthreads_once(tmp_path):
    import os

    from tunewise.hardware import physical_cores

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    block = "processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {c}\nflags\t\t: avx2\n"
    shared, separate = tmp_path / "shared", tmp_path / "separate"  # (physical_cores caches per file)
    shared.write_text("\n".join(block.format(p=p, c=0) for p in cpus[:2]))
    separate.write_text("\n".join(block.format(p=p, c=i) for i, p in enumerate(cpus[:2])))
    assert physical_cores(str(shared)) == 1 and physical_cores(str(separate)) == 2


def test_llamacpp_runs_a_lora_run_merged_as_the_reference_answers(talky_model_dir, tmp_path, tunewise_home):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunewise.infer.llamacpp import LlamaCppEngine

    # an adapter that changes the answers (random B, not peft's zero init)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(talky_model_dir)),
                                LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    (run / "adapter" / "tunewise_base.json").write_text(json.dumps({"base_model": str(talky_model_dir)}))
    reqs = questions(4)
    ref = HFEngine(str(run), precision="fp32")  # adapter unmerged
    want = [c.text for c in ref.generate(reqs)]
    base = [c.text for c in HFEngine(str(talky_model_dir), precision="fp32").generate(reqs)]
    assert want != base
    eng = LlamaCppEngine(str(run), precision="f32", n_parallel=2, ctx_per_request=128)
    try:
        assert [c.text for c in eng.generate(reqs)] == want
        cached = sorted(p.name for p in (tunewise_home / "gguf").iterdir() if p.suffix == ".gguf")
        assert len(cached) == 1 and cached[0].startswith("run-") and cached[0].endswith("-f32.gguf")
        assert not list((tunewise_home / "gguf").glob(".merge-*"))  # the merged scratch copy is gone
    finally:
        eng.close()


@pytest.mark.e2e
def test_embedded_model_llamacpp_f16_passes_parity(embedded_model):
    from tunewise.infer.llamacpp import LlamaCppEngine
    from tunewise.infer.parity import check_parity

    prompts = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 7?",
               "Write a haiku about the sea."]
    reqs = [Request([{"role": "user", "content": p}], max_tokens=32) for p in prompts]
    fast = LlamaCppEngine(embedded_model, n_parallel=4, ctx_per_request=512)
    try:
        assert fast.precision == "f16"
        report = check_parity(HFEngine(embedded_model, precision="fp32"), fast, reqs)
        assert report.passed, report.summary()
    finally:
        fast.close()


@pytest.mark.e2e
def test_embedded_model_ngram_speculation_keeps_the_answer_and_accepts_drafts(embedded_model):
    """A legal notice copies names, amounts and dates from its prompt: n-gram drafts are accepted,
    and the answer is the one decoded without them."""
    import random

    from tunewise.demo.notices import SYSTEM_PROMPT, make_case, prompt_for
    from tunewise.infer.llamacpp import LlamaCppEngine

    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt_for(make_case(random.Random(3)))}]
    answers = {}
    for mode in ("off", "ngram"):
        eng = LlamaCppEngine(embedded_model, n_parallel=1, ctx_per_request=768, speculative=mode)
        try:
            answers[mode] = eng.generate([Request(msgs, max_tokens=96)])[0]
        finally:
            eng.close()
    assert answers["ngram"].text == answers["off"].text and answers["ngram"].output_tokens == 96
    assert answers["ngram"].extra["draft_accepted"] > 0


def test_llamacpp_own_http_port_needs_the_engines_key(cpp_engine):
    """xllamacpp also listens on a loopback port with llama.cpp's HTTP server: without the
    engine's random key it answers 401, so other local users cannot bypass `tunewise serve`."""
    import urllib.error
    import urllib.request

    engine = cpp_engine
    req = urllib.request.Request(engine._server.listening_address + "/tokenize", data=b'{"content": "hi"}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    assert engine.count_tokens([{"role": "user", "content": "hi"}]) > 0  # the engine's own calls pass


def test_build_isa_reads_llama_cpp_system_info():
    from tunewise.infer.llamacpp import build_isa

    wheel = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 |"
    native = wheel.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 |")
    assert build_isa(wheel) == "AVX2"
    assert build_isa(native) == "AVX-512 BF16"
    assert build_isa(native.replace("AVX512_BF16 = 1", "AVX512_BF16 = 0")) == "AVX-512"
    assert build_isa("CPU : NEON = 1 | ARM_FMA = 1 |") is None
    assert build_isa() in (None, "AVX", "AVX2", "AVX-512", "AVX-512 BF16", "AMX")  # the installed build


def test_native_build_hint_only_where_the_cpu_has_more_than_the_build():
    from tunewise.infer.llamacpp import native_build_hint

    hint = native_build_hint("AVX-512 BF16", "AVX2")
    assert hint and "make setup-native" in hint and "AVX2" in hint and "AVX-512 BF16" in hint
    assert native_build_hint("AMX", "AVX2") is None  # measured slower than the wheel on an Intel Xeon with AMX
    assert native_build_hint("AVX-512", "AVX2") is None  # not measured
    assert native_build_hint("AVX2", "AVX2") is None  # an AVX2 CPU: the wheel is already its best
    assert native_build_hint("AVX-512 BF16", "AVX-512 BF16") is None  # already native
    assert native_build_hint("AVX-512 BF16 (emulated)", "AVX2") is None
    assert native_build_hint("AVX-512", None) is None  # llama.cpp not installed


def test_compare_engine_lines_name_the_build_and_hint_a_native_one(monkeypatch):
    from rich.console import Console

    import tunewise.commands.evaluate as ev
    import tunewise.hardware as hw

    monkeypatch.setattr(ev, "console", Console(record=True, width=200))
    report = {"engine": {"name": "llama.cpp", "precision": "f16", "concurrency": 8, "built_for": "AVX2",
                         "parity": {}, "fell_back": False}, "arms": []}
    monkeypatch.setattr(hw, "cpu_info", lambda: {"kind": "AVX-512 BF16"})
    ev.print_engine_lines(report)
    text = ev.console.export_text()
    assert "llama.cpp f16, 8 at once (compiled for AVX2)" in text and "make setup-native" in text
    monkeypatch.setattr(ev, "console", Console(record=True, width=200))
    monkeypatch.setattr(hw, "cpu_info", lambda: {"kind": "AVX2"})
    ev.print_engine_lines(report)
    assert "make setup-native" not in ev.console.export_text()  # nothing to gain on an AVX2-only CPU


class _SlotsEngine:
    """A batching engine with 8 slots that answers at once (records how many it got per call)."""

    name, precision, n_parallel = "fake", "f16", 8

    def __init__(self):
        self.calls: list[int] = []

    def generate(self, requests, on_result=None):
        self.calls.append(len(requests))
        out = [Completion("ok", 5, 3, "stop", 0.01, 0.005) for _ in requests]
        for i, c in enumerate(out):
            if on_result is not None:
                on_result(i, c)
        return out


def test_run_all_records_the_requests_in_flight_not_just_the_slots():
    """Issue 15: an eval set smaller than the slots never fills them, and the stats say so."""
    from tunewise.infer.run import run_all

    eng = _SlotsEngine()
    reqs = [Request([{"role": "user", "content": f"q{i}"}], max_tokens=3) for i in range(8)]
    out, stats = run_all(eng, reqs, latency_samples=5)
    assert eng.calls == [1, 1, 1, 1, 1, 3] and len(out) == 8
    d = stats.to_dict()
    assert d["throughput_concurrency"] == 3 and d["throughput_slots"] == 8 and d["throughput_queries"] == 3
    eng = _SlotsEngine()
    _, stats = run_all(eng, reqs * 3, latency_samples=5)  # 19 left: every slot in use
    assert stats.to_dict()["throughput_concurrency"] == 8 and stats.to_dict()["throughput_slots"] == 8


def test_build_check_names_a_crash_by_signal_and_fails(tiny_model_dir, capsys):
    """`make setup-native` runs tunewise.infer.build_check: each GGUF type in a child process, so a
    build that dies on one (SIGILL in llama.cpp's AMX kernels on q8_0, seen on an Intel Xeon) is
    reported by name instead of crashing tunewise."""
    from tunewise.infer import build_check as bc

    dies = "import os, signal, sys; print(sys.argv[2]); os.kill(os.getpid(), signal.SIGILL)"
    r = bc.check_precision("m", "q8_0", child=dies)
    assert not r.ok and r.detail == "the process died with SIGILL"
    r = bc.check_precision("m", "f16", child="raise SystemExit('cannot load m')")
    assert not r.ok and r.detail == "exit status 1: cannot load m"
    r = bc.check_precision("m", "f16", child="import time; time.sleep(30)", timeout=1)
    assert not r.ok and "within 1 s" in r.detail
    assert bc.main(["--model", str(tiny_model_dir), "--precisions", "f16"]) == 0  # the installed build, for real
    out = capsys.readouterr().out
    assert "ok   f16: tokens" in out and "compiled for" in out


def test_an_amx_build_runs_a_quantized_gguf_in_a_child_first(tiny_model_dir, monkeypatch):
    """A llama.cpp built with AMX kernels (died with SIGILL on q8_0 on an Intel Xeon): the engine
    checks a quantized GGUF in a child process first and refuses with the fix instead of crashing;
    f16 (no AMX kernel) and other builds are not checked."""
    from tunewise.infer import build_check, llamacpp

    calls = []

    def dies(model, precision, timeout=600.0, child=""):
        calls.append(model)
        return build_check.Result(precision, False, "the process died with SIGILL", 0.1)

    monkeypatch.setattr(build_check, "check_precision", dies)
    monkeypatch.setattr(llamacpp, "_amx_checked", {})
    monkeypatch.setattr(llamacpp, "build_isa", lambda: "AMX")
    gguf, kind = llamacpp.gguf_for(str(tiny_model_dir), "q8_0")
    with pytest.raises(TunewiseError, match="AMX kernels and cannot run .*SIGILL") as e:
        llamacpp.LlamaCppEngine(str(gguf), n_parallel=1, ctx_per_request=64)
    assert "make setup-native" in e.value.hint and calls == [str(gguf)]
    llamacpp.check_amx_build(gguf, "f16")  # no AMX kernel for f16: not checked
    monkeypatch.setattr(llamacpp, "build_isa", lambda: "AVX-512 BF16")
    llamacpp.check_amx_build(gguf, kind)  # another build: not checked
    assert calls == [str(gguf)]
