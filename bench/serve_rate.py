"""Request-rate sweep against `tunewise serve`: how many queries an hour this machine answers within
a latency bound — open-loop arrivals, as real users send them (not a fixed number of clients that
wait for each answer, as bench/serve_throughput.py's concurrency rows do).

    .venv/bin/python bench/serve_rate.py --out bench/serve_rate.json
    .venv/bin/python bench/serve_rate.py --rates 0.5,1,2 --requests 40 --slo 20
    .venv/bin/python bench/serve_rate.py --model runs/notices --precision q8_0

For each rate (requests/s) it sends ``--requests`` legal-notice prompts (bench/serve_throughput.py's:
the scenario's system prompt and a generated case, ``--new-tokens`` 200 at most, greedy) with
exponential gaps between arrivals (a Poisson process, seeded), each from its own thread through the
official openai client, streaming, to `tunewise serve` on a loopback port (llama.cpp, ``--slots``
16, the precision tunewise picks unless given). Every slot first answers one short request, as in a
server in service. Per rate it prints: the offered rate, the rate requests really arrived at and
the rate answers came back at (each from the first to the last), generated tokens/s, time to first
token and request latency p50/p95, time per output token (TPOT: (latency - TTFT) / (tokens - 1))
p50, requests the server turned away (429 when its queue is full, 503 after waiting too long) or
that failed, and whether the rate holds: every request answered, p95 latency within ``--slo``
seconds (30), and answers coming back at least 0.9x as fast as requests arrived (both over the
requests after the first quarter, which meet a server still filling up). A server that
falls behind builds a queue, so a longer run at that rate would break any latency bound however
good a short run looks. The capacity line names the highest rate that holds and its answer rate as
queries per hour; the sweep stops after the first rate that does not hold.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_throughput import http_call, notice_prompts, openai_client, percentile  # noqa: E402


def arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``n`` requests arriving at ``rate`` a second on average
    (exponential gaps; the first at 0)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def run_rate(call, prompts: list[list[dict]], times: list[float]) -> tuple[list[dict], float]:
    """Each prompt sent at its time from its own thread; returns each result (``status``: ok,
    rejected or error) and the wall time from the first send to the last answer."""
    import openai

    results: list[dict] = [{} for _ in prompts]

    def one(i: int) -> None:
        t = time.perf_counter()
        sent = t - start
        try:
            out = call(prompts[i])
            out.update(status="ok", latency_s=time.perf_counter() - t)
        except openai.APIStatusError as e:  # 429/503: the server's "busy, retry after" turns it away
            out = ({"status": "rejected"} if e.status_code in (429, 503)
                   else {"status": "error", "error": f"{e.status_code}: {e}"})
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            out = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        out.update(sent_s=sent, done_s=time.perf_counter() - start)
        results[i] = out

    start = time.perf_counter()
    threads = []
    for i, at in enumerate(times):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=one, args=(i,), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    return results, time.perf_counter() - start


def spread_rate(times: list[float]) -> float | None:
    """Events a second between the first and the last of ``times`` (None for fewer than two)."""
    return (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 and max(times) > min(times) else None


def rate_row(rate: float, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    settled = results[len(results) // 4:]  # after the first quarter, which meets an idle server
    tokens = sum(r["tokens"] for r in ok)
    tpot = [(r["latency_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in ok
            if r.get("ttft_s") is not None and r["tokens"] > 1]
    return {"rate": rate, "requests": len(results), "answered": len(ok),
            "rejected": sum(r["status"] == "rejected" for r in results),
            "errors": [r["error"] for r in results if r["status"] == "error"],
            "wall_s": wall, "answered_per_s": len(ok) / wall if wall > 0 else 0.0,
            # the rate requests really arrived at (this sample of the Poisson process), and the
            # rate answers came back at: a server that keeps up answers as fast as they arrive.
            # Both over the settled requests: the first ones meet an idle server and come back
            # sooner than any later one, which alone would read as falling behind.
            "arrival_rate": spread_rate([r["sent_s"] for r in settled]),
            "completion_rate": spread_rate([r["done_s"] for r in settled if r["status"] == "ok"]),
            "per_request": [{k: r.get(k) for k in ("status", "sent_s", "done_s", "ttft_s", "tokens")} for r in results],
            "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "ttft_p50_s": percentile([r["ttft_s"] for r in ok], 50), "ttft_p95_s": percentile([r["ttft_s"] for r in ok], 95),
            "latency_p50_s": percentile([r["latency_s"] for r in ok], 50),
            "latency_p95_s": percentile([r["latency_s"] for r in ok], 95),
            "tpot_p50_s": percentile(tpot, 50)}


#: a rate is kept up with when answers come back at least this share of the rate requests arrived at
KEEP_UP = 0.9


def keeps_up(row: dict) -> bool:
    return (row["completion_rate"] is not None and row["arrival_rate"] is not None
            and row["completion_rate"] >= KEEP_UP * row["arrival_rate"])


def within(row: dict, slo: float) -> bool:
    """Every request answered, p95 latency within ``slo`` seconds, and answers as fast as arrivals
    (else the queue grows, and a longer run would blow any latency bound)."""
    return (not row["rejected"] and not row["errors"] and row["answered"] == row["requests"]
            and row["latency_p95_s"] is not None and row["latency_p95_s"] <= slo and keeps_up(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, HF directory, run or GGUF")
    ap.add_argument("--precision", default="auto", help="llama.cpp weight type (auto: as tunewise picks)")
    ap.add_argument("--rates", default="0.2,0.35,0.5,0.75,1", help="comma-separated arrival rates, requests/s, low to high")
    ap.add_argument("--requests", type=int, default=32, help="requests per rate")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--slots", type=int, default=16, help="llama.cpp slots (requests decoded together)")
    ap.add_argument("--queue", type=int, default=64, help="requests the server holds beyond its slots before 429")
    ap.add_argument("--slo", type=float, default=30.0, help="p95 request latency bound, seconds, for the capacity line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    try:
        rates = sorted(float(r) for r in args.rates.split(",") if r.strip())
    except ValueError:
        ap.error("--rates takes comma-separated numbers, e.g. 0.5,1,2")
    if not rates or rates[0] <= 0 or args.requests < 2:
        ap.error("--rates must be positive and --requests at least 2")
    if args.slots < 1 or args.queue < 0 or args.new_tokens < 1 or args.slo <= 0:
        ap.error("--slots and --new-tokens take at least 1, --queue 0 or more, --slo a positive number of seconds")

    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.infer.llamacpp import LlamaCppEngine, build_isa
    from tunewise.paths import atomic_write_text
    from tunewise.serve import Limits, ServerThread, create_app

    cpu = describe_cpu(cpu_info())
    engine = LlamaCppEngine(args.model, precision=args.precision, n_parallel=args.slots,
                            ctx_per_request=args.new_tokens + 512)
    print(f"CPU: {cpu}; llama.cpp compiled for {build_isa() or 'unknown'}; {engine.gguf.name} ({engine.precision}), "
          f"{args.slots} slots, queue {args.queue}; {args.requests} legal-notice requests per rate, "
          f"{args.new_tokens} new tokens at most, greedy, streamed", flush=True)
    app = create_app(engine, "bench", limits=Limits(max_tokens_limit=args.new_tokens, queue_size=args.queue))
    server = ServerThread(app).start()
    rows = []
    try:
        call = http_call(openai_client(server.url), "bench", args.new_tokens, args.seed)
        short = http_call(openai_client(server.url), "bench", 1, args.seed)
        warm = notice_prompts(args.slots, seed=99)
        run_rate(short, warm, [0.0] * len(warm))
        prompts = notice_prompts(args.requests * len(rates))
        for k, rate in enumerate(rates):
            chunk = prompts[k * args.requests:(k + 1) * args.requests]
            results, wall = run_rate(call, chunk, arrivals(rate, len(chunk), args.seed + k))
            row = rate_row(rate, results, wall)
            rows.append(row)
            print(f"  {rate:g} requests/s offered: answered {row['answered']}/{row['requests']}, arrivals "
                  f"{row['arrival_rate'] or 0:.2f}/s, answers {row['completion_rate'] or 0:.2f}/s, "
                  f"{row['tokens_per_s']:.1f} tokens/s, latency p95 {row['latency_p95_s'] or 0:.1f} s", flush=True)
            if not within(row, args.slo):
                break
    finally:
        server.stop()

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    print(f"\n{'offered/s':>9} {'arrived/s':>9} {'answered/s':>10} {'tokens/s':>9} {'TTFT p50':>9} {'p95':>6} "
          f"{'latency p50':>12} {'p95':>7} {'TPOT p50':>9} {'429':>4} {'errors':>6}  holds")
    for r in rows:
        print(f"{r['rate']:>9g} {f(r['arrival_rate']):>9} {f(r['completion_rate']):>10} {r['tokens_per_s']:>9.1f} "
              f"{f(r['ttft_p50_s']):>9} {f(r['ttft_p95_s']):>6} {f(r['latency_p50_s']):>12} {f(r['latency_p95_s']):>7} "
              f"{f(r['tpot_p50_s'], '.3f'):>9} {r['rejected']:>4} {len(r['errors']):>6}  "
              f"{'yes' if within(r, args.slo) else 'no'}")
    for r in rows:
        for e in r["errors"][:3]:
            print(f"  error at {r['rate']:g}/s: {e}")
    ok = [r for r in rows if within(r, args.slo)]
    if ok:
        best = ok[-1]
        capacity = (f"capacity within p95 <= {args.slo:g} s: {best['rate']:g} requests/s offered "
                    f"({best['completion_rate']:.2f}/s answered), {best['completion_rate'] * 3600:,.0f} queries/hour")
    else:
        capacity = f"no rate tried kept p95 latency within {args.slo:g} s; try lower --rates"
    print(capacity)
    if args.out:
        atomic_write_text(args.out, json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu, "llamacpp_built_for": build_isa(),
            "gguf": engine.gguf.name, "precision": engine.precision, "slots": args.slots, "queue": args.queue,
            "new_tokens": args.new_tokens, "requests_per_rate": args.requests, "slo_p95_s": args.slo,
            "rows": rows, "capacity": capacity}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
