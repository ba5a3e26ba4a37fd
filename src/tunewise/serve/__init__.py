"""`tunewise serve`: an OpenAI-compatible HTTP server over one inference engine.

    from tunewise.infer import open_engine
    from tunewise.serve import Limits, ServerThread, create_app

    app = create_app(lambda: open_engine("smollm2-135m"), "smollm2-135m", limits=Limits(max_tokens_limit=256))
    with ServerThread(app) as srv:          # a loopback port the system picks
        print(srv.url)                      # point any OpenAI client at srv.url + "/v1"

- :mod:`tunewise.serve.app`: the routes (``/v1/models``, ``/v1/chat/completions``, ``/health``,
  ``/metrics``), request validation and OpenAI-shaped errors, the engine's worker threads.
- :mod:`tunewise.serve.limits`: bind address and API key rules, body/``max_tokens`` caps, slots and
  the bounded queue.
- :mod:`tunewise.serve.metrics`: the Prometheus counters.
- :mod:`tunewise.serve.server`: uvicorn in the foreground or in a thread.
"""

from __future__ import annotations

from tunewise.serve.app import create_app
from tunewise.serve.limits import API_KEY_ENV, Limits, check_bind, resolve_api_key
from tunewise.serve.server import ServerThread, bind, make_server

__all__ = ["create_app", "Limits", "API_KEY_ENV", "check_bind", "resolve_api_key", "ServerThread", "bind",
           "make_server"]
