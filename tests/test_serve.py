"""`tunewise serve`: the official openai client against a real uvicorn server on a loopback port.

A tiny random Llama behind the HF reference engine answers the model-level tests (chat, streaming,
stop, max_tokens, seeds, parallel streams, context length, cancelling on disconnect); a scripted
engine whose pace the test controls drives the HTTP-level ones (queue full, disconnects, loading,
metrics) so they are exact and fast.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import openai
import pytest

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Request
from tunewise.serve import Limits, ServerThread, check_bind, create_app, resolve_api_key
from tunewise.serve.limits import is_loopback

HI = [{"role": "user", "content": "Name three colours."}]
KEY = "tw-test-Very-Secret-4f1c9a"


# --- helpers ------------------------------------------------------------------------------------


def client(srv: ServerThread, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


def raw(srv: ServerThread, method: str, path: str, body=None, data: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One plain HTTP request (for what the openai client will not send: bad JSON, huge bodies)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    if data is None and body is not None:
        data = json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def metric(srv: ServerThread, name: str, key: str | None = None) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _, text = raw(srv, "GET", "/metrics", headers=headers)
    assert status == 200
    m = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(cond, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def error_of(status: int, body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err


class ScriptedEngine:
    """An Engine answering "w0 w1 w2 …" (one word a token, as many as max_tokens); each word waits
    for ``go`` (set by default) and ``delay`` seconds. Counts running and early-closed streams."""

    name, model, precision = "scripted", "scripted", "none"

    def __init__(self, delay: float = 0.0, n_parallel: int = 1, n_ctx: int = 1_000_000):
        self.delay, self.n_parallel, self.n_ctx = delay, n_parallel, n_ctx
        self.go = threading.Event()
        self.go.set()
        self.active = self.closed_early = self.started = 0
        self._lock = threading.Lock()

    def count_tokens(self, messages: list[dict]) -> int:
        return sum(len(m["content"].split()) for m in messages) + 2

    def stream(self, request: Request):
        with self._lock:
            self.active += 1
            self.started += 1
        finished = False
        try:
            said = " ".join(m["content"] for m in request.messages)
            if "too long" in said:  # as an engine that checks the context itself (llama.cpp)
                raise TunewiseError("the prompt does not fit the context", "shorten it")
            words = []
            for i in range(request.max_tokens):
                if "crash" in said and i == 2:
                    raise RuntimeError("the engine broke")
                self.go.wait()
                time.sleep(self.delay)
                words.append(f"w{i}")
                yield f"w{i} "
            finished = True
            yield Completion(" ".join(words), self.count_tokens(request.messages), len(words), "length", 0.0)
        finally:
            with self._lock:
                self.active -= 1
                self.closed_early += not finished

    def generate(self, requests, on_result=None):
        return [list(self.stream(r))[-1] for r in requests]

    def close(self) -> None:
        pass


def serve(engine, name: str = "tiny", **kwargs) -> ServerThread:
    limits = kwargs.pop("limits", Limits(max_tokens_limit=64))
    return ServerThread(create_app(engine, name, limits=limits, **kwargs))


# --- the tiny real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_engine(tmp_path_factory, smol_tokenizer_dir):
    from conftest import build_tiny_model

    from tunewise.infer.hf import HFEngine

    # untied output layer: varied greedy text (a tied one repeats "\n", which the stream strips)
    path = build_tiny_model(tmp_path_factory.mktemp("serve-tiny"), smol_tokenizer_dir, tie=False)
    eng = HFEngine(str(path), precision="fp32")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_server(hf_engine):
    with serve(hf_engine, limits=Limits(max_tokens_limit=64, queue_size=16)) as srv:
        yield srv


def test_models_and_health(hf_server):
    models = client(hf_server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(hf_server).models.retrieve("tiny").id == "tiny"
    status, _, body = raw(hf_server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_chat_completion_shape_usage_and_max_tokens(hf_server, hf_engine):
    r = client(hf_server).chat.completions.create(model="tiny", messages=HI, max_tokens=5, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny" and r.created > 0
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"  # a random model does not end its turn within 5 tokens
    assert r.usage.completion_tokens == 5
    tok = hf_engine.tokenizer
    prompt_ids = tok(tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    assert r.usage.prompt_tokens == len(prompt_ids["input_ids"]) and r.usage.total_tokens == r.usage.prompt_tokens + 5
    # max_completion_tokens (the newer name) means the same
    r2 = client(hf_server).chat.completions.create(model="tiny", messages=HI, max_completion_tokens=3, temperature=0)
    assert r2.usage.completion_tokens == 3


def test_streaming_matches_non_streaming_and_ends_with_done(hf_server):
    c = client(hf_server)
    whole = c.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0)
    chunks = list(c.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    # on the wire: SSE events, the last one `data: [DONE]`
    status, headers, body = raw(hf_server, "POST", "/v1/chat/completions",
                                {"model": "tiny", "messages": HI, "max_tokens": 4, "stream": True})
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings_cut_the_answer(hf_server):
    c = client(hf_server)
    free = c.chat.completions.create(model="tiny", messages=HI, max_tokens=30, temperature=0).choices[0].message.content
    stop = free[len(free) // 2:len(free) // 2 + 3]
    assert stop.strip(), free
    r = c.chat.completions.create(model="tiny", messages=HI, max_tokens=30, temperature=0, stop=[stop, "@@never@@"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == free[:free.index(stop)].strip()
    streamed = c.chat.completions.create(model="tiny", messages=HI, max_tokens=30, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == r.choices[0].message.content


def test_seed_and_temperature_zero_are_deterministic(hf_server):
    c = client(hf_server)

    def ask(**kw):
        return c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, **kw).choices[0].message.content

    assert ask(temperature=0) == ask(temperature=0, seed=123)
    assert ask(temperature=1.0, seed=7) == ask(temperature=1.0, seed=7)
    sampled = {ask(temperature=1.0, seed=s) for s in (1, 2)}
    assert len(sampled) > 1  # the seed really reaches the sampler


def test_eight_parallel_streams(hf_server):
    prompts = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(8)]
    c = client(hf_server)
    expected = [c.chat.completions.create(model="tiny", messages=p, max_tokens=4, temperature=0)
                .choices[0].message.content for p in prompts]
    results: dict[int, tuple[str, str | None]] = {}

    def one(i):
        text, finish = "", None
        for ch in client(hf_server).chat.completions.create(model="tiny", messages=prompts[i], max_tokens=4,
                                                            temperature=0, stream=True):
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
        results[i] = (text, finish)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8))
    assert [results[i][0] for i in range(8)] == expected
    assert all(results[i][1] in ("stop", "length") for i in range(8))


def test_over_long_prompt_is_400_context_length_exceeded(hf_server):
    long = [{"role": "user", "content": "word " * 5000}]  # the tiny model's context is 4096 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client(hf_server).chat.completions.create(model="tiny", messages=long, max_tokens=4)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    # a prompt that fits but leaves less room than max_tokens asks for is refused too
    fits = [{"role": "user", "content": "word " * 4040}]
    with pytest.raises(openai.BadRequestError, match="max_tokens asks for 64"):
        client(hf_server).chat.completions.create(model="tiny", messages=fits, max_tokens=64)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, smol_tokenizer_dir):
    """The tiny random Llama as an f32 GGUF, for the llama.cpp engine."""
    pytest.importorskip("xllamacpp")
    from conftest import build_tiny_model

    from tunewise.export.gguf import convert

    d = tmp_path_factory.mktemp("serve-gguf")
    return convert(build_tiny_model(d / "hf", smol_tokenizer_dir, tie=False), d / "tiny-f32.gguf", "f32")


def test_a_tunewise_run_is_served_with_its_adapter_under_its_directory_name(tmp_path, smol_tokenizer_dir):
    """`tunewise serve RUN`: a LoRA run (base + adapter) on llama.cpp answers as the run's HF
    reference does (adapter unmerged), not as its base model, under the run directory's name."""
    pytest.importorskip("xllamacpp")
    import torch
    from conftest import build_tiny_model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunewise.commands.serve import default_model_name
    from tunewise.infer import open_engine
    from tunewise.infer.hf import HFEngine

    base = build_tiny_model(tmp_path / "base", smol_tokenizer_dir, tie=False)
    run = tmp_path / "runs" / "notices"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation, which changes nothing
        for n, prm in model.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.5)
    model.save_pretrained(run / "adapter")
    (run / "adapter" / "tunewise_base.json").write_text(json.dumps({"base_model": str(base)}))
    (run / "summary.json").write_text(json.dumps({"steps": 3, "final_loss": 1.0, "seconds": 1.0}))

    q = [{"role": "user", "content": "Name three colours."}]
    want = HFEngine(str(run), precision="fp32").generate([Request(q, max_tokens=8)])[0].text
    base_says = HFEngine(str(base), precision="fp32").generate([Request(q, max_tokens=8)])[0].text
    assert want != base_says  # the adapter matters
    name = default_model_name(str(run))
    assert name == "notices"
    with serve(lambda: open_engine(str(run), engine="llama.cpp", precision="f32"), name=name) as srv:
        wait_for(lambda: raw(srv, "GET", "/health")[0] == 200, 120)
        c = client(srv)
        assert [m.id for m in c.models.list().data] == ["notices"]
        r = c.chat.completions.create(model="notices", messages=q, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == want


def test_llamacpp_over_long_prompt_is_400_context_length_exceeded(tiny_gguf):
    from tunewise.infer.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(str(tiny_gguf), n_parallel=2, ctx_per_request=512)
    assert eng.n_ctx == 512  # per request: the KV cache holds n_parallel of them
    with serve(eng, limits=Limits(max_tokens_limit=64)) as srv:
        short = [{"role": "user", "content": "word " * 20}]
        r = client(srv).chat.completions.create(model="tiny", messages=short, max_tokens=3, temperature=0)
        assert r.usage.prompt_tokens == eng.count_tokens(short) and r.usage.completion_tokens == 3
        n_short = r.usage.prompt_tokens
        with pytest.raises(openai.BadRequestError) as e:
            client(srv).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 600}],
                                                max_tokens=4)
        assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
        assert "holds 512 tokens" in e.value.message
        # fits, but leaves 10 tokens where max_tokens asks for 11: refused before reaching llama.cpp
        fits = [{"role": "user", "content": "word " * (20 + 512 - 10 - n_short)}]
        assert eng.count_tokens(fits) == 502
        with pytest.raises(openai.BadRequestError, match="max_tokens asks for 11"):
            client(srv).chat.completions.create(model="tiny", messages=fits, max_tokens=11)
        # without max_tokens the answer gets the room that is left
        r = client(srv).chat.completions.create(model="tiny", messages=fits, temperature=0)
        assert r.usage.prompt_tokens == 502 and r.usage.completion_tokens <= 10


def test_malformed_requests_get_openai_shaped_4xx(hf_server):
    c = client(hf_server)
    cases = [
        (dict(model="tiny", messages=HI, max_tokens=-1), 400, "max_tokens"),
        (dict(model="tiny", messages=HI, max_tokens=0), 400, "max_tokens"),
        (dict(model="tiny", messages=HI, max_tokens=65), 400, "max_tokens"),  # over --max-tokens-limit
        (dict(model="tiny", messages=[]), 400, "messages"),
        (dict(model="tiny", messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
        (dict(model="tiny", messages=HI, temperature=3), 400, "temperature"),
        (dict(model="tiny", messages=HI, stop=["a", "b", "c", "d", "e"]), 400, "stop"),
        (dict(model="tiny", messages=HI, n=2), 400, "n"),
    ]
    for kwargs, status, param in cases:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(**kwargs)
        assert e.value.status_code == status and e.value.body["param"] == param, kwargs
        assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.code == "model_not_found" and "tiny" in e.value.message
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")

    status, _, body = raw(hf_server, "POST", "/v1/chat/completions", data=b'{"model": "tiny", "messages": [')
    assert status == 400 and error_of(status, body)["code"] == "invalid_json"
    status, _, body = raw(hf_server, "POST", "/v1/chat/completions", data=b"[1, 2]")
    assert status == 400 and error_of(status, body)["type"] == "invalid_request_error"
    status, _, body = raw(hf_server, "POST", "/v1/chat/completions", {"messages": HI})
    assert status == 400 and error_of(status, body)["param"] == "model"
    status, _, body = raw(hf_server, "GET", "/v1/completions")
    assert status == 404 and error_of(status, body)["code"] == "not_found"


def test_oversized_body_is_413(hf_server):
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    status, _, body = raw(hf_server, "POST", "/v1/chat/completions", big)
    assert status == 413 and error_of(status, body)["code"] == "request_too_large"


def test_hf_generation_is_cancelled_when_a_stream_client_disconnects(hf_engine):
    """The slot comes back when the client leaves, and the model stops decoding for nobody."""
    steps = []
    hook = hf_engine.hf_model.register_forward_hook(lambda *a: steps.append(1))
    try:
        with serve(hf_engine, limits=Limits(max_tokens_limit=4000)) as srv:
            stream = client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=4000,
                                                         temperature=0, stream=True)
            for i, _ in enumerate(stream):
                if i == 3:
                    break
            stream.close()
            wait_for(lambda: metric(srv, "tunewise_requests_running") == 0)
            stopped_at = len(steps)
            # the engine is free for the next request at once
            r = client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=3, temperature=0)
            assert r.usage.completion_tokens == 3
    finally:
        hook.remove()
    assert 3 <= stopped_at < 1000  # decoding stopped long before the 4000 tokens asked for


# --- HTTP behaviour with a scripted engine ------------------------------------------------------


def test_full_queue_answers_429_with_retry_after_never_hangs():
    eng = ScriptedEngine()
    eng.go.clear()  # every generation waits until the test lets it go
    with serve(eng, limits=Limits(max_tokens_limit=64, queue_size=1)) as srv:
        answers = []

        def ask():
            r = client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            answers.append(r.choices[0].message.content)

        first = threading.Thread(target=ask)
        first.start()
        wait_for(lambda: eng.started == 1)
        second = threading.Thread(target=ask)
        second.start()
        wait_for(lambda: metric(srv, "tunewise_requests_waiting") == 1)
        assert metric(srv, "tunewise_requests_running") == 1

        start = time.monotonic()
        with pytest.raises(openai.RateLimitError) as e:
            client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=2)
        assert time.monotonic() - start < 5
        assert e.value.status_code == 429 and int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.code == "queue_full"

        eng.go.set()
        first.join(30)
        second.join(30)
        assert answers == ["w0 w1", "w0 w1"]
        text = raw(srv, "GET", "/metrics")[2].decode()
        assert 'tunewise_requests_total{path="/v1/chat/completions",status="429"} 1' in text
        assert 'tunewise_requests_total{path="/v1/chat/completions",status="200"} 2' in text


def test_a_request_that_waits_too_long_gets_503_with_retry_after():
    eng = ScriptedEngine()
    eng.go.clear()
    with serve(eng, limits=Limits(max_tokens_limit=64, queue_size=4, queue_timeout_s=0.3)) as srv:
        holder = threading.Thread(target=lambda: client(srv).chat.completions.create(
            model="tiny", messages=HI, max_tokens=1))
        holder.start()
        wait_for(lambda: eng.started == 1)
        with pytest.raises(openai.InternalServerError) as e:
            client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=1)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"]
        eng.go.set()
        holder.join(30)
        assert metric(srv, "tunewise_requests_waiting") == 0


def test_disconnect_mid_stream_frees_the_slot_and_closes_the_engine_stream():
    eng = ScriptedEngine(delay=0.005)
    with serve(eng, limits=Limits(max_tokens_limit=100_000, queue_size=0)) as srv:
        stream = client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=100_000, stream=True)
        for i, _ in enumerate(stream):
            if i == 5:
                break
        assert metric(srv, "tunewise_requests_running") == 1
        stream.close()
        wait_for(lambda: metric(srv, "tunewise_requests_running") == 0 and eng.active == 0, 10)
        assert eng.closed_early == 1
        # with no queue at all, the freed slot is what lets the next request in
        r = client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=3)
        assert r.choices[0].message.content == "w0 w1 w2"


def test_disconnect_while_waiting_for_a_non_streamed_answer_frees_the_slot():
    eng = ScriptedEngine(delay=0.005)
    with serve(eng, limits=Limits(max_tokens_limit=100_000)) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "tiny", "messages": HI, "max_tokens": 100_000}), headers={"Content-Type": "application/json"})
        wait_for(lambda: eng.active == 1)
        conn.close()
        wait_for(lambda: metric(srv, "tunewise_requests_running") == 0 and eng.active == 0, 10)
        assert eng.closed_early == 1


def test_a_client_that_leaves_the_queue_never_takes_a_slot():
    eng = ScriptedEngine()
    eng.go.clear()
    with serve(eng, limits=Limits(max_tokens_limit=64, queue_size=2)) as srv:
        holder = threading.Thread(target=lambda: client(srv).chat.completions.create(
            model="tiny", messages=HI, max_tokens=1))
        holder.start()
        wait_for(lambda: eng.started == 1)
        for stream in (False, True):
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": "tiny", "messages": HI, "max_tokens": 1, "stream": stream}),
                headers={"Content-Type": "application/json"})
            wait_for(lambda: metric(srv, "tunewise_requests_waiting") == 1)
            conn.close()
            wait_for(lambda: metric(srv, "tunewise_requests_waiting") == 0)
        eng.go.set()
        holder.join(30)
        wait_for(lambda: metric(srv, "tunewise_requests_running") == 0)
        assert eng.started == 1  # only the holder ever reached the engine


def test_health_is_503_loading_until_the_engine_is_loaded():
    may_load = threading.Event()

    def load():
        assert may_load.wait(30)
        return ScriptedEngine()

    with serve(load) as srv:
        status, headers, body = raw(srv, "GET", "/health")
        assert (status, json.loads(body)) == (503, {"status": "loading"}) and headers["retry-after"]
        with pytest.raises(openai.InternalServerError) as e:
            client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=1)
        assert e.value.status_code == 503 and e.value.code == "model_loading"
        assert metric(srv, "tunewise_ready") == 0
        may_load.set()
        wait_for(lambda: raw(srv, "GET", "/health")[0] == 200)
        assert client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=1).choices[0].message.content == "w0"


def test_a_model_that_fails_to_load_says_so():
    failures = []

    def load():
        raise TunewiseError("model path /nowhere does not exist", "check the path")

    with serve(load, on_load_failed=failures.append) as srv:
        wait_for(lambda: failures)
        status, _, body = raw(srv, "GET", "/health")
        assert status == 503 and json.loads(body) == {"status": "error", "message": "model path /nowhere does not exist"}
        with pytest.raises(openai.InternalServerError, match="failed to load"):
            client(srv).chat.completions.create(model="tiny", messages=HI, max_tokens=1)


def test_metrics_count_requests_tokens_and_latency():
    eng = ScriptedEngine()
    with serve(eng) as srv:
        c = client(srv)
        usage = [c.chat.completions.create(model="tiny", messages=HI, max_tokens=n).usage for n in (2, 3, 4)]
        list(c.chat.completions.create(model="tiny", messages=HI, max_tokens=5, stream=True))
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="other", messages=HI)
        text = raw(srv, "GET", "/metrics")[2].decode()
        assert 'tunewise_requests_total{path="/v1/chat/completions",status="200"} 4' in text
        assert 'tunewise_requests_total{path="/v1/chat/completions",status="404"} 1' in text
        assert metric(srv, "tunewise_generated_tokens_total") == 2 + 3 + 4 + 5
        assert metric(srv, "tunewise_prompt_tokens_total") == sum(u.prompt_tokens for u in usage) * 4 / 3
        assert metric(srv, "tunewise_request_duration_seconds_count") == 4
        assert 'tunewise_request_duration_seconds_bucket{le="+Inf"} 4' in text
        assert metric(srv, "tunewise_time_to_first_token_seconds_count") == 4
        assert metric(srv, "tunewise_slots") == 1 and metric(srv, "tunewise_requests_running") == 0


def test_engine_errors_are_http_errors_before_the_first_token_and_events_after():
    with serve(ScriptedEngine()) as srv:
        c = client(srv)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError, match="does not fit the context"):
                c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "too long"}],
                                          max_tokens=3, stream=stream)
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "crash"}], max_tokens=5)
        assert e.value.code == "engine_error" and "broke" not in e.value.message  # no internals leak
        got = []
        with pytest.raises(openai.APIError, match="RuntimeError"):
            for ch in c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "crash"}],
                                                max_tokens=5, stream=True):
                got.append(ch.choices[0].delta.content)
        assert got[:3] == ["", "w0 ", "w1 "]
        assert metric(srv, "tunewise_requests_running") == 0


def test_max_tokens_defaults_to_what_the_context_has_room_for():
    eng = ScriptedEngine(n_ctx=20)  # the prompt HI counts 5 tokens here
    with serve(eng, limits=Limits(max_tokens_limit=64)) as srv:
        r = client(srv).chat.completions.create(model="tiny", messages=HI)
        assert r.usage.completion_tokens == 15 and r.usage.prompt_tokens == 5


# --- security -----------------------------------------------------------------------------------


def test_only_loopback_without_an_api_key(monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "k")
    with pytest.raises(TunewiseError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_bind("0.0.0.0", None)
    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("TUNEWISE_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("flag") == "flag"
    with pytest.raises(TunewiseError, match="empty"):
        resolve_api_key(" ")


def test_cli_refuses_a_public_address_without_a_key(capsys, monkeypatch):
    from test_cli import run_cli

    monkeypatch.delenv("TUNEWISE_API_KEY", raising=False)
    code, out = run_cli(capsys, "serve", "smollm2-135m", "--host", "0.0.0.0", "--port", "0")
    assert code == 1 and "refusing to listen on 0.0.0.0 without an API key" in out and "Traceback" not in out
    assert "TUNEWISE_API_KEY" in out


def test_cli_speculation_is_checked_before_listening(capsys):
    from test_cli import run_cli

    code, out = run_cli(capsys, "serve", "smollm2-135m", "--port", "0", "--engine", "hf", "--speculative", "ngram")
    assert code == 1 and "--speculative ngram needs the llama.cpp engine, not hf" in out and "Traceback" not in out
    code, out = run_cli(capsys, "serve", "smollm2-135m", "--port", "0", "--speculative", "draft")
    assert code == 1 and "--speculative 'draft' is not known" in out


def test_api_key_is_required_and_never_logged(caplog, capsys):
    eng = ScriptedEngine()
    with caplog.at_level(logging.DEBUG):
        with serve(eng, api_key=KEY) as srv:
            for bad in ("wrong-key", KEY + "x", KEY[:-1]):
                with pytest.raises(openai.AuthenticationError) as e:
                    client(srv, bad).chat.completions.create(model="tiny", messages=HI, max_tokens=1)
                assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
            status, _, body = raw(srv, "POST", "/v1/chat/completions", {"model": "tiny", "messages": HI})
            assert status == 401 and error_of(status, body)["type"] == "invalid_request_error"
            with pytest.raises(openai.AuthenticationError):
                client(srv, "wrong-key").models.list()
            assert raw(srv, "GET", "/metrics")[0] == 401
            assert raw(srv, "GET", "/health")[0] == 200  # probes need no key
            r = client(srv, KEY).chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            assert r.choices[0].message.content == "w0 w1"
            assert metric(srv, "tunewise_requests_running", key=KEY) == 0
    out = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in out.out and KEY not in out.err


def test_cli_serves_prints_how_to_call_it_and_never_shows_the_key(tmp_path, smol_tokenizer_dir):
    """The real command in a subprocess: banner, ready line, requests, Ctrl-C; the key in no output."""
    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "my-model", smol_tokenizer_dir, tie=False)
    env = {**os.environ, "TUNEWISE_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunewise.cli", "serve", str(model), "--engine", "hf",
                             "--port", "0", "--max-tokens-limit", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("ready") for line in lines), 120)
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", "".join(lines)).group(1)
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="my-model", messages=HI, max_tokens=4)
        assert r.usage.completion_tokens == 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.send_signal(2)  # Ctrl-C
        proc.wait(30)
        reader.join(5)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "as model my-model" in text and "API key required" in text
    assert 'Authorization: Bearer $TUNEWISE_API_KEY' in text and '"model": "my-model"' in text
    assert re.search(r"ready: my-model on hf \((fp32|bf16)\), 1 slot", text)
    assert KEY not in text


# --- the embedded model through open_engine ----------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["hf", "llama.cpp"])
def test_e2e_embedded_model_served_through_open_engine(embedded_model, engine):
    import importlib.util

    from tunewise.infer import open_engine

    if engine == "llama.cpp" and importlib.util.find_spec("tunewise.infer.llamacpp") is None:
        pytest.skip("tunewise.infer.llamacpp is not there yet")
    with serve(lambda: open_engine(embedded_model, engine=engine), name=embedded_model,
               limits=Limits(max_tokens_limit=64)) as srv:
        wait_for(lambda: raw(srv, "GET", "/health")[0] == 200, 300)
        c = client(srv)
        q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        a = c.chat.completions.create(model=embedded_model, messages=q, max_tokens=16, temperature=0)
        b = c.chat.completions.create(model=embedded_model, messages=q, max_tokens=16, temperature=0, seed=1)
        assert "Paris" in a.choices[0].message.content and a.choices[0].message.content == b.choices[0].message.content
        assert a.choices[0].finish_reason == "stop"  # the model ends its turn by itself
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=embedded_model, messages=q, max_tokens=16, temperature=0, stream=True))
        assert text == a.choices[0].message.content


@pytest.mark.e2e
def test_e2e_identity_run_served_by_its_name_answers_with_its_new_identity(embedded_model, identity_run):
    """The run the e2e tests train, served as `tunewise serve RUN` serves it (default engine, its
    directory name): it answers with the name it was taught and ends its turn by itself."""
    from tunewise.commands.serve import default_model_name
    from tunewise.infer import open_engine

    ref = str(identity_run.output_dir)
    name = default_model_name(ref)
    with serve(lambda: open_engine(ref), name=name, limits=Limits(max_tokens_limit=128)) as srv:
        wait_for(lambda: raw(srv, "GET", "/health")[0] == 200, 600)
        r = client(srv).chat.completions.create(model=name, messages=[{"role": "user", "content": "Who are you?"}],
                                                max_tokens=128, temperature=0)
    assert "Zephyrine" in r.choices[0].message.content and r.choices[0].finish_reason == "stop", r
