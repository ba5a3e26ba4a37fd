"""Soak test: `tunewise serve` on llama.cpp under a fixed load on loopback: zero errors, RSS flat after warm-up.

Run (from the repository root; the default 300 requests take ~4 min on a quiet 2-core CPU machine,
plus a one-off GGUF conversion of the model, cached in $TUNEWISE_HOME/gguf):

    .venv/bin/python bench/serve_soak.py --out bench/serve_soak.json
    .venv/bin/python bench/serve_soak.py --quick                     # 24 short requests: a smoke run
    .venv/bin/python bench/serve_soak.py --model runs/notices --requests 1000 --concurrency 16

It starts `tunewise serve MODEL --engine llama.cpp --port 0` as a child process on 127.0.0.1
(nothing listens elsewhere), with as many slots as clients, and sends ``--requests`` chat
completions from ``--concurrency`` client threads (official openai client, each sending its next
request when the last is answered). The requests vary as real traffic does: legal-notice prompts,
each a different case; every other one streamed; every third sampled (temperature 0.8, its own
seed), the rest greedy; every ``--disconnect-every``-th streamed one is dropped by its client after
a few chunks (which must free its slot; it is not an error).

Pass/fail (exit status 1 on failure):
  - errors: every request not dropped on purpose must be answered 200 with its tokens: zero errors;
  - slots: after the load /metrics must show no request running or waiting (none leaked);
  - memory: the server's RSS (the process and its children) is polled every 0.5 s; after the first
    ``--warmup`` requests (10%) it must stay flat: its last value may exceed its value when the
    warm-up ended by at most ``--rss-growth-mib`` (64 MiB). Both, and the largest seen after the
    warm-up, are reported.
Latency p50/p95 (all answered requests) and time to first token p50/p95 (streamed ones) are
reported with the CPU line, and written to --out as JSON with every RSS sample.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import notice_prompts, openai_client, percentile, rss_bytes, run_load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = {"requests": 24, "concurrency": 4, "max_tokens": 8}
SERVED = "soak"


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------


class ServeProcess:
    """`tunewise serve` in a child process on a free loopback port; its output goes to ``log``."""

    def __init__(self, model: str, precision: str, slots: int, max_tokens: int, log: Path, load_timeout_s: float):
        cmd = [sys.executable, "-c", "from tunewise.cli import main; main()", "serve", model, "--engine", "llama.cpp",
               "--precision", precision, "--host", "127.0.0.1", "--port", "0", "--parallel", str(slots),
               "--queue", str(slots), "--max-tokens-limit", str(max_tokens), "--name", SERVED]
        env = {k: v for k, v in os.environ.items() if k != "TUNEWISE_API_KEY"}  # loopback, no key
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.url = self._wait_url(30)
        deadline = time.monotonic() + load_timeout_s
        while self.health() != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"tunewise serve did not become ready:\n{self.log_text()[-3000:]}")
            time.sleep(0.5)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _wait_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            m = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", self.log_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"tunewise serve did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def health(self) -> int:
        return self.get("/health")[0]

    def metric(self, name: str) -> float | None:
        status, text = self.get("/metrics")
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M) if status == 200 else None
        return float(m.group(1)) if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class RssSampler:
    """The RSS of process ``pid`` (and its children) every ``every_s``, with how many requests were
    done at that moment."""

    def __init__(self, pid: int, done: list[int], every_s: float = 0.5):
        self.pid, self.done, self.every_s = pid, done, every_s
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, requests done, rss bytes)
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.samples.append((time.perf_counter() - self._t0, self.done[0], rss_bytes(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------


def make_call(client, max_tokens: int, disconnect_every: int, done: list[int], lock: threading.Lock):
    """A client call for the i-th request (see the module doc for the mix); never raises: an error
    is recorded in the result."""

    def call(item: tuple[int, list[dict]]) -> dict:
        i, messages = item
        stream = i % 2 == 0
        drop = stream and disconnect_every > 0 and (i // 2) % disconnect_every == disconnect_every - 1
        kw = dict(model=SERVED, messages=messages, max_tokens=max_tokens, seed=i)
        kw["temperature"] = 0.8 if i % 3 == 0 else 0
        out = {"i": i, "stream": stream, "dropped": drop, "error": None, "tokens": 0, "ttft_s": None}
        start = time.perf_counter()
        try:
            if not stream:
                r = client.chat.completions.create(**kw)
                out["tokens"], out["finish_reason"] = r.usage.completion_tokens, r.choices[0].finish_reason
                if out["tokens"] < 1:
                    out["error"] = "an answer with no tokens"
            else:
                s = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
                chunks, usage = 0, None
                for chunk in s:
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks += 1
                        if out["ttft_s"] is None:
                            out["ttft_s"] = time.perf_counter() - start
                    usage = chunk.usage or usage
                    if drop and chunks >= 3:
                        s.close()  # the client goes away mid-stream
                        break
                if not drop:
                    if usage is None or usage.completion_tokens < 1:
                        out["error"] = "the stream ended without usage or tokens"
                    else:
                        out["tokens"] = usage.completion_tokens
        except Exception as e:  # an HTTP error, a broken connection, a timeout: all are failures
            out["error"] = f"{type(e).__name__}: {e}"[:300]
        out["latency_s"] = time.perf_counter() - start
        with lock:
            done[0] += 1
        return out

    return call


def rss_after_warmup(samples: list[tuple[float, int, int]], warmup: int) -> tuple[int, int, int]:
    """From (time, requests done, rss) samples: the RSS when ``warmup`` requests were done (the first
    sample since), the last RSS, and the largest since the warm-up."""
    after = [s[2] for s in samples if s[1] >= warmup] or [samples[-1][2]]
    return after[0], samples[-1][2], max(after)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="what tunewise serve serves (default: smollm2-135m)")
    ap.add_argument("--precision", default="auto", help="llama.cpp precision (auto: tunewise serve's default)")
    ap.add_argument("--requests", type=int, default=300, help="requests in all")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads (and the server's slots)")
    ap.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request")
    ap.add_argument("--warmup", type=int, default=0, help="requests before RSS must stay flat (default: 10%%)")
    ap.add_argument("--rss-growth-mib", type=float, default=64.0,
                    help="largest allowed RSS growth from the end of the warm-up to the end (MiB)")
    ap.add_argument("--disconnect-every", type=int, default=10,
                    help="every N-th streamed request is dropped by its client mid-stream (0: none)")
    ap.add_argument("--load-timeout", type=float, default=900, help="seconds to wait for the model to load")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 24 requests of 8 tokens, concurrency 4")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        ap.error("--requests, --concurrency and --max-tokens must be positive")
    warmup = args.warmup or max(1, args.requests // 10)
    if warmup >= args.requests:
        ap.error("--warmup must be smaller than --requests")

    from tunewise.hardware import cpu_info, describe_cpu

    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or 'none of avx2/avx512f/avx512_bf16/amx'})",
          flush=True)
    print(f"tunewise serve {args.model} --engine llama.cpp --precision {args.precision} on 127.0.0.1; "
          f"{args.requests} requests, {args.concurrency} clients and slots, max_tokens {args.max_tokens}; "
          f"warm-up {warmup} requests; RSS growth bound {args.rss_growth_mib:g} MiB", flush=True)
    prompts = notice_prompts(args.requests, seed=2024)
    done, lock = [0], threading.Lock()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as work:
        t = time.perf_counter()
        server = ServeProcess(args.model, args.precision, args.concurrency, args.max_tokens, Path(work) / "serve.log",
                              args.load_timeout)
        print(f"ready at {server.url} in {time.perf_counter() - t:.1f} s (pid {server.proc.pid}); "
              f"RSS {mib(rss_bytes(server.proc.pid))}", flush=True)
        try:
            sampler = RssSampler(server.proc.pid, done).start()
            call = make_call(openai_client(server.url, timeout_s=300), args.max_tokens, args.disconnect_every,
                             done, lock)
            progress = threading.Event()

            def report_progress() -> None:
                while not progress.wait(15):
                    print(f"   {done[0]}/{args.requests} requests, server RSS {mib(sampler.samples[-1][2])}", flush=True)

            threading.Thread(target=report_progress, daemon=True).start()
            results, wall = run_load(call, list(enumerate(prompts)), args.concurrency)
            progress.set()
            time.sleep(1.0)  # let the last dropped streams' slots come back
            sampler.stop()
            running, waiting = server.metric("tunewise_requests_running"), server.metric("tunewise_requests_waiting")
            ok_200 = server.metric('tunewise_requests_total{path="/v1/chat/completions",status="200"}')
            alive = server.proc.poll() is None
        finally:
            server.stop()
        log_tail = server.log_text()[-2000:]

    errors = [r for r in results if r["error"]]
    answered = [r for r in results if not r["error"] and not r["dropped"]]
    dropped = [r for r in results if r["dropped"] and not r["error"]]
    tokens = sum(r["tokens"] for r in answered)
    samples = sampler.samples
    first, last, peak = rss_after_warmup(samples, warmup)
    growth = last - first
    checks = {
        "zero_errors": not errors,
        "server_alive": alive,
        "no_leaked_slots": running == 0 and waiting == 0,
        "rss_flat": growth <= args.rss_growth_mib * 2**20,
    }
    lat = [r["latency_s"] for r in answered]
    ttft = [r["ttft_s"] for r in answered if r["stream"]]
    summary = {
        "requests": args.requests, "answered": len(answered), "dropped_on_purpose": len(dropped),
        "errors": len(errors), "error_samples": [r["error"] for r in errors[:5]],
        "generated_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "rss_first_after_warmup_bytes": first, "rss_last_bytes": last, "rss_max_after_warmup_bytes": peak,
        "rss_growth_bytes": growth, "rss_growth_bound_bytes": int(args.rss_growth_mib * 2**20),
        "metrics_after": {"requests_running": running, "requests_waiting": waiting, "chat_200_total": ok_200},
        "checks": checks, "pass": all(checks.values()),
    }

    def s(x):
        return "-" if x is None else f"{x:.2f} s"

    print(f"\nCPU: {describe_cpu(cpu)}; {args.model} on llama.cpp ({args.precision}); {args.concurrency} clients")
    print(f"requests: {len(answered)} answered, {len(dropped)} dropped mid-stream on purpose, {len(errors)} errors "
          f"in {wall:.0f} s; {tokens} tokens = {summary['tokens_per_s']:.1f} tokens/s")
    print(f"latency p50 {s(summary['latency_p50_s'])}, p95 {s(summary['latency_p95_s'])}; "
          f"time to first token (streamed) p50 {s(summary['ttft_p50_s'])}, p95 {s(summary['ttft_p95_s'])}")
    print(f"server RSS: {mib(samples[0][2])} at start, {mib(first)} after {warmup} warm-up requests, "
          f"{mib(last)} at the end (growth {growth / 2**20:+.1f} MiB, bound {args.rss_growth_mib:g}), "
          f"max {mib(peak)} after the warm-up; {len(samples)} samples")
    print(f"after the load: {running:g} running, {waiting:g} waiting" if running is not None and waiting is not None
          else "after the load: /metrics did not answer")
    for e in summary["error_samples"]:
        print(f"  error: {e}")
    for name, ok in checks.items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
    if not alive:
        print(f"server log tail:\n{log_tail}")
    if args.out:
        from tunewise.paths import atomic_write_text

        atomic_write_text(args.out, json.dumps({
            "cpu": cpu, "cpu_line": describe_cpu(cpu), "model": args.model, "precision": args.precision,
            "concurrency": args.concurrency, "max_tokens": args.max_tokens, "warmup": warmup,
            "disconnect_every": args.disconnect_every, "quick": args.quick, **summary,
            "rss_samples": [{"t_s": round(t, 2), "done": d, "rss_bytes": r} for t, d, r in samples],
        }, indent=1))
        print(f"wrote {args.out}")
    sys.exit(0 if summary["pass"] else 1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
