"""Greedy decoding through llama.cpp's sampler chain: top_k 0 (the whole vocabulary) against top_k 1.

    .venv/bin/python bench/greedy_sampler.py --out bench/greedy_sampler.json
    .venv/bin/python bench/greedy_sampler.py --precision q8_0 --rounds 3
    PYTHONPATH=/path/to/native/site .venv/bin/python bench/greedy_sampler.py --precision bf16

At temperature 0 llama.cpp keeps the most likely token either way, but with top_k 0 the rest of
its sampler chain sees all of the model's vocabulary (SmolLM2: 49,152 tokens) for every generated
token, and top-p below 1 sorts it; with top_k 1 the first sampler leaves a single candidate.
tunewise's llama.cpp engine sends top_k 1 for greedy requests since session 11; this measures what
that buys (``--top-p 0.95``: what many OpenAI clients send with temperature 0), in one process, on the legal-notice prompts of bench/serve_throughput.py
(200 new tokens at most): one request at a time, then ``--concurrency`` (16) at once, top_k 0 and 1
alternating for ``--rounds`` rounds, each round on fresh prompts (the same ones for both). Prints
generated tokens/s for each, the ratio (1 over 0, the median over rounds) and how many answers
were word for word the same. ~4 min on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_throughput import notice_prompts, run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, HF directory, run or GGUF")
    ap.add_argument("--precision", default="auto", help="llama.cpp weight type (auto: as tunewise picks)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests at once in the second row")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--single", type=int, default=3, help="requests answered one at a time per round")
    ap.add_argument("--top-p", type=float, default=1.0, help="the requests' top_p (1: off; OpenAI clients often send 0.95 or 0.9)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    if min(args.concurrency, args.rounds, args.single, args.new_tokens) < 1:
        ap.error("--concurrency, --rounds, --single and --new-tokens take whole numbers of at least 1")
    if not 0 < args.top_p <= 1:
        ap.error("--top-p takes a number above 0 and at most 1, e.g. 0.95")

    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.infer.llamacpp import LlamaCppEngine, build_isa
    from tunewise.infer.types import Request
    from tunewise.paths import atomic_write_text

    cpu = cpu_info()
    eng = LlamaCppEngine(args.model, precision=args.precision, n_parallel=args.concurrency,
                         ctx_per_request=args.new_tokens + 512)
    build = build_isa()
    print(f"CPU: {describe_cpu(cpu)}; llama.cpp build: {build}; {eng.gguf.name} ({eng.precision}); "
          f"{args.new_tokens} new tokens, greedy, top_p {args.top_p}", flush=True)

    def call_with(top_k: int):
        def call(messages: list[dict]) -> dict:
            body = dict(eng._body(Request(messages, max_tokens=args.new_tokens, top_p=args.top_p)),
                        top_k=top_k)
            out = eng._call(body)
            return {"tokens": out["usage"]["completion_tokens"], "text": out["choices"][0]["message"]["content"]}
        return call

    eng.generate([Request([{"role": "user", "content": "Hi"}], max_tokens=4)] * args.concurrency)  # warm every slot
    per_round = args.single + args.concurrency * 2
    rows, same, total = [], 0, 0
    for r in range(args.rounds):
        prompts = notice_prompts(per_round * (r + 1))[per_round * r:]
        for conc, chunk in ((1, prompts[:args.single]), (args.concurrency, prompts[args.single:])):
            texts = {}
            for top_k in (0, 1):
                results, wall = run_load(call_with(top_k), chunk, conc)
                tps = sum(x["tokens"] for x in results) / wall
                texts[top_k] = [x["text"] for x in results]
                rows.append({"round": r + 1, "concurrency": conc, "top_k": top_k, "requests": len(chunk),
                             "tokens_per_s": tps})
                print(f"round {r + 1}, concurrency {conc:>2}, top_k {top_k}: {tps:6.1f} tokens/s", flush=True)
            same += sum(a == b for a, b in zip(texts[0], texts[1]))
            total += len(chunk)
    eng.close()
    summary = {}
    for conc in (1, args.concurrency):
        ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(
            [x for x in rows if x["concurrency"] == conc and x["top_k"] == 0],
            [x for x in rows if x["concurrency"] == conc and x["top_k"] == 1])]
        summary[f"ratio_c{conc}"] = statistics.median(ratios)
        print(f"concurrency {conc}: top_k 1 / top_k 0 = {statistics.median(ratios):.2f}x "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"identical answers: {same} of {total}")
    if args.out:
        atomic_write_text(args.out, json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": describe_cpu(cpu), "llama_cpp_build": build,
            "gguf": eng.gguf.name, "precision": eng.precision, "new_tokens": args.new_tokens, "top_p": args.top_p,
            "rows": rows, **summary, "identical_answers": same, "answers": total}, indent=1) + "\n")


if __name__ == "__main__":
    main()
