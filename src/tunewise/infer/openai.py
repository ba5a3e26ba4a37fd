"""Any OpenAI-compatible endpoint (OpenAI, a hosted model, `tunewise serve`, vLLM, llama-server) as an
:class:`~tunewise.infer.types.Engine`, with the official ``openai`` client.

The key is read from the environment variable whose *name* is given (never passed or logged as a
value). ``generate`` sends up to ``concurrency`` requests at a time; the client retries 429/5xx
answers with backoff (``max_retries``) and honours ``Retry-After``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Request


class OpenAIEngine:
    name = "openai"
    precision = "api"

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout_s: float = 60.0, max_retries: int = 2):
        import openai

        if concurrency < 1:
            raise TunewiseError(f"concurrency={concurrency} must be at least 1", "use concurrency >= 1")
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.concurrency = concurrency
        # Local servers often need no key; the client insists on one, so a placeholder stands in.
        key = os.environ.get(api_key_env) or "no-key"
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout_s, max_retries=max_retries)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai")

    def _args(self, request: Request) -> dict:
        args = {"model": self.model, "messages": request.messages, "max_tokens": request.max_tokens,
                "temperature": request.temperature}
        if request.top_p != 1.0:
            args["top_p"] = request.top_p
        if request.seed is not None:
            args["seed"] = request.seed
        if request.stop:
            args["stop"] = list(request.stop)
        return args

    def _fail(self, e: Exception) -> TunewiseError:
        import openai

        url = f"{self.base_url}/chat/completions"
        if isinstance(e, openai.APIStatusError):
            body = e.body if isinstance(e.body, dict) else {}
            err = body.get("error", body)  # the client hands over the "error" object or the whole body
            detail = err.get("message") if isinstance(err, dict) else None
            hint = {401: f"check the API key in ${self.api_key_env}", 403: f"check the API key in ${self.api_key_env}",
                    404: f"check base_url and the model name ({self.model})",
                    429: "the endpoint is rate-limiting: lower concurrency or try later"}.get(
                e.status_code, "check base_url, the model name and the API key")
            return TunewiseError(f"{url} answered HTTP {e.status_code}: {detail or e.message}"[:400], hint)
        if isinstance(e, openai.APITimeoutError):
            return TunewiseError(f"{url} did not answer in time", "raise the timeout or check the endpoint")
        if isinstance(e, openai.APIConnectionError):
            return TunewiseError(f"cannot reach {url}: {e.__cause__ or e}", "check base_url and the network")
        return TunewiseError(f"{url} failed: {type(e).__name__}: {e}"[:400], "is it an OpenAI-compatible API?")

    def _one(self, request: Request) -> Completion:
        import openai

        start = time.perf_counter()
        try:
            resp = self._client.chat.completions.create(**self._args(request))
        except openai.OpenAIError as e:
            raise self._fail(e) from None
        seconds = time.perf_counter() - start
        if not resp.choices:
            raise TunewiseError(f"{self.base_url}/chat/completions answered without choices", "is it OpenAI-compatible?")
        choice = resp.choices[0]
        usage = resp.usage
        return Completion(text=(choice.message.content or "").strip(),
                          input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                          output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                          finish_reason="length" if choice.finish_reason == "length" else "stop",
                          seconds=seconds, engine=self.name)

    def generate(self, requests: Sequence[Request],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        futures = [self._pool.submit(self._one, r) for r in requests]
        out: list[Completion] = []
        try:
            for i, f in enumerate(futures):
                out.append(f.result())
                if on_result is not None:
                    on_result(i, out[-1])
        finally:
            for f in futures:
                f.cancel()
        return out

    def stream(self, request: Request) -> Iterator[str | Completion]:
        import openai

        start, ttft, text, reason, usage = time.perf_counter(), None, [], None, None
        try:
            chunks = self._client.chat.completions.create(**self._args(request), stream=True,
                                                          stream_options={"include_usage": True})
            with chunks:
                for chunk in chunks:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        reason = choice.finish_reason or reason
                        piece = choice.delta.content if choice.delta else None
                        if not text and piece:
                            piece = piece.lstrip()
                        if piece:
                            ttft = ttft if ttft is not None else time.perf_counter() - start
                            text.append(piece)
                            yield piece
        except openai.OpenAIError as e:
            raise self._fail(e) from None
        yield Completion(text="".join(text).strip(), input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                         output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                         finish_reason="length" if reason == "length" else "stop",
                         seconds=time.perf_counter() - start, ttft_s=ttft, engine=self.name)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
