"""Calls to any OpenAI-compatible chat endpoint (a hosted API, tunewise serve, llama.cpp, vLLM,
Ollama) through the ``openai`` client, with its own retries turned off: this module retries 429,
408, 409, 5xx, timeouts and dropped connections with exponential backoff and jitter, waits what a
``Retry-After`` / ``retry-after-ms`` header asks (up to ``max_wait_s``), and counts every retry for
the report. Completed replies go through the request-keyed cache, so a rerun never pays twice."""

from __future__ import annotations

import contextlib
import email.utils
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse, urlunparse

from tunewise.data.synth.cache import ReplyCache, request_key
from tunewise.errors import TunewiseError

RETRY_STATUSES = {408, 409, 429}
FATAL_STATUSES = {401, 403, 404}


class RequestFailed(Exception):
    """A request that failed for good (after retries, or a 4xx that retrying cannot fix)."""


@dataclass
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None
    cached: bool


@dataclass
class CallStats:
    calls: int = 0  # HTTP requests sent (retries included)
    cached: int = 0  # replies served from the cache
    retries: int = 0
    rate_limited: int = 0  # 429 responses
    waited_s: float = 0.0  # time slept before retries
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items() if not k.startswith("_")}


def retry_after_s(headers) -> float | None:
    """Seconds a response asks the client to wait (``retry-after-ms``, ``retry-after`` in seconds or
    as an HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: a uniform draw in [½, 1] of ``base · 2^attempt`` (capped)."""
    return min(cap_s, base_s * 2 ** attempt) * (0.5 + 0.5 * rng.random())


def estimate_tokens(text: str) -> int:
    """About four characters a token (used when a server reports no usage)."""
    return max(1, len(text) // 4)


#: tokens a chat template may add around each message (role markers, separators), at most
TEMPLATE_TOKENS_PER_MESSAGE = 8


def max_prompt_tokens(messages: list[dict]) -> int:
    """An upper bound on a request's prompt tokens whatever the tokenizer: a byte-level BPE token
    covers at least one UTF-8 byte, so a text never takes more tokens than it has bytes (Chinese,
    Hindi, emoji: 3-4 bytes a character), plus the template's markers. What ``--max-cost`` reserves,
    so that the budget holds for any language; the reply's real count replaces it when settled."""
    return sum(len(str(m.get("content", "")).encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)


def public_endpoint(endpoint: str) -> str:
    """The endpoint as shown and recorded: no user:password, no query string (keys sometimes travel there)."""
    u = urlparse(endpoint)
    host = u.hostname or ""
    netloc = host + (f":{u.port}" if u.port else "")
    return urlunparse((u.scheme, netloc, u.path, "", "", ""))


class ChatClient:
    """``complete(messages, **sampling)`` → :class:`Reply`, cached by the full request."""

    def __init__(self, endpoint: str, model: str, cache: ReplyCache, *, api_key: str | None = None,
                 max_attempts: int = 6, base_s: float = 1.0, cap_s: float = 60.0, max_wait_s: float = 600.0,
                 timeout_s: float = 600.0, sleep: Callable[[float], None] = time.sleep, seed: int = 0,
                 max_in_flight: int | None = None):
        import openai

        self.endpoint = public_endpoint(endpoint)  # what messages, the cache and records show
        # at most this many requests sent and not yet answered, however many threads call (backoff waits
        # do not hold a place)
        self._in_flight = threading.BoundedSemaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()
        self.model = model
        self.cache = cache
        self.max_attempts = max_attempts
        self.base_s, self.cap_s, self.max_wait_s = base_s, cap_s, max_wait_s
        self.sleep = sleep
        self.stats = CallStats()
        self._rng = random.Random(seed)
        self._openai = openai
        # The key goes to the client only; it is never logged, cached or recorded.
        self._client = openai.OpenAI(base_url=endpoint, api_key=api_key or "no-key", max_retries=0, timeout=timeout_s)

    def request(self, messages: list[dict], *, max_tokens: int, temperature: float, top_p: float, seed: int) -> dict:
        """The full request as cached and recorded (no credentials)."""
        return {"endpoint": self.endpoint, "model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed}

    def cached(self, request: dict) -> dict | None:
        return self.cache.get(request_key(request))

    def complete(self, request: dict, before_call: Callable[[], None] | None = None) -> Reply:
        """The reply to ``request``: from the cache, or from the endpoint (then cached)."""
        key = request_key(request)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.add(cached=1)
            return Reply(hit["text"], hit["input_tokens"], hit["output_tokens"], hit.get("finish_reason"), cached=True)
        if before_call is not None:
            before_call()
        reply = self._call(request)
        self.cache.put(key, {"text": reply.text, "input_tokens": reply.input_tokens,
                             "output_tokens": reply.output_tokens, "finish_reason": reply.finish_reason})
        return reply

    def _call(self, request: dict) -> Reply:
        openai = self._openai
        last = ""
        for attempt in range(self.max_attempts):
            self.stats.add(calls=1)
            try:
                with self._in_flight:
                    resp = self._client.chat.completions.create(
                        model=request["model"], messages=request["messages"], max_tokens=request["max_tokens"],
                        temperature=request["temperature"], top_p=request["top_p"], seed=request["seed"])
            except openai.APIStatusError as e:
                status = e.status_code
                if status in FATAL_STATUSES:
                    raise TunewiseError(
                        f"{self.endpoint} answered HTTP {status} for model {self.model!r}: {_short(e)}",
                        "check --endpoint, --model and the API key variable (--api-key-env)") from None
                if status not in RETRY_STATUSES and status < 500:
                    self.stats.add(failed=1)
                    raise RequestFailed(f"HTTP {status}: {_short(e)}") from None
                if status == 429:
                    self.stats.add(rate_limited=1)
                wait = retry_after_s(e.response.headers)
                last = f"HTTP {status}"
                if wait is not None and wait > self.max_wait_s:
                    self.stats.add(failed=1)
                    raise RequestFailed(f"HTTP {status} with Retry-After {wait:.0f}s (over {self.max_wait_s:.0f}s)") from None
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                wait, last = None, f"{type(e).__name__}: {_short(e)}"
            else:
                choice = resp.choices[0] if resp.choices else None
                text = (choice.message.content if choice and choice.message else None) or ""
                usage = resp.usage
                prompt_chars = sum(len(str(m.get("content", ""))) for m in request["messages"])
                return Reply(
                    text=text,
                    input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0) or estimate_tokens("x" * prompt_chars),
                    output_tokens=int(getattr(usage, "completion_tokens", 0) or 0) or estimate_tokens(text),
                    finish_reason=choice.finish_reason if choice else None, cached=False)
            if attempt + 1 == self.max_attempts:
                break
            delay = wait if wait is not None else backoff_s(attempt, self.base_s, self.cap_s, self._rng)
            self.stats.add(retries=1, waited_s=delay)
            self.sleep(delay)
        self.stats.add(failed=1)
        raise RequestFailed(f"{last} after {self.max_attempts} attempts")

    def close(self) -> None:
        self._client.close()


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("…" if len(text) > 200 else "")
