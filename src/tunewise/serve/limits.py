"""What keeps `tunewise serve` safe by default: where it may listen, who may call it, how large a
request may be, how many may run and wait at once, and the OpenAI-shaped errors it answers with.

- It listens on 127.0.0.1 unless told otherwise; any other address needs an API key
  (``--api-key`` or ``TUNEWISE_API_KEY``). Keys are compared in constant time and never printed.
- A request body over ``max_body_bytes`` gets 413; ``max_tokens`` over ``max_tokens_limit`` gets 400.
- ``SlotGate``: at most ``slots`` requests generate at once, at most ``queue_size`` wait for a slot;
  the next one gets 429 with ``Retry-After`` at once, and one that waits longer than
  ``queue_timeout_s`` gets 503 with ``Retry-After``: a client never hangs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from dataclasses import dataclass

from tunewise.errors import TunewiseError

API_KEY_ENV = "TUNEWISE_API_KEY"
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # 1 MiB: far more than any chat prompt a small model can read
    max_tokens_limit: int = 1024  # the most new tokens one request may ask for
    queue_size: int = 16  # requests that may wait for a slot; the next one gets 429
    queue_timeout_s: float = 120.0  # a request that waited this long for a slot gets 503
    retry_after_s: int = 1  # what Retry-After says on 429/503

    def __post_init__(self):
        for name in ("max_body_bytes", "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise TunewiseError(f"{name} must be at least 1 (got {getattr(self, name)})",
                                    "pass a positive number")
        if self.queue_size < 0:
            raise TunewiseError(f"queue_size must be 0 or more (got {self.queue_size})",
                                "pass --queue 0 to refuse every request that finds all slots busy")


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(flag: str | None) -> str | None:
    """The key from ``--api-key``, else from the environment; None when neither is set."""
    key = flag if flag is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise TunewiseError("the API key is empty", f"pass --api-key KEY or set {API_KEY_ENV} to a non-empty secret")
    return key


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if api_key is None and not is_loopback(host):
        raise TunewiseError(
            f"refusing to listen on {host} without an API key: anyone who can reach this address "
            "could use the model",
            f"set {API_KEY_ENV} (or pass --api-key KEY) and have clients send it as "
            "`Authorization: Bearer KEY`; or keep the default --host 127.0.0.1",
        )


def check_auth(authorization: str | None, api_key: str | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <api_key>`` (constant-time comparison)."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, api_key.encode()):
        raise ApiError(401, "Incorrect or missing API key: send it as `Authorization: Bearer KEY`.",
                       code="invalid_api_key")


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, refusing (413) one larger than ``max_bytes`` before and while reading it."""
    too_large = ApiError(413, f"The request body is larger than the server's limit of {max_bytes} bytes.",
                         code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class QueueFull(ApiError):
    def __init__(self, message: str, status: int, retry_after_s: int):
        super().__init__(status, message, type="server_error" if status == 503 else "rate_limit_error",
                         code="queue_full" if status == 429 else "queue_timeout",
                         headers={"Retry-After": str(retry_after_s)})


class SlotGate:
    """At most ``slots`` holders at once and at most ``queue_size`` waiters; lives on one event loop.

    ``acquire`` raises :class:`QueueFull` (429) when the queue is full and (503) when the wait
    timed out; ``release`` must follow every successful ``acquire``.
    """

    def __init__(self, slots: int, limits: Limits):
        if slots < 1:
            raise TunewiseError(f"the server needs at least one slot (got {slots})", "pass --parallel 1 or more")
        self.slots, self.limits = slots, limits
        self._sem = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0

    async def acquire(self) -> None:
        retry = self.limits.retry_after_s
        if self.running >= self.slots and self.waiting >= self.limits.queue_size:
            raise QueueFull(f"The server is busy ({self.running} requests running, {self.waiting} waiting); "
                            f"retry after {retry} s.", 429, retry)
        self.waiting += 1
        try:
            async with asyncio.timeout(self.limits.queue_timeout_s):  # cancels the wait cleanly
                await self._sem.acquire()
        except TimeoutError:
            raise QueueFull(f"No slot became free within {self.limits.queue_timeout_s:g} s; "
                            f"retry after {retry} s.", 503, retry) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._sem.release()
