"""`tunewise serve`: put a model (embedded, HF directory, GGUF or a tunewise run) behind an
OpenAI-compatible API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)


def default_model_name(ref: str) -> str:
    """The name clients put in ``"model"``: the embedded name, or the file/directory name."""
    path = Path(ref).expanduser()
    if not path.exists():
        return ref
    path = path.resolve()
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def usage_snippet(url: str, name: str, with_key: bool) -> str:
    """How to call the server with curl and with the openai client (the key itself is never shown)."""
    from tunewise.serve import API_KEY_ENV

    auth = f" \\\n  -H \"Authorization: Bearer ${API_KEY_ENV}\"" if with_key else ""
    key = f'os.environ["{API_KEY_ENV}"]' if with_key else '"none"'
    return (
        f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f"  -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\n"
        f"import os; from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{url}/v1\", api_key={key})\n"
        f"r = client.chat.completions.create(model=\"{name}\", messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}])\n"
        f"print(r.choices[0].message.content)"
    )


def serve_cmd(
    model: str = typer.Argument(..., help="Embedded name, HF directory, .gguf file or tunewise run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs an API key."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require `Authorization: Bearer KEY` "
                                          "(default: $TUNEWISE_API_KEY; prefer the variable: flags show in `ps`)."),
    engine: str = typer.Option("auto", "--engine", help="auto (llama.cpp when installed), hf, hf-batch or llama.cpp."),
    precision: str = typer.Option("auto", "--precision", help="hf: auto/fp32/bf16/fp16; llama.cpp: GGUF type "
                                  "an HF model is converted to (auto = f16)."),
    parallel: Optional[int] = typer.Option(None, "--parallel", min=1, help="Requests generated at once "
                                           "(llama.cpp's slots; default: the engine's)."),
    speculative: str = typer.Option("off", "--speculative", help="llama.cpp: ngram drafts tokens from each request's "
                                    "own context (same answers; faster with few requests at once, slower with many) or off."),
    max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", min=1, help="Largest max_tokens a request may ask."),
    queue: int = typer.Option(16, "--queue", min=0, help="Requests that may wait for a slot; more get 429."),
    max_body_kib: int = typer.Option(1024, "--max-body-kib", min=1, help="Largest request body in KiB (413 above)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name clients send (default: from MODEL)."),
) -> None:
    """Serve a model over an OpenAI-compatible API (chat completions, streaming, /health, /metrics).

    Listens on 127.0.0.1 unless --host says otherwise; any other address requires an API key
    (--api-key or TUNEWISE_API_KEY). The model runs with its own chat template and stops at every
    end-of-turn token.

    Example: [bold]tunewise serve runs/notices --port 8000[/]
    """
    from tunewise.errors import TunewiseError
    from tunewise.infer import ENGINES, open_engine
    from tunewise.models import embedded_name, resolve_model
    from tunewise.serve import Limits, bind, check_bind, create_app, make_server, resolve_api_key

    if engine not in ENGINES:
        raise TunewiseError(f"unknown engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    key = resolve_api_key(api_key)
    check_bind(host, key)
    from tunewise.infer.llamacpp import check_speculative
    from tunewise.infer.run import resolve_engine

    resolved = resolve_engine(engine)
    check_speculative(speculative, "--speculative")
    if speculative != "off" and resolved != "llama.cpp":
        raise TunewiseError(f"--speculative {speculative} needs the llama.cpp engine, not {resolved}",
                            "use --engine llama.cpp (or auto with xllamacpp installed), or --speculative off")
    extra = {"speculative": speculative} if resolved == "llama.cpp" else {}
    if embedded_name(model) is None and not Path(model).expanduser().exists():
        resolve_model(model)  # a missing path or unknown name: its error now, before listening
    limits = Limits(max_body_bytes=max_body_kib * 1024, max_tokens_limit=max_tokens_limit, queue_size=queue)
    served = name or default_model_name(model)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
    failure: list[BaseException] = []

    def loaded(eng) -> None:
        slots = parallel or getattr(eng, "n_parallel", 1) or 1
        console.print(f"[green]ready[/]: {served} on {eng.name} ({eng.precision}), {slots} slot(s), "
                      f"queue {queue}, max_tokens ≤ {max_tokens_limit}")
        if eng.name == "llama.cpp":
            from tunewise.infer.llamacpp import native_build_hint

            hint = native_build_hint()
            if hint:
                console.print(f"[dim]{hint}[/]", highlight=False)

    def load_failed(e: BaseException) -> None:
        failure.append(e)
        server.should_exit = True

    app = create_app(lambda: open_engine(model, engine=engine, precision=precision, n_parallel=parallel, **extra), served,
                     limits=limits, api_key=key, slots=parallel, on_loaded=loaded, on_load_failed=load_failed)
    server = make_server(app, sock)
    console.print(f"Serving [bold]{model}[/] as model [bold]{served}[/] at [bold]{url}/v1[/] "
                  f"({'API key required' if key else 'no API key: loopback only'}); loading the model…")
    console.print(f"Health: {url}/health   Metrics: {url}/metrics   Stop: Ctrl-C")
    console.print(usage_snippet(url, served, key is not None), markup=False)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        console.print("stopped")
    finally:
        sock.close()
    if failure:
        e = failure[0]
        raise e if isinstance(e, TunewiseError) else TunewiseError(f"loading {model} failed: {type(e).__name__}: {e}",
                                                                   "run again with --debug for the traceback")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
