"""The fast engine: llama.cpp's own server, in process, through the ``xllamacpp`` wheel.

Requests are OpenAI-shaped dicts handed to ``Server.handle_chat_completions``; the server batches
whatever is in flight across ``n_parallel`` slots (continuous batching), so :meth:`generate`
submits every request at once from a thread pool. The prompt is rendered by llama.cpp from the
GGUF's own ``tokenizer.chat_template`` (the one the converter copied from the HF tokenizer), which
is what a deployed GGUF does too; :meth:`LlamaCppEngine.render` returns that text so it can be
checked against the HF rendering.

A ``.gguf`` file runs as it is. Anything else (embedded name, HF directory, run directory) is
converted once to GGUF with :func:`tunewise.export.gguf.convert` into
``$TUNEWISE_HOME/gguf/``, named by a digest of the model's files, so a changed model converts again
and an unchanged one never does. A LoRA run is merged into its base first (fp32, in a scratch
directory removed after the conversion).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Request

#: GGUF types an HF model may be converted to; "auto" picks :data:`DEFAULT_GGUF_TYPE`: f16, whose
#: greedy answers matched the HF reference on every measured prompt (q8_0 is faster but parted
#: ways on 6 of 8; bf16 is 1.10-1.18x faster on a native bf16 build but answered the demo's
#: questions word for word like the reference less often than f16; see docs/infer.md).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_GGUF_TYPE = "f16"
DEFAULT_N_PARALLEL = 8
DEFAULT_CTX_PER_REQUEST = 4096
#: Draft-token sources for speculative decoding: "ngram" drafts the continuation of the last 3
#: tokens from earlier in the same context (prompt lookup: answers that copy names, amounts and
#: phrases from their prompt), up to 8 tokens, which the model checks in one batch. Lossless:
#: every kept token is the one the model itself picks (tested at temperature 0). One notice alone
#: decoded 35 % faster (f16, 65 -> 88 tokens/s), but 16 at once 17 % slower, so it is off unless
#: asked for: `tunewise chat` (one user) asks for it (docs/serve.md).
SPECULATIVE = ("off", "ngram")
NGRAM_KEY_TOKENS, NGRAM_DRAFT_TOKENS = 3, 8


def check_speculative(value: str, name: str = "speculative") -> str:
    """``value`` if it is one of :data:`SPECULATIVE`, else a TunewiseError naming ``name``."""
    if value not in SPECULATIVE:
        raise TunewiseError(f"{name} {value!r} is not known", f"use one of: {', '.join(SPECULATIVE)}")
    return value


# ---------------------------------------------------------------------------------------------
# Which build of llama.cpp is installed
# ---------------------------------------------------------------------------------------------

#: llama.cpp's CPU feature names (``get_system_info()``, "AVX512_BF16 = 1") widest first, with the
#: names tunewise's CPU line uses.
_BUILD_ISA = (("AMX_INT8", "AMX"), ("AVX512_BF16", "AVX-512 BF16"), ("AVX512", "AVX-512"), ("AVX2", "AVX2"),
              ("AVX", "AVX"))


def build_isa(system_info: str | None = None) -> str | None:
    """The widest x86 vector extension the installed llama.cpp was compiled for ("AVX2" for PyPI's
    xllamacpp wheel, "AVX-512 BF16" for a native build on such a CPU), from llama.cpp's own system
    info; None when xllamacpp is not installed or reports none of them (another architecture)."""
    if system_info is None:
        try:
            import xllamacpp
        except ImportError:
            return None
        system_info = xllamacpp.get_system_info()
    on = {k.strip() for k, _, v in (part.partition("=") for part in system_info.replace(":", "|").split("|"))
          if v.strip() == "1"}
    return next((label for flag, label in _BUILD_ISA if flag in on), None)


#: What `make setup-native` measured over PyPI's wheel (bench/serve_throughput.py, docs/serve.md).
NATIVE_GAIN = "1.1-1.8x faster on an AMD EPYC with AVX-512 BF16, most with many requests at once"
#: The CPU kinds where a native build measured faster than the wheel. Not "AMX": on an Intel Xeon
#: with AMX (session 14) the native build decoded 0.73-0.91x the wheel's tokens/s at 16 requests
#: (and its AMX kernels died on q8_0 until `make setup-native` left them out); plain "AVX-512" is
#: unmeasured.
NATIVE_FASTER_ON = ("AVX-512 BF16",)


def native_build_hint(cpu_kind: str | None = None, built_for: str | None = "installed") -> str | None:
    """A line for CPUs where a native build measured faster (:data:`NATIVE_FASTER_ON`) running a
    llama.cpp compiled for less (PyPI's AVX2 wheel): `make setup-native` compiles it for this CPU.
    None when there is nothing (measured) to gain or llama.cpp is not installed. ``cpu_kind``
    defaults to this CPU's, ``built_for`` to the installed build's."""
    if cpu_kind is None:
        from tunewise.hardware import cpu_info

        cpu_kind = cpu_info()["kind"]
    if built_for == "installed":
        built_for = build_isa()
    wide = ("AMX", "AVX-512 BF16", "AVX-512")
    if built_for is None or cpu_kind not in NATIVE_FASTER_ON or built_for.startswith(wide):
        return None
    return (f"llama.cpp was compiled for {built_for} but this CPU has {cpu_kind}: `make setup-native` "
            f"(or, after a pip install, the pip command in docs/serve.md) compiles it for this CPU "
            f"(about 10 minutes; {NATIVE_GAIN})")


# ---------------------------------------------------------------------------------------------
# What to run: a GGUF file for any model reference
# ---------------------------------------------------------------------------------------------


def gguf_file_type(path: Path) -> str:
    """The GGUF's weight type in llama.cpp's words ("f16", "q8_0", "q4_1", ...)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.file_type"]
        name = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    except KeyError:
        return "unknown"
    except Exception as e:
        raise TunewiseError(f"{path} is not a readable GGUF file: {e}", "check the file is complete") from None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def _files_digest(dirs: Sequence[Path]) -> str:
    """A digest of every file's name and content under ``dirs``. Hashing many GB takes a while, so
    each file's hash is remembered against its size and modification time."""
    memo_file = _cache_dir() / "file-hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            st = p.stat()
            key = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
            if key not in memo:
                fh = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        fh.update(block)
                memo[key], changed = fh.hexdigest(), True
            h.update(f"{p.relative_to(d)}\0{memo[key]}\n".encode())
    if changed:
        from tunewise.paths import atomic_write_text

        atomic_write_text(memo_file, json.dumps(memo))
    return h.hexdigest()[:16]


def _cache_dir() -> Path:
    from tunewise.paths import tunewise_home

    d = tunewise_home() / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _convert_merged(ref: str, out: Path, precision: str) -> None:
    """Convert the LoRA/QLoRA run ``ref`` to ``out``: merged into its base in fp32 the way `tunewise
    export` merges (tunewise.export.write_merged) in a scratch directory (deleted afterwards: a
    merged copy is as large as the model), then converted. The HF reference keeps the adapter unmerged."""
    import shutil
    import tempfile

    from transformers.utils import logging as hf_logging

    from tunewise.export import write_merged
    from tunewise.export.gguf import convert

    hf_logging.disable_progress_bar()  # loading/writing bars would flood eval's, compare's and serve's logs
    scratch = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.parent))
    try:
        convert(write_merged(ref, scratch / "merged", "f32"), out, precision)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gguf_precision(precision: str) -> str:
    """``precision`` in llama.cpp's words: HF's dtype names mapped to the GGUF type of the same
    width (fp32 -> f32, float16 -> f16, bfloat16 -> bf16); others lower-cased as they are."""
    p = precision.lower()
    return {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16"}.get(p, p)


def gguf_file_of(ref: str) -> Path | None:
    """The GGUF ``ref`` runs as it is: a ``.gguf`` file, or a directory holding exactly one and no
    HF model, adapter or run (as resolve_model reads it); None for anything tunewise converts."""
    path = Path(str(ref)).expanduser()
    plain_dir = path.is_dir() and not any((path / f).is_file() for f in (
        "config.json", "adapter_config.json", "adapter/adapter_config.json", "model/config.json"))
    ggufs = [path] if path.is_file() and path.suffix.lower() == ".gguf" else (
        sorted(path.glob("*.gguf")) if plain_dir else [])
    return ggufs[0] if len(ggufs) == 1 else None


def gguf_for(ref: str, precision: str = "auto") -> tuple[Path, str]:
    """The GGUF file that runs ``ref`` and its weight type. A ``.gguf`` runs as it is (``precision``
    must be "auto" or match it); anything else is converted once to ``precision`` (auto: f16)."""
    from tunewise.export.gguf import convert
    from tunewise.models import resolve_model

    precision = gguf_precision(precision)
    file = gguf_file_of(ref)
    if file is not None:
        kind = gguf_file_type(file)
        if precision not in ("auto", kind):
            raise TunewiseError(f"{file} holds {kind} weights, not {precision}",
                                "leave precision at auto to run the file as it is, or pass the HF model to convert")
        return file, kind
    if precision == "auto":
        precision = DEFAULT_GGUF_TYPE
    if precision not in GGUF_TYPES:
        raise TunewiseError(f"llama.cpp precision {precision!r} is not one tunewise can convert to",
                            f"use one of: auto, {', '.join(GGUF_TYPES)}")
    resolved = resolve_model(ref)
    if resolved.adapter_dir is None:
        out = _cache_dir() / f"{resolved.path.name}-{_files_digest([resolved.path])}-{precision}.gguf"
    else:  # a LoRA run: named by the content of its base and its adapter
        out = _cache_dir() / f"run-{_files_digest([resolved.path, resolved.adapter_dir])}-{precision}.gguf"
    if not out.is_file():
        from rich.console import Console

        Console(stderr=True).print(f"[dim]Converting {ref} to GGUF ({precision}) in {out.parent} (once)…[/]")
        if resolved.adapter_dir is None:
            convert(resolved.path, out, precision)
        else:
            _convert_merged(str(ref), out, precision)
    return out, precision


#: Weight types with no AMX kernel in llama.cpp (its AMX code covers quantized types only).
_NO_AMX_KERNEL = ("f32", "f16", "bf16")
_amx_checked: dict[str, object] = {}


def check_amx_build(gguf: Path, kind: str) -> None:
    """A llama.cpp compiled with its AMX kernels (`make setup-native` on an AMX CPU before session
    14) died with SIGILL on q8_0 on an Intel Xeon, taking the process with it. On such a build a
    quantized GGUF is first run once in a child process (:mod:`tunewise.infer.build_check`), so
    the crash becomes a clear error. Other builds and unquantized types are not checked."""
    if kind in _NO_AMX_KERNEL or build_isa() != "AMX":
        return
    from tunewise.infer.build_check import check_precision

    key = str(gguf)
    if key not in _amx_checked:
        _amx_checked[key] = check_precision(key, "auto", timeout=300)
    r = _amx_checked[key]
    if not r.ok:
        raise TunewiseError(f"the installed llama.cpp was compiled with AMX kernels and cannot run {gguf} ({kind}) "
                            f"here: {r.detail}",
                            "run `make setup-native` again (it now leaves AMX out), or put PyPI's wheel back: pip "
                            "install --force-reinstall --no-deps --only-binary xllamacpp \"xllamacpp==$(pip show "
                            "xllamacpp | sed -n 's/^Version: //p')\"")


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class LlamaCppEngine:
    """llama.cpp on a GGUF, ``n_parallel`` requests decoded together (continuous batching).

    ``threads``: compute threads (default: this machine's physical cores). ``ctx_per_request``:
    the longest prompt + answer one request may have; the KV cache holds ``n_parallel`` of them.
    ``speculative``: "ngram" for n-gram (prompt-lookup) speculative decoding, see
    :data:`SPECULATIVE`. ``cache_ram_mib``: llama.cpp's host-memory cache of finished requests' prompts (0: none). Its
    own default, 8 GiB, grows the process by every new prompt's KV state until full (the soak test,
    bench/serve_soak.py, saw +2.4 MiB a request on SmolLM2-135M); a slot still reuses the prefix it
    holds (a shared system prompt) without it.
    """

    name = "llama.cpp"

    def __init__(self, ref: str, precision: str = "auto", n_parallel: int = DEFAULT_N_PARALLEL,
                 ctx_per_request: int = DEFAULT_CTX_PER_REQUEST, threads: int | None = None,
                 cache_ram_mib: int = 0, speculative: str = "off"):
        try:
            import xllamacpp
        except ImportError:
            raise TunewiseError("the llama.cpp engine needs the xllamacpp package",
                                "pip install xllamacpp, or use engine hf") from None
        from tunewise.hardware import physical_cores

        check_speculative(speculative)
        if n_parallel < 1 or ctx_per_request < 16:
            raise TunewiseError(f"n_parallel={n_parallel} and ctx_per_request={ctx_per_request} are too small",
                                "use n_parallel >= 1 and ctx_per_request >= 16")
        self.model = str(ref)
        self.gguf, self.precision = gguf_for(ref, precision)
        check_amx_build(self.gguf, self.precision)
        self.n_parallel, self.ctx_per_request = n_parallel, ctx_per_request
        self.threads = threads or physical_cores()
        p = xllamacpp.CommonParams()
        p.model.path = str(self.gguf)
        p.verbosity = 0  # errors only: llama.cpp logs every request at the default level
        # xllamacpp also listens on a random loopback port with llama.cpp's own HTTP server; a
        # random key keeps other local users off it (calls from this process pass it; the Python
        # binding itself needs none).
        self._key = secrets.token_urlsafe(32)
        p.api_keys = [self._key]
        p.n_parallel = n_parallel
        # llama.cpp's n_ctx is the whole KV cache, split evenly between the slots (and rounded up)
        p.n_ctx = ctx_per_request * n_parallel
        p.cache_ram_mib = cache_ram_mib
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        p.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        p.use_jinja = True  # the GGUF's chat template, rendered as the HF tokenizer renders it
        self.speculative = speculative
        if speculative == "ngram":
            p.speculative.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
            p.speculative.ngram_simple.size_n = NGRAM_KEY_TOKENS
            p.speculative.ngram_simple.size_m = NGRAM_DRAFT_TOKENS
        try:
            self._server = xllamacpp.Server(p)
        except Exception as e:
            raise TunewiseError(f"llama.cpp cannot load {self.gguf}: {e}",
                                "check the file is a complete GGUF of an architecture llama.cpp supports") from None
        self._pool = ThreadPoolExecutor(max_workers=n_parallel, thread_name_prefix="llama.cpp")
        #: the longest prompt + answer one request may have, as the server sized its slots
        self.n_ctx = int(self._http("/props")["default_generation_settings"]["n_ctx"])

    # -- requests ------------------------------------------------------------------------------

    def _body(self, request: Request, **extra) -> dict:
        greedy = request.temperature <= 0
        body = {"messages": request.messages, "max_tokens": request.max_tokens,
                "temperature": request.temperature, "top_p": request.top_p,
                # only what Request names: llama.cpp's own top_k 40 and min_p 0.05 are switched off.
                # Greedy keeps the most likely token; top_k 1 is that same choice made first. With
                # top_k 0 a greedy request that also sends top_p < 1 (OpenAI clients often send 0.95)
                # had llama.cpp sort the whole vocabulary for every token: top_k 1 made those 1.13x
                # faster alone and 1.14x at 16 at once (bench/greedy_sampler.json); at top_p 1,
                # 1.00x / 1.02x (bench/greedy_sampler_top_p1.json).
                "top_k": 1 if greedy else 0, "min_p": 0.0, **extra}
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = int(request.seed)
        return body

    def _call(self, body: dict, on_chunk: Callable[[dict], bool] | None = None) -> dict | None:
        try:
            if on_chunk is None:
                out = self._server.handle_chat_completions(body)
            else:
                out = self._server.handle_chat_completions(body, on_chunk)
        except ValueError as e:
            raise TunewiseError(f"llama.cpp rejected the request: {e}", "check the messages' shape") from None
        if isinstance(out, dict) and "error" in out:
            err = out["error"]
            hint = ("raise ctx_per_request or shorten the prompt" if err.get("type") == "exceed_context_size_error"
                    else "check the request")
            raise TunewiseError(f"llama.cpp ({self.gguf.name}): {err.get('message', err)}", hint)
        return out

    def _one(self, request: Request) -> Completion:
        start = time.perf_counter()
        out = self._call(self._body(request))
        wall = time.perf_counter() - start
        choice = out["choices"][0]
        usage, timings = out.get("usage") or {}, out.get("timings") or {}
        return self._completion(choice["message"].get("content") or "", choice.get("finish_reason"), usage,
                                timings, wall)

    def _completion(self, text: str, reason: str | None, usage: dict, timings: dict, wall: float,
                    ttft: float | None = None) -> Completion:
        n_out = int(usage.get("completion_tokens") or timings.get("predicted_n") or 0)
        prompt_ms, predicted_ms = float(timings.get("prompt_ms") or 0), float(timings.get("predicted_ms") or 0)
        if ttft is None and timings:  # prefill + the first decoding step
            ttft = (prompt_ms + (predicted_ms / n_out if n_out else 0)) / 1000
        seconds = (prompt_ms + predicted_ms) / 1000 if timings else wall  # time in a slot, queueing excluded
        extra = {"wall_s": wall, "cached_tokens": int(timings.get("cache_n") or 0)}
        if self.speculative != "off":  # tokens drafted, and how many the model kept (llama.cpp omits zeros)
            extra.update(draft_tokens=int(timings.get("draft_n") or 0),
                         draft_accepted=int(timings.get("draft_n_accepted") or 0))
        return Completion(text=text.strip(), input_tokens=int(usage.get("prompt_tokens") or 0), output_tokens=n_out,
                          finish_reason=_finish(reason), seconds=seconds, ttft_s=ttft, engine=self.name, extra=extra)

    def generate(self, requests: Sequence[Request],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """All ``requests`` at once; the server decodes up to ``n_parallel`` of them together."""
        futures = [self._pool.submit(self._one, r) for r in requests]
        out: list[Completion] = []
        for i, f in enumerate(futures):
            out.append(f.result())
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def stream(self, request: Request) -> Iterator[str | Completion]:
        """Text pieces as the server sends them, then the Completion. Stopping early (closing the
        generator) ends the request in the server and frees its slot."""
        chunks: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def on_chunk(chunk) -> bool:
            chunks.put(chunk)
            return cancel.is_set()  # True tells the server to stop this request

        def work():
            try:
                self._call(self._body(request, stream=True, stream_options={"include_usage": True}), on_chunk)
            except BaseException as e:  # handed to the consumer
                chunks.put(e)
            finally:
                chunks.put(None)

        start = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True, name=f"tunewise-{self.name}-stream")
        thread.start()
        text, reason, usage, timings, ttft, started = [], None, {}, {}, None, False
        try:
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                if isinstance(chunk, str):
                    chunk = json.loads(chunk)
                if "error" in chunk:
                    raise TunewiseError(f"llama.cpp ({self.gguf.name}): {chunk['error'].get('message')}",
                                        "check the request")
                usage, timings = chunk.get("usage") or usage, chunk.get("timings") or timings
                for choice in chunk.get("choices") or []:
                    reason = choice.get("finish_reason") or reason
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if not started:
                        piece = piece.lstrip()  # the Completion's text is stripped; so is the stream's start
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - start
                        started = True
                        text.append(piece)
                        yield piece
        finally:
            cancel.set()
            # also when the consumer stopped early: the server ends the request at its next piece, so
            # when close() returns the slot is free (a server's slot count then matches llama.cpp's)
            thread.join()
        yield self._completion("".join(text), reason, usage, timings, time.perf_counter() - start, ttft)

    def _http(self, path: str, body: dict | None = None) -> dict:
        """One call to the embedded server's own HTTP API (loopback, for what the Python binding
        does not expose: its slots' context and the tokenizer)."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._server.listening_address + path, data=data,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """llama.cpp's token ids for ``text`` (special tokens parsed; ``add_special`` adds the BOS the
        GGUF asks for, as a chat request does)."""
        return self._http("/tokenize", {"content": text, "add_special": add_special, "parse_special": True})["tokens"]

    def render(self, messages: list[dict]) -> str:
        """The prompt text llama.cpp builds from ``messages`` with the GGUF's chat template (no
        generation). Raises ValueError when the template refuses the messages."""
        import urllib.error

        try:
            return self._http("/apply-template", {"messages": messages})["prompt"]
        except urllib.error.HTTPError as e:
            detail = json.loads(e.read() or b"{}").get("error", {}).get("message", str(e))
            raise ValueError(f"llama.cpp cannot render these messages: {detail}") from None

    def count_tokens(self, messages: list[dict]) -> int:
        """The prompt's length in tokens as a request with ``messages`` will have it: rendered with
        the GGUF's chat template and tokenized by llama.cpp (no generation; milliseconds)."""
        return len(self.tokenize(self.render(messages), add_special=True))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._server = None  # the server's destructor stops its loop and frees the model
