"""The OpenAI-compatible HTTP API over one :class:`~tunewise.infer.types.Engine`.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (JSON, or SSE
chunks ending in ``data: [DONE]`` with ``"stream": true``), ``GET /health`` (503 while the model
loads) and ``GET /metrics`` (Prometheus text).

Engines are blocking, so each request's generation runs in its own worker thread and reaches the
event loop through a queue. A request holds one of the :class:`~tunewise.serve.limits.SlotGate`'s
slots from before its worker starts until the worker has finished: a client that disconnects makes
the worker close the engine's stream (which cancels the generation in engines that support it) and
the slot is free again once the engine has stopped, so the slot count never over-promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable

from jinja2 import TemplateError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Engine, Request
from tunewise.serve.limits import ApiError, Limits, SlotGate, check_auth, read_body
from tunewise.serve.metrics import Metrics

log = logging.getLogger("tunewise.serve")

CHAT_PATH = "/v1/chat/completions"
ROLES = {"system", "developer", "user", "assistant"}
MAX_STOPS = 4  # as OpenAI's API


# ---------------------------------------------------------------------------------------------
# Parsing a chat request
# ---------------------------------------------------------------------------------------------


@dataclass
class ChatCall:
    request: Request
    stream: bool
    include_usage: bool
    max_tokens_given: bool


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{key}' must be a number (got {json.dumps(value)}).", key, "invalid_type")
    if value > high or value < low or (low_open and value == low):
        side = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise _bad(f"'{key}' must be {side} and at most {high:g} (got {value}).", key, "invalid_value")
    return float(value)


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones can be read by a text model
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content: only text parts are supported "
                           "({\"type\": \"text\", \"text\": ...}).", f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts.", f"messages[{i}].content")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects.", "messages",
                   "missing_required_parameter" if messages is None else "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'.", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))} (got {json.dumps(role)}).",
                       f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return out


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings.", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise _bad(f"'stop' may hold at most {MAX_STOPS} strings (got {len(stops)}).", "stop", "invalid_value")
    return tuple(stops)


def _max_tokens(body: dict, limit: int) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer (got {json.dumps(value)}).", key, "invalid_type")
    if value < 1:
        raise _bad(f"'{key}' must be at least 1 (got {value}).", key, "invalid_value")
    if value > limit:
        raise _bad(f"'{key}' is {value}, over this server's limit of {limit} "
                   "(the operator sets it with --max-tokens-limit).", key, "invalid_value")
    return value


def _refuse_unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise _bad("Only n=1 is supported.", "n", "unsupported_value")
    for key in ("tools", "functions"):
        if body.get(key):
            raise _bad(f"'{key}' are not supported by this server (a plain chat model).", key, "unsupported_parameter")
    if body.get("logprobs"):
        raise _bad("'logprobs' is not supported by this server.", "logprobs", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _bad("Only response_format {\"type\": \"text\"} is supported.", "response_format", "unsupported_value")


def parse_chat(raw: bytes, served: str, limits: Limits) -> ChatCall:
    """Validate a ``/v1/chat/completions`` body; every problem is an :class:`ApiError` (400 or 404)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"The request body is not valid JSON: {e}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: use the name this server lists at /v1/models.", "model",
                   "missing_required_parameter")
    if model != served:
        raise ApiError(404, f"The model '{model}' does not exist on this server; it serves '{served}'.",
                       param="model", code="model_not_found")
    _refuse_unsupported(body)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false.", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise _bad("'stream_options' is an object and only allowed with \"stream\": true.", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"'seed' must be an integer (got {json.dumps(seed)}).", "seed", "invalid_type")
    max_tokens = _max_tokens(body, limits.max_tokens_limit)
    request = Request(
        messages=_messages(body),
        max_tokens=max_tokens or limits.max_tokens_limit,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=seed,
        stop=_stops(body),
    )
    return ChatCall(request, stream, bool((options or {}).get("include_usage")), max_tokens is not None)


# ---------------------------------------------------------------------------------------------
# The model's context
# ---------------------------------------------------------------------------------------------


def context_length(engine: Engine) -> int | None:
    """How many tokens the engine's context holds (prompt and answer), when it can tell."""
    n = getattr(engine, "n_ctx", None)
    if isinstance(n, int) and n > 0:
        return n
    config = getattr(getattr(engine, "hf_model", None), "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def prompt_tokens(engine: Engine, messages: list[dict]) -> int | None:
    """The prompt's length in tokens with the model's chat template, when the engine can tell."""
    count = getattr(engine, "count_tokens", None)
    if callable(count):
        return int(count(messages))
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        return None
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def fit_to_context(call: ChatCall, n_prompt: int | None, n_ctx: int | None) -> Request:
    """The request with ``max_tokens`` fitted to the context; 400 when the prompt does not fit."""
    if n_prompt is None or n_ctx is None:
        return call.request
    room = n_ctx - n_prompt
    wanted = call.request.max_tokens
    if room < 1 or (call.max_tokens_given and wanted > room):
        raise ApiError(400, f"This model's context holds {n_ctx} tokens, but the messages take {n_prompt} tokens"
                            + (f" and max_tokens asks for {wanted} more." if room >= 1 else "."),
                       param="messages", code="context_length_exceeded")
    return replace(call.request, max_tokens=room) if wanted > room else call.request


# ---------------------------------------------------------------------------------------------
# Running the engine in a worker thread
# ---------------------------------------------------------------------------------------------


class EngineRun:
    """``engine.stream(request)`` in a worker thread; its pieces come out on the event loop.

    ``cancel()`` makes the worker close the engine's stream at the next piece; ``on_end`` is called
    on the event loop once the worker has finished (that is when the slot is free again).
    """

    def __init__(self, engine: Engine, request: Request, on_end: Callable[[], None]):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self._on_end = on_end
        self.started = time.perf_counter()
        self.first_piece_s: float | None = None
        threading.Thread(target=self._work, args=(engine, request), daemon=True, name="tunewise-serve-gen").start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self, engine: Engine, request: Request) -> None:
        stream = None
        try:
            stream = engine.stream(request)
            for item in stream:
                if self._cancelled.is_set():
                    break
                self._put(("item", item))
        except BaseException as e:  # handed to the request's coroutine
            self._put(("error", e))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # a generator's close cancels generation in engines that support it
            self._put(("end", None))
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_end)

    async def items(self) -> AsyncIterator[str | Completion]:
        """Text pieces, then the Completion; an engine failure is raised here."""
        while True:
            kind, item = await self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            if self.first_piece_s is None:
                self.first_piece_s = time.perf_counter() - self.started
            yield item


def _engine_failure(e: BaseException) -> ApiError:
    if isinstance(e, TunewiseError):
        return ApiError(400, e.message + (f" ({e.hint})" if e.hint else ""))
    log.error("generation failed: %s: %s", type(e).__name__, e)
    return ApiError(500, f"The engine failed: {type(e).__name__}.", type="server_error", code="engine_error")


class _SlotStreamingResponse(StreamingResponse):
    """A streaming response that cancels its generation however it ends (finished, client gone,
    or never started because the client left before the first byte)."""

    def __init__(self, content, run: EngineRun, **kwargs):
        super().__init__(content, **kwargs)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


class ServeState:
    """What the routes share: the engine once loaded, the slot gate, the metrics."""

    def __init__(self, model_name: str, limits: Limits, api_key: str | None, slots: int | None):
        self.model_name, self.limits, self.api_key, self.slots = model_name, limits, api_key, slots
        self.engine: Engine | None = None
        self.gate: SlotGate | None = None
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.created = int(time.time())

    def ready(self, engine: Engine) -> None:
        slots = self.slots or max(1, int(getattr(engine, "n_parallel", 1) or 1))
        self.gate = SlotGate(slots, self.limits)
        self.engine = engine

    def engine_or_503(self) -> Engine:
        if self.engine is None:
            if self.load_error:
                raise ApiError(503, f"The model failed to load: {self.load_error}", type="server_error",
                               code="model_load_failed")
            raise ApiError(503, "The model is still loading; retry shortly.", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        return self.engine


async def _disconnected(request: HttpRequest) -> None:
    """Returns when the client has gone (call once the body is read: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
            "total_tokens": c.input_tokens + c.output_tokens}


def create_app(engine: Engine | Callable[[], Engine], model_name: str, *, limits: Limits | None = None,
               api_key: str | None = None, slots: int | None = None,
               on_loaded: Callable[[Engine], None] | None = None,
               on_load_failed: Callable[[BaseException], None] | None = None) -> Starlette:
    """The ASGI app serving ``engine`` as ``model_name``.

    ``engine`` is a loaded Engine, or a function that loads one: it then runs in a thread at
    startup while ``/health`` answers 503 ``{"status": "loading"}``. ``slots`` (default: the
    engine's ``n_parallel``, else 1) is how many requests generate at once. With ``api_key`` every
    ``/v1`` route and ``/metrics`` need ``Authorization: Bearer <api_key>``.
    """
    state = ServeState(model_name, limits or Limits(), api_key, slots)

    async def load() -> None:
        try:
            loaded = engine if hasattr(engine, "stream") else await asyncio.to_thread(engine)
            state.ready(loaded)
        except BaseException as e:
            state.load_error = e.message if isinstance(e, TunewiseError) else f"{type(e).__name__}: {e}"
            log.error("loading the model failed: %s", state.load_error)
            if on_load_failed is not None:
                on_load_failed(e)
            if not isinstance(e, Exception):
                raise
            return
        if on_loaded is not None:
            on_loaded(state.engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(load())
        try:
            yield
        finally:
            task.cancel()
            if state.engine is not None:
                with contextlib.suppress(Exception):
                    state.engine.close()

    async def health(request: HttpRequest):
        if state.engine is not None:
            return JSONResponse({"status": "ok", "model": state.model_name})
        if state.load_error:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "tunewise"}

    async def models(request: HttpRequest):
        try:
            check_auth(request.headers.get("authorization"), state.api_key)
        except ApiError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: HttpRequest):
        try:
            check_auth(request.headers.get("authorization"), state.api_key)
            if request.path_params["model"] != state.model_name:
                raise ApiError(404, f"The model '{request.path_params['model']}' does not exist on this server.",
                               param="model", code="model_not_found")
        except ApiError as e:
            return error_response(e)
        return JSONResponse(model_card())

    async def metrics(request: HttpRequest):
        try:
            check_auth(request.headers.get("authorization"), state.api_key)
        except ApiError as e:
            return error_response(e)
        gate = state.gate
        text = state.metrics.render(gate.running if gate else 0, gate.waiting if gate else 0,
                                    gate.slots if gate else 0, state.engine is not None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def chat(request: HttpRequest):
        try:
            check_auth(request.headers.get("authorization"), state.api_key)
            eng = state.engine_or_503()
            call = parse_chat(await read_body(request, state.limits.max_body_bytes), state.model_name, state.limits)
            try:
                n_prompt = await asyncio.to_thread(prompt_tokens, eng, call.request.messages)
            except (TemplateError, ValueError) as e:  # the template refused them (e.g. roles out of order)
                raise _bad(f"The model's chat template cannot render these messages: {e}", "messages") from None
            req = fit_to_context(call, n_prompt, context_length(eng))
            if not await _slot_unless_gone(request):
                return PlainTextResponse("", status_code=499)  # the client left while queued
        except ApiError as e:
            return error_response(e)
        run = EngineRun(eng, req, state.gate.release)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if call.stream:
            # wait for the first piece so that an error before it (a prompt the engine refuses)
            # is still an HTTP error, not an event in a 200 stream
            pieces = run.items()
            try:
                first = await anext(pieces)
            except StopAsyncIteration:
                first = None
            except Exception as e:
                return error_response(_engine_failure(e))
            return _SlotStreamingResponse(_stream_body(run, first, pieces, rid, created, call.include_usage), run,
                                          media_type="text/event-stream",
                                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, run, rid, created)

    async def _slot_unless_gone(request: HttpRequest) -> bool:
        """Wait for a slot (QueueFull when none comes); False when the client left meanwhile."""
        take, watch = asyncio.create_task(state.gate.acquire()), asyncio.create_task(_disconnected(request))
        await asyncio.wait({take, watch}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if not take.done():
            take.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await take
        if take.cancelled():
            return False
        take.result()  # raises QueueFull
        if watch.done() and not watch.cancelled():  # got the slot, but nobody is waiting for it
            state.gate.release()
            return False
        return True

    async def _complete(request: HttpRequest, run: EngineRun, rid: str, created: int):
        async def collect() -> Completion:
            done = None
            async for item in run.items():
                if isinstance(item, Completion):
                    done = item
            if done is None:
                raise RuntimeError("the engine's stream ended without a Completion")
            return done

        work, watch = asyncio.create_task(collect()), asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():  # the client left: stop generating for nobody
                run.cancel()
                work.cancel()
        if work.cancelled():
            return PlainTextResponse("", status_code=499)
        try:
            c = work.result()
        except Exception as e:
            return error_response(_engine_failure(e))
        _record(run, c)
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "logprobs": None, "finish_reason": c.finish_reason}],
            "usage": _usage(c),
        })

    def _record(run: EngineRun, c: Completion) -> None:
        state.metrics.count_completion(c.input_tokens, c.output_tokens, time.perf_counter() - run.started,
                                       run.first_piece_s)

    async def _stream_body(run: EngineRun, first, pieces: AsyncIterator, rid: str, created: int,
                           include_usage: bool):
        def chunk(delta: dict, finish: str | None = None) -> bytes:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        async def everything():
            if first is not None:
                yield first
            async for item in pieces:
                yield item

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for item in everything():
                if isinstance(item, Completion):
                    _record(run, item)
                    yield chunk({}, item.finish_reason)
                    if include_usage:
                        yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                                    "model": state.model_name, "choices": [], "usage": _usage(item)})
                elif item:
                    yield chunk({"content": item})
        except Exception as e:
            yield _sse(_engine_failure(e).body())
            return
        yield b"data: [DONE]\n\n"

    async def http_error(request: HttpRequest, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       code=code))

    async def server_error(request: HttpRequest, exc: Exception):
        log.error("unexpected error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return error_response(ApiError(500, f"Internal server error ({type(exc).__name__}).", type="server_error"))

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route(CHAT_PATH, chat, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return _CountRequests(app, state.metrics)


class _CountRequests:
    """Counts every answered request by path and status for ``/metrics`` (unknown paths as "other")."""

    PATHS = {"/health", "/metrics", "/v1/models", CHAT_PATH}

    def __init__(self, app: Starlette, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in self.PATHS else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.count_request(label, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
