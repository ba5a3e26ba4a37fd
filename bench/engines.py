"""Which engine answers many requests fastest on this machine: Hugging Face one at a time, HF padded
batches (``hf-batch``) and llama.cpp (f16, q8_0), all on the same prompts (issue 14 item 1).

The embedded model (or ``--model``), 16 short legal-notice instructions, greedy, ``--tokens`` new
tokens (128). Each row times ``generate`` on its share of the prompts after one untimed warm-up
request; the figure is the aggregate rate, generated tokens over wall time. Concurrency 1 runs the
first 4 prompts, concurrency 4 the first 8 (two waves), 16 all of them. llama.cpp (16 slots) is
driven by as many threads as the concurrency, each sending one request at a time; hf-batch's
concurrency is its batch size. ``identical`` is the share of answers equal to the HF reference's on
the prompts both answered (the first 4). Prints the CPU line, the table, ratios against HF at
concurrency 1, and writes the JSON.

    .venv/bin/python bench/engines.py                       # about 2 minutes on 2 quiet cores
    .venv/bin/python bench/engines.py --tokens 32 --json /tmp/engines.json
    .venv/bin/python bench/engines.py --cb                  # also transformers' continuous batching
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

SUBJECTS = [
    "the water supply to the building will be shut off on Monday from 9 to 12 for repairs",
    "the car park will be closed for resurfacing next weekend",
    "customer data is processed under the General Data Protection Regulation",
    "the company accepts no liability for items left in the lockers",
    "the shop's opening hours change from 1 March",
    "recording of this meeting is not permitted",
    "the product must not be used by children under three",
    "photographs taken at the event may be published on the website",
    "the lease ends on 30 June and the keys must be returned that day",
    "unpaid invoices will incur a late fee after 30 days",
    "the terms of service were updated and take effect in two weeks",
    "the swimming pool is unsupervised and guests swim at their own risk",
    "access to the server room is restricted to authorised staff",
    "the warranty does not cover damage caused by misuse",
    "cookies are used on this website to measure traffic",
    "the annual general meeting will be held online on 12 May",
]
PROMPTS = [f"Write a short legal notice stating that {s}." for s in SUBJECTS]
SHARE = {1: 4, 4: 8, 16: 16}  # prompts answered per concurrency


def _load() -> float:
    return os.getloadavg()[0]


def timed(engine, requests, concurrency: int, threaded: bool) -> dict:
    """Answer ``requests`` and time them; ``threaded``: ``concurrency`` threads each sending one
    request at a time (llama.cpp's slots), else one ``generate`` call (the engine batches)."""
    engine.generate([replace(requests[0], max_tokens=8)])  # warm-up, untimed
    load_before = _load()
    start = time.perf_counter()
    if threaded:
        out = [None] * len(requests)
        lock, nxt = threading.Lock(), iter(range(len(requests)))

        def worker():
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                out[i] = engine.generate([requests[i]])[0]

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        out = engine.generate(requests)
    wall = time.perf_counter() - start
    tokens = sum(c.output_tokens for c in out)
    return {"prompts": len(requests), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "stopped": sum(c.finish_reason == "stop" for c in out),
            "load_before": round(load_before, 2), "load_after": round(_load(), 2),
            "texts": [c.text for c in out]}


def cb_row(model, tokenizer, requests, tokens: int) -> dict:
    """transformers' continuous batching (``model.generate_batch``) on all requests, cache sized
    to them (left to itself it reserves 90 % of free RAM, 15 s to allocate on this machine)."""
    import math

    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from tunewise.infer.hf import render_prompt, stop_token_ids

    ids = [tokenizer(render_prompt(tokenizer, r.messages), add_special_tokens=False)["input_ids"] for r in requests]
    stops = stop_token_ids(tokenizer, model)
    gen = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    page = 64
    cfg = ContinuousBatchingConfig(page_size=page, max_batch_tokens=1024, max_requests_per_batch=len(ids),
                                   num_blocks=len(ids) * math.ceil((max(map(len, ids)) + tokens) / page) + 2,
                                   allow_block_sharing=False)
    model.generate_batch(ids[:1], generation_config=gen, continuous_batching_config=cfg, max_new_tokens=8)
    load_before = _load()
    start = time.perf_counter()
    res = model.generate_batch(ids, generation_config=gen, continuous_batching_config=cfg, max_new_tokens=tokens)
    wall = time.perf_counter() - start
    n = sum(len(r.generated_tokens) for r in res.values())
    texts = [tokenizer.decode(r.generated_tokens, skip_special_tokens=True).strip() for r in res.values()]
    return {"prompts": len(ids), "tokens": n, "seconds": round(wall, 2), "tokens_per_s": round(n / wall, 2),
            "stopped": sum(bool(r.generated_tokens) and r.generated_tokens[-1] in stops for r in res.values()),
            "load_before": round(load_before, 2), "load_after": round(_load(), 2), "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="embedded name or HF directory")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per request (greedy)")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")), help="where the results go")
    ap.add_argument("--cb", action="store_true", help="add transformers' continuous batching (batch 16)")
    args = ap.parse_args()
    if args.tokens < 1:
        raise SystemExit("--tokens must be at least 1")

    import torch

    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.infer import Request, open_engine
    from tunewise.infer.hf import HFEngine
    from tunewise.infer.hf_batch import HFBatchEngine
    from tunewise.paths import atomic_write_text

    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or '-'})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; "
          f"{len(PROMPTS)} prompts, {args.tokens} new tokens, greedy; load average {_load():.2f}")
    reqs = [Request([{"role": "user", "content": p}], max_tokens=args.tokens) for p in PROMPTS]
    rows: list[dict] = []

    def add(engine: str, precision: str, concurrency: int, result: dict) -> None:
        rows.append({"engine": engine, "precision": precision, "concurrency": concurrency, **result})
        print(f"  {engine:<10}{precision:<6} c={concurrency:<3} {result['tokens_per_s']:>7.1f} tok/s "
              f"({result['tokens']} tokens / {result['seconds']} s, load {result['load_after']})", flush=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    hf = HFBatchEngine(args.model, batch_size=1)
    ref = HFEngine.from_loaded(hf.hf_model, hf.tokenizer, args.model)
    add("hf", ref.precision, 1, timed(ref, reqs[:SHARE[1]], 1, threaded=False))
    for b in (1, 4, 16):
        hf.batch_size = b
        add("hf-batch", hf.precision, b, timed(hf, reqs[:SHARE[b]], b, threaded=False))
    if args.cb:
        add("hf-cb", hf.precision, 16, cb_row(hf.hf_model, hf.tokenizer, reqs, args.tokens))
    hf.close()
    for precision in ("f16", "q8_0"):
        cpp = open_engine(args.model, engine="llama.cpp", precision=precision, n_parallel=16,
                          ctx_per_request=512 if args.tokens <= 384 else args.tokens + 128)
        for c in (1, 4, 16):
            add("llama.cpp", cpp.precision, c, timed(cpp, reqs[:SHARE[c]], c, threaded=True))
        cpp.close()

    base = rows[0]["tokens_per_s"]
    reference = rows[0]["texts"]
    print(f"\n{'engine':<10}{'precision':<11}{'conc.':>6}{'prompts':>8}{'tokens/s':>10}{'vs HF c=1':>11}"
          f"{'identical':>11}{'load':>7}")
    for r in rows:
        r["vs_hf"] = round(r["tokens_per_s"] / base, 2)
        same = sum(a == b for a, b in zip(r["texts"], reference))
        r["identical_to_hf"] = f"{same}/{min(len(r['texts']), len(reference))}"
        print(f"{r['engine']:<10}{r['precision']:<11}{r['concurrency']:>6}{r['prompts']:>8}"
              f"{r['tokens_per_s']:>10.1f}{r['vs_hf']:>10.2f}x{r['identical_to_hf']:>11}{r['load_after']:>7.2f}")
    loads = [r[k] for r in rows for k in ("load_before", "load_after")]
    result = {"date": started.isoformat(timespec="seconds"), "cpu": describe_cpu(cpu), "flags": cpu["flags"],
              "torch_threads": torch.get_num_threads(), "model": args.model, "tokens": args.tokens,
              "prompts": PROMPTS, "load_average_1min": {"min": min(loads), "max": max(loads)}, "rows": rows}
    atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
    print(f"\nload average (1 min) during the run: {min(loads):.2f} - {max(loads):.2f}; wrote {args.json}")


if __name__ == "__main__":
    main()
