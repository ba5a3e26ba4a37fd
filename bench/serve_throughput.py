"""Serving throughput: the HF reference path against llama.cpp, directly and through `tunewise serve`, in one run.

Run (from the repository root; the default run takes ~5-6 min on a quiet 2-core CPU machine, plus
a one-off GGUF conversion of the model per precision, cached in $TUNEWISE_HOME/gguf):

    .venv/bin/python bench/serve_throughput.py --out bench/serve_throughput.json
    .venv/bin/python bench/serve_throughput.py --quick                       # ~16 tokens, concurrency 1,4: a smoke run
    .venv/bin/python bench/serve_throughput.py --concurrency 1,8 --requests 8 --precisions q8_0
    .venv/bin/python bench/serve_throughput.py --model runs/notices          # any model tunewise serves
    .venv/bin/python bench/serve_throughput.py --isa avx2 --precisions q8_0  # the HF baseline as on an AVX2-only CPU

Every arm answers the same prompts: the legal-notice scenario's (tunewise.demo.notices: its system
prompt and a generated case), ``--new-tokens`` (200) at most, greedy (temperature 0, fixed seed).

  (a) hf: the reference path as tunewise decoded before the fast engine: Hugging Face ``generate``,
      one request at a time, precision auto (fp32, or bf16 where the CPU computes it natively).
      Measured at concurrency 1: it is the baseline of every ratio.
  (b) llama.cpp at each of ``--precisions`` (f16, the fast engine's default, and q8_0), with as
      many slots as the largest concurrency, each at concurrency 1, 4 and 16:
      direct: ``engine.generate`` called by that many client threads, each sending its next
      request when the last one is answered (closed loop); time to first token is the engine's own
      (prefill + one decoding step);
      http: the same through `tunewise serve` (its app in this process on a loopback port, the
      official openai client, streaming): time to first token is the client's, to the first text.
  (c) with ``--speculative f16`` (or other types): llama.cpp at that type once more with n-gram
      speculative decoding (drafts from each request's own context, checked by the model), the
      rows labelled ``f16+ngram``.

A row sends ``--requests`` requests (default: max(2, concurrency)). Its prompts are its own (each
row a fresh slice of cases, the same slice in every arm), so no row reuses another's prompt cache;
the shared system prompt is cached as a deployed llama.cpp caches it: before the rows, each
llama.cpp arm is warmed up with one short request per slot, all at once, as a server that has been
answering for a while holds the system prompt in every slot (without it, the first rows would pay
for filling slots that the later rows find full). Generated tokens/s is the
aggregate: the tokens of all the row's answers / the row's wall time (first request sent to last
answer). Latency is one request's wall time at the client. Peak RSS is the arm's process (engine,
server and clients), polled every 50 ms during the row. Each arm runs in its own subprocess, so its
memory is its own.

Targets (issue 14), each a ratio against the HF row of the same run: generated tokens/s at
concurrency 1 >= 5x, and aggregate generated tokens/s at concurrency 16 >= 15x HF at concurrency 1.
The CPU line is printed and recorded in --out.

``--isa avx2`` emulates an AVX2-only CPU on a newer one: oneDNN, MKL, ATen and tunewise are capped
at AVX2 in every process of the run, so the HF reference decodes in fp32 with AVX2 kernels, as on
the CPU issue 14's figures come from. llama.cpp cannot be capped from outside: the run refuses
unless it is PyPI's wheel, which is compiled for AVX2 already. The CPU line says "(emulated)". An
emulated core still has this CPU's clock, caches and memory, so the absolute figures are not an
AVX2 machine's; the ratio is the estimate of one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
TARGET_C1 = 5.0  # llama.cpp tokens/s at concurrency 1 / HF's
TARGET_C16 = 15.0  # llama.cpp aggregate tokens/s at concurrency 16 / HF's at concurrency 1
PROMPT_SEED = 1414  # the cases the prompts are made from
QUICK = {"new_tokens": 16, "concurrency": "1,4"}


# ---------------------------------------------------------------------------------------------
# What every arm runs
# ---------------------------------------------------------------------------------------------


def notice_prompts(n: int, seed: int = PROMPT_SEED) -> list[list[dict]]:
    """``n`` chat prompts of the legal-notice scenario: its system prompt and one case each."""
    from tunewise.demo.notices import SYSTEM_PROMPT, make_case, prompt_for

    rng = random.Random(seed)
    return [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt_for(make_case(rng))}]
            for _ in range(n)]


def requests_for(concurrency: int, requests: int) -> int:
    return max(concurrency, requests or 2)


def plan(concurrency: list[int], requests: int, modes: list[str]) -> list[tuple[str, int, int, int]]:
    """Every llama.cpp row as (mode, concurrency, first prompt, prompts): a fresh slice of the
    prompts for each row, the same in every arm (HF's row is direct's concurrency-1 slice)."""
    rows, start = [], 0
    for mode in modes:
        for c in concurrency:
            n = requests_for(c, requests)
            rows.append((mode, c, start, n))
            start += n
    return rows


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between ranks; None for no values."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process and its children."""
    import psutil

    p = psutil.Process(pid)
    total = p.memory_info().rss
    for child in p.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


class RssPeak:
    """``with RssPeak() as m: ...; m.peak`` — the largest RSS of a process seen while inside, polled."""

    def __init__(self, pid: int | None = None, every_s: float = 0.05):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "RssPeak":
        self.peak = rss_bytes(self.pid)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def run_load(call: Callable[[list[dict]], dict], prompts: list[list[dict]], concurrency: int) -> tuple[list[dict], float]:
    """``call`` on every prompt from ``concurrency`` client threads, each sending its next prompt
    once the last is answered. Returns each call's result (with ``latency_s`` added) and the wall
    time from the first request sent to the last answer."""
    todo = iter(list(enumerate(prompts)))
    lock = threading.Lock()
    results: list[dict | None] = [None] * len(prompts)

    def client() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, messages = item
            t = time.perf_counter()
            out = call(messages)
            out["latency_s"] = time.perf_counter() - t
            results[i] = out

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()  # a client's exception ends the row
    return results, time.perf_counter() - start


def row_stats(results: list[dict], wall: float) -> dict:
    tokens = sum(r["tokens"] for r in results)
    lat, ttft = [r["latency_s"] for r in results], [r["ttft_s"] for r in results]
    decode = [r["decode_tokens_per_s"] for r in results if r.get("decode_tokens_per_s")]
    return {"requests": len(results), "generated_tokens": tokens, "prompt_tokens": sum(r["prompt_tokens"] for r in results),
            "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "mean_tokens": tokens / len(results),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
            "decode_tokens_per_s_mean": statistics.mean(decode) if decode else None,
            "finish_reasons": {k: sum(r["finish_reason"] == k for r in results) for k in ("stop", "length")}}


# ---------------------------------------------------------------------------------------------
# The two ways in: the engine itself, and tunewise serve over HTTP
# ---------------------------------------------------------------------------------------------


def engine_call(engine, new_tokens: int, seed: int) -> Callable[[list[dict]], dict]:
    from tunewise.infer.types import Request

    def call(messages: list[dict]) -> dict:
        c = engine.generate([Request(messages, max_tokens=new_tokens, temperature=0.0, seed=seed)])[0]
        return {"tokens": c.output_tokens, "prompt_tokens": c.input_tokens, "ttft_s": c.ttft_s,
                "finish_reason": c.finish_reason, "decode_tokens_per_s": c.decode_tokens_per_s}

    return call


def http_call(client, model: str, new_tokens: int, seed: int, stream: bool = True) -> Callable[[list[dict]], dict]:
    """One chat completion through the openai client; streamed, time to first token is when the
    first text arrives."""

    def call(messages: list[dict]) -> dict:
        start = time.perf_counter()
        kw = dict(model=model, messages=messages, max_tokens=new_tokens, temperature=0, seed=seed)
        if not stream:
            r = client.chat.completions.create(**kw)
            return {"tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens, "ttft_s": None,
                    "finish_reason": r.choices[0].finish_reason, "text": r.choices[0].message.content}
        ttft, usage, reason, text = None, None, None, []
        for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
            for choice in chunk.choices:
                if choice.delta.content:
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    text.append(choice.delta.content)
                reason = choice.finish_reason or reason
            usage = chunk.usage or usage
        if usage is None:
            raise RuntimeError("the stream ended without a usage chunk")
        n = usage.completion_tokens
        total = time.perf_counter() - start
        decode = (n - 1) / (total - ttft) if ttft is not None and n > 1 and total > ttft else None
        return {"tokens": n, "prompt_tokens": usage.prompt_tokens, "ttft_s": ttft, "finish_reason": reason,
                "decode_tokens_per_s": decode, "text": "".join(text)}

    return call


def openai_client(url: str, key: str = "none", timeout_s: float = 600):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout_s)


# ---------------------------------------------------------------------------------------------
# One arm (in its own subprocess)
# ---------------------------------------------------------------------------------------------


def run_arm(arm: dict, args, out_file: Path) -> None:
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rows_plan = plan(concurrency, args.requests, ["direct", "http"])
    measured = max(s + n for _, _, s, n in rows_plan)
    # after the measured prompts: one per slot for the warm-up (the HF arm uses the first)
    prompts = notice_prompts(measured + max(concurrency))
    warm = prompts[measured:]
    info: dict = {"arm": arm["name"], "rows": []}
    t = time.perf_counter()
    if arm["engine"] == "hf":
        from tunewise.infer.hf import HFEngine

        engine = HFEngine(args.model, precision=args.hf_precision)
        modes, rows_plan = ["direct"], [r for r in rows_plan if r[0] == "direct" and r[1] == 1]
        if not rows_plan:  # concurrency 1 not asked for: the baseline still runs at 1
            rows_plan = [("direct", 1, 0, requests_for(1, args.requests))]
        import torch

        info["torch_threads"] = torch.get_num_threads()
    else:
        from tunewise.infer.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(arm["gguf"], n_parallel=max(concurrency), ctx_per_request=args.ctx,
                                threads=args.threads, speculative=arm.get("speculative", "off"))
        modes = ["direct", "http"]
        info.update(threads=engine.threads, n_parallel=engine.n_parallel, n_ctx=engine.n_ctx, gguf=arm["gguf"])
    info.update(engine=engine.name, precision=engine.precision, load_s=time.perf_counter() - t)
    for mode in modes:
        if mode == "direct":
            call, server = engine_call(engine, args.new_tokens, args.seed), None
            short = engine_call(engine, 1, args.seed)
        else:
            from tunewise.serve import Limits, ServerThread, create_app

            app = create_app(engine, "bench", limits=Limits(max_tokens_limit=args.new_tokens,
                                                            queue_size=max(concurrency)))
            server = ServerThread(app).start()
            call = http_call(openai_client(server.url), "bench", args.new_tokens, args.seed)
            short = http_call(openai_client(server.url), "bench", 1, args.seed)
        try:
            # not measured: weights paged in, template compiled, and, as in a server that has been
            # answering for a while, every slot holding the shared system prompt (one short request
            # per slot, all at once); the cases themselves are never cached
            call(warm[0])
            if engine.name != "hf":
                run_load(short, warm, len(warm))
            for row_mode, c, start, n in rows_plan:
                if row_mode != mode:
                    continue
                with RssPeak() as mem:
                    results, wall = run_load(call, prompts[start:start + n], c)
                label = engine.precision + ("+ngram" if getattr(engine, "speculative", "off") != "off" else "")
                row = {"engine": engine.name, "precision": label, "path": mode, "concurrency": c,
                       **row_stats(results, wall), "peak_rss_bytes": mem.peak}
                info["rows"].append(row)
                print(f"   {engine.name} {engine.precision} {mode} concurrency {c}: {row['generated_tokens']} tokens "
                      f"in {wall:.1f} s = {row['tokens_per_s']:.1f} tokens/s", flush=True)
        finally:
            if server is not None:
                server.stop()  # the app's shutdown closes the engine
    if modes == ["direct"]:
        engine.close()
    out_file.write_text(json.dumps(info, indent=1), encoding="utf-8")


def spawn_arm(arm: dict, argv: list[str], work: Path) -> dict:
    """``arm`` in a fresh interpreter (its memory its own); returns what it measured."""
    out = work / f"{arm['name']}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_arm", json.dumps(arm), "--_out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"arm {arm['name']} failed (exit status {proc.returncode})")
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def verdicts(rows: list[dict], base: dict) -> list[dict]:
    """The issue's two targets for every llama.cpp precision and path, against HF at concurrency 1."""
    out = []
    for row in rows:
        if row["engine"] == "hf":
            continue
        for c, target, what in ((1, TARGET_C1, "tokens/s at concurrency 1"),
                                (16, TARGET_C16, "aggregate tokens/s at concurrency 16")):
            if row["concurrency"] == c:
                ratio = row["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else 0.0
                out.append({"precision": row["precision"], "path": row["path"], "concurrency": c, "what": what,
                            "ratio": ratio, "target": target, "pass": ratio >= target})
    return out


def report(rows: list[dict], base: dict) -> None:
    header = (f"{'engine':<10}{'precision':<12}{'path':<7}{'conc':>5}{'reqs':>5}{'tokens':>7}{'tok/s':>8}"
              f"{'TTFT p50':>9}{'p95':>6}{'latency p50':>12}{'p95':>7}{'peak RSS':>11}{'vs HF c1':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else 0.0
        print(f"{r['engine']:<10}{r['precision']:<12}{r['path']:<7}{r['concurrency']:>5}{r['requests']:>5}"
              f"{r['generated_tokens']:>7}{r['tokens_per_s']:>8.1f}{secs(r['ttft_p50_s']):>9}{secs(r['ttft_p95_s']):>6}"
              f"{secs(r['latency_p50_s']):>12}{secs(r['latency_p95_s']):>7}{gib(r['peak_rss_bytes']):>11}"
              f"{ratio:>9.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, HF directory or run (default: smollm2-135m)")
    ap.add_argument("--new-tokens", type=int, default=200, help="max_tokens of every request")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client concurrencies for llama.cpp")
    ap.add_argument("--requests", type=int, default=0, help="requests per row (default: max(2, concurrency))")
    ap.add_argument("--precisions", default="f16,q8_0", help="llama.cpp GGUF types the model is converted to, one arm each")
    ap.add_argument("--speculative", default="", help="comma-separated GGUF types to run once more with n-gram "
                    "speculative decoding (the engine's speculative='ngram'), one arm each, e.g. f16")
    ap.add_argument("--gguf", action="append", default=[], metavar="FILE",
                    help="also run this GGUF file as it is (e.g. a shipped Q4_1), one arm each; repeatable")
    ap.add_argument("--hf-precision", default="auto", help="the HF reference's precision (auto: as tunewise picks)")
    ap.add_argument("--ctx", type=int, default=0, help="llama.cpp context per request (default: new tokens + 512)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp compute threads (default: physical cores)")
    ap.add_argument("--seed", type=int, default=0, help="the requests' seed (decoding is greedy)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 16 new tokens, concurrency 1,4")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="emulate an AVX2-only CPU on a newer one: the HF reference capped at AVX2 (fp32), "
                         "llama.cpp must be the AVX2 wheel; figures labelled emulated")
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    args.ctx = args.ctx or args.new_tokens + 512
    if args._arm:
        run_arm(json.loads(args._arm), args, Path(args._out))
        return
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if not concurrency or min(concurrency) < 1 or args.new_tokens < 1:
        ap.error("--concurrency takes positive integers and --new-tokens a positive number")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.infer.llamacpp import build_isa, gguf_for

    started = time.perf_counter()
    cpu = cpu_info()
    built_for = build_isa()  # PyPI's wheel: AVX2; `make setup-native`: this CPU's widest
    if args.isa == "avx2" and built_for != "AVX2":
        raise SystemExit(f"--isa avx2: llama.cpp here is compiled for {built_for}, which an emulated AVX2 run "
                         "cannot cap; run it where llama.cpp is PyPI's xllamacpp wheel (not after `make setup-native`)")
    print(f"CPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or 'none of avx2/avx512f/avx512_bf16/amx'}); "
          f"llama.cpp compiled for {built_for}", flush=True)
    prompts = notice_prompts(2)
    print(f"model {args.model}; {args.new_tokens} new tokens at most, greedy (seed {args.seed}); legal-notice prompts "
          f"(system prompt + case, e.g. {len(prompts[0][1]['content'])} characters); concurrency {args.concurrency}; "
          f"requests per row max({args.requests or 2}, concurrency)", flush=True)
    arms = [{"name": "hf", "engine": "hf"}]
    for i, ref in enumerate([(args.model, p) for p in precisions] + [(f, "auto") for f in args.gguf]):
        t = time.perf_counter()
        path, kind = gguf_for(*ref)
        print(f"GGUF {kind}: {path} ({time.perf_counter() - t:.1f} s)", flush=True)
        arms.append({"name": f"llama.cpp-{i}-{kind}", "engine": "llama.cpp", "gguf": str(path)})
    for p in [p.strip() for p in args.speculative.split(",") if p.strip()]:
        path, kind = gguf_for(args.model, p)
        arms.append({"name": f"llama.cpp-{kind}-ngram", "engine": "llama.cpp", "gguf": str(path), "speculative": "ngram"})
    child_argv = sys.argv[1:]
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        for arm in arms:
            print(f"\n== {arm['name']}", flush=True)
            results.append(spawn_arm(arm, child_argv, Path(work)))
    rows = [r for res in results for r in res["rows"]]
    base = next(r for r in rows if r["engine"] == "hf")
    print(f"\nCPU: {describe_cpu(cpu)}; model {args.model}; {args.new_tokens} new tokens, greedy; "
          f"hf: one request at a time ({base['precision']}); llama.cpp (compiled for {built_for}): "
          f"{results[1]['threads'] if len(results) > 1 else '-'} threads, {max(concurrency)} slots")
    report(rows, base)
    checks = verdicts(rows, base)
    for v in checks:
        print(f"llama.cpp {v['precision']} {v['path']}: {v['what']} = {v['ratio']:.1f}x HF at concurrency 1 "
              f"(target >= {v['target']:g}x: {'PASS' if v['pass'] else 'FAIL'})")
    total = time.perf_counter() - started
    print(f"\n(whole run {total:.0f} s)")
    if args.out:
        import importlib.metadata as md

        from tunewise.paths import atomic_write_text

        versions = {}
        for pkg in ("xllamacpp", "torch", "transformers"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        atomic_write_text(args.out, json.dumps({
            "cpu": cpu, "cpu_line": describe_cpu(cpu), "isa": args.isa, "llamacpp_built_for": built_for,
            "model": args.model,
            "new_tokens": args.new_tokens,
            "concurrency": concurrency, "requests": args.requests, "seed": args.seed, "quick": args.quick,
            "prompt_seed": PROMPT_SEED, "versions": versions, "run_s": total,
            "arms": [{k: v for k, v in res.items() if k != "rows"} for res in results],
            "rows": rows, "baseline": base, "targets": checks,
        }, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    from tunewise.hardware import restart_with_isa

    restart_with_isa(str(Path(__file__).resolve()), sys.argv[1:], dict(os.environ))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
