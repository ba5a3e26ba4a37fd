"""Shared fixtures: an isolated tunewise home per test, the real SmolLM2 tokenizer, a tiny random
Llama built from a config (fast), and the real embedded model for tests marked ``e2e``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def tunewise_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own TUNEWISE_HOME so nothing touches the user's cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TUNEWISE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The peer datasets in ../shared/data (LLaMA-Factory demo files)."""
    path = SHARED_DATA / "llamafactory"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer and chat template, read once from the embedded GGUF."""
    from transformers import AutoTokenizer

    from tunewise.models import EMBEDDED_MODELS, embedded_gguf_path

    gguf = embedded_gguf_path(EMBEDDED_MODELS["smollm2-135m"])
    out = tmp_path_factory.mktemp("smol-tokenizer")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))


def build_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2, tie: bool = True) -> Path:
    """A random Llama (2 layers, hidden 64) with the real tokenizer, saved as a HF directory.

    With tied embeddings greedy decoding repeats the prompt's last token ("\n" after a chat
    template); ``tie=False`` gives a random output layer, hence varied text."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """Path to a tiny random Llama HF directory (session-wide; treat it as read-only)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer_dir)


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory) -> Path:
    """A tunewise home holding the converted embedded model (converted once per test session)."""
    import os

    home = tmp_path_factory.mktemp("embedded-home")
    old = os.environ.get("TUNEWISE_HOME")
    os.environ["TUNEWISE_HOME"] = str(home)
    try:
        from tunewise.models import resolve_model

        resolve_model("smollm2-135m")
    finally:
        if old is None:
            os.environ.pop("TUNEWISE_HOME", None)
        else:
            os.environ["TUNEWISE_HOME"] = old
    return home


@pytest.fixture(scope="session")
def identity_run(embedded_home, shared_data, tmp_path_factory):
    """The embedded model taught a new identity (LoRA on LLaMA-Factory's identity data, name
    Zephyrine, author Acme Labs), trained once per test session; treat the run as read-only."""
    import os

    from train_helpers import train_identity_run

    old = os.environ.get("TUNEWISE_HOME")
    os.environ["TUNEWISE_HOME"] = str(embedded_home)
    try:
        return train_identity_run("smollm2-135m", shared_data, tmp_path_factory.mktemp("identity"))
    finally:
        if old is None:
            os.environ.pop("TUNEWISE_HOME", None)
        else:
            os.environ["TUNEWISE_HOME"] = old


@pytest.fixture
def embedded_model(embedded_home, monkeypatch) -> str:
    """Use in e2e tests: points TUNEWISE_HOME at the converted embedded model; returns its name."""
    monkeypatch.setenv("TUNEWISE_HOME", str(embedded_home))
    return "smollm2-135m"


class FakeOpenAI:
    """A tiny OpenAI-compatible /v1/chat/completions server on 127.0.0.1 that records requests.

    Answers ``reply`` with usage 30 in / 5 out, or ``{"error": {"message": "bad key"}}`` with
    ``status``; a request with ``"stream": true`` gets the reply as SSE chunks (one per word), a
    usage chunk and ``[DONE]``."""

    def __init__(self, reply: str = "Score: 4\nGood.", status: int = 200):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, ctype: str, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                usage = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
                base = {"id": "c1", "created": 0, "model": body.get("model", "")}
                if status != 200:
                    return self._send(status, "application/json", json.dumps({"error": {"message": "bad key"}}).encode())
                if body.get("stream"):
                    words = reply.split(" ")
                    chunks = [{"choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w},
                                            "finish_reason": None}]} for i, w in enumerate(words)]
                    chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                               {"choices": [], "usage": usage}]
                    sse = "".join(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', **c})}\n\n"
                                  for c in chunks) + "data: [DONE]\n\n"
                    return self._send(200, "text/event-stream", sse.encode())
                data = {**base, "object": "chat.completion", "usage": usage, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}
                self._send(200, "application/json", json.dumps(data).encode())

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()
