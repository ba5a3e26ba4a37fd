"""Benchmark `tunewise data check` on a generated 100,000-row Alpaca JSONL (realistic lengths).

Prints the CPU (model, kind, cores, the avx2/avx512f/avx512_bf16/amx flags), then rows/s, wall time
and peak RSS, for the full size and for a 10x smaller file (each in its own process), so memory
growth with file size is visible, plus a baseline measured in the same run: plain `json.loads` of
every line (the floor any checker pays to read the file).

``--against DIR`` also times the full-size check with the tunewise of another checkout (e.g. the
commit before a change: ``git worktree add /tmp/old HEAD~1``), alternating old and new ``--repeat``
times in the same run, checks both give the same report figures, and prints the ratio: on a
machine other work shares, only such same-run ratios compare.

    .venv/bin/python bench/data_check.py                # 100,000 rows, embedded smollm2-135m tokenizer
    .venv/bin/python bench/data_check.py --rows 20000 --model path/to/tokenizer-or-model
    .venv/bin/python bench/data_check.py --against /tmp/old --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will can more other about many some them "
    "time these may could into only new years used first over such most people two after made like also between did "
    "model data training learning network language system process function value example number result method "
    "question answer explain describe write list summarize translate classify customer order price payment delivery "
    "India Mumbai Bengaluru rupee invoice account policy refund support ticket product feature release version error "
    "because however therefore although while where step first second finally important consider approach provide"
).split()


def sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def paragraph(rng: random.Random, words: int) -> str:
    out, left = [], words
    while left > 0:
        n = min(left, rng.randint(6, 22))
        out.append(sentence(rng, n))
        left -= n
    return " ".join(out)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Alpaca rows: instructions of ~5-40 words, an input on 40% of rows, responses log-normal
    around ~120 words (long tail to ~1,500), 1% exact duplicates."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        previous: list[str] = []
        for i in range(rows):
            if previous and rng.random() < 0.01:
                f.write(rng.choice(previous))
                continue
            row = {
                "instruction": sentence(rng, rng.randint(5, 40)),
                "input": paragraph(rng, rng.randint(10, 80)) if rng.random() < 0.4 else "",
                "output": paragraph(rng, min(1500, max(3, int(rng.lognormvariate(4.8, 0.7))))),
            }
            line = json.dumps(row, ensure_ascii=False) + "\n"
            f.write(line)
            if len(previous) < 1000:
                previous.append(line)


def child(path: str, model: str, mode: str) -> None:
    """Run one measurement in this process and print a JSON line."""
    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    if mode == "baseline":
        n = 0
        with open(path, "rb") as f:
            for line in f:
                json.loads(line)
                n += 1
        extra = {}
    else:
        from tunewise.data.check import check_dataset
        from tunewise.models import load_tokenizer

        tok = load_tokenizer(model)
        t0, c0 = time.perf_counter(), cpu()  # the tokenizer load is a fixed cost, not per-row work
        report = check_dataset(path, model=model, tokenizer=tok, sequence_len=2048)
        n = report.rows
        extra = {"errors": report.n_errors, "warnings": report.n_warnings,
                 "tokens": report.stats["tokens_per_epoch"], "duplicates": report.stats["duplicates"]}
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": n, "seconds": seconds, "cpu_seconds": cpu() - c0, "peak_rss_mb": peak_mb, **extra}))


def run_child(path: Path, model: str, mode: str, src: Path | None = None) -> dict:
    """One measurement in a fresh process; ``src``: import tunewise from that source tree instead."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--model", model, "--mode", mode],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_line() -> str:
    """The machine the figures come from: model, kind, cores and the matmul-relevant flags."""
    from tunewise.hardware import cpu_info, describe_cpu

    info = cpu_info()
    return f"CPU: {describe_cpu(info)} · flags: {' '.join(info['flags']) or 'none of avx2/avx512f/avx512_bf16/amx'}"


def _figures(r: dict) -> tuple:
    return (r["rows"], r["errors"], r["warnings"], r["tokens"], json.dumps(r["duplicates"], sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--child")
    ap.add_argument("--mode", default="check")
    ap.add_argument("--against", type=Path, help="another checkout to time in the same run (its src/ is imported)")
    ap.add_argument("--repeat", type=int, default=1, help="with --against: old/new pairs to alternate")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.mode)
        return
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    old_src = None
    if args.against is not None:
        old_src = args.against / "src"
        if not (old_src / "tunewise").is_dir():
            ap.error(f"--against {args.against}: no src/tunewise there")
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl"
        t = time.perf_counter()
        generate(big, args.rows)
        generate(small, max(1, args.rows // 10), seed=1)
        print(f"generated {args.rows:,} rows ({big.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s")
        base = run_child(big, args.model, "baseline")
        print(f"baseline json.loads per line: {base['rows'] / base['seconds']:,.0f} rows/s ({base['seconds']:.1f}s)")
        small_r = run_child(small, args.model, "check")
        big_r = run_child(big, args.model, "check")
        for name, r in (("small", small_r), ("full", big_r)):
            print(f"data check {name}: {r['rows']:,} rows in {r['seconds']:.1f}s = {r['rows'] / r['seconds']:,.0f} rows/s "
                  f"(CPU {r['cpu_seconds']:.1f}s over all threads), "
                  f"{r['tokens'] / r['seconds']:,.0f} tokens/s, peak RSS {r['peak_rss_mb']:,.0f} MB "
                  f"(errors {r['errors']}, warnings {r['warnings']}, duplicates {r['duplicates']})")
        print(f"check / baseline time: {big_r['seconds'] / base['seconds']:.1f}x")
        print(f"peak RSS full / small (10x the rows): {big_r['peak_rss_mb'] / small_r['peak_rss_mb']:.2f}x "
              f"(+{big_r['peak_rss_mb'] - small_r['peak_rss_mb']:,.0f} MB for {big_r['rows'] - small_r['rows']:,} more rows)")
        cores = os.cpu_count() or 1
        print(f"target: whole check < 60 s -> {'met' if big_r['seconds'] < 60 else 'NOT met'} "
              f"({cores} CPUs, load average {os.getloadavg()[0]:.1f}; on a busy machine the CPU "
              f"seconds are the fairer figure: at best {big_r['cpu_seconds'] / cores:.0f}s wall with all cores free)")
        if old_src is not None:
            new_runs, old_runs = [big_r], []
            for k in range(args.repeat):
                old_runs.append(run_child(big, args.model, "check", src=old_src))
                if k:
                    new_runs.append(run_child(big, args.model, "check"))
            for r in old_runs + new_runs:
                if _figures(r) != _figures(big_r):
                    raise SystemExit(f"the two checkouts disagree: {_figures(r)} vs {_figures(big_r)}")
            for name, runs in (("old", old_runs), ("new", new_runs)):
                print(f"{name} ({args.against if name == 'old' else 'this checkout'}): "
                      + ", ".join(f"{r['seconds']:.1f}s wall / {r['cpu_seconds']:.1f}s CPU / {r['peak_rss_mb']:,.0f} MB"
                                  for r in runs))
            ow, nw = min(r["seconds"] for r in old_runs), min(r["seconds"] for r in new_runs)
            oc, nc = min(r["cpu_seconds"] for r in old_runs), min(r["cpu_seconds"] for r in new_runs)
            print(f"old / new, best of each: wall {ow / nw:.2f}x, CPU seconds {oc / nc:.2f}x (same report figures)")


if __name__ == "__main__":
    main()
