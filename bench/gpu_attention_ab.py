"""GPU A/B of the training attention: tunewise's per-example attention (one SDPA call per packed
example, what CUDA runs used before session 8) against transformers' sdpa over the packed row (what
CUDA runs use now, tunewise.train.attention.choose), plus packing off, lean_activations off and a
cProfile of a few steps of the per-example variant. LoRA, 2,048-token rows, micro-batch 4, 8 steps,
random-weight models of real shapes (bench/gpu_train.py builds them).

Run on a CUDA machine, from the repo root, with the inputs bench/gpu_train.py describes in
.gpucheck/ (tokenizer/ and alpaca_en_demo.json) and PYTHONPATH reaching src/:
    python3 bench/gpu_attention_ab.py OUT_DIR [--budget-s 230]
It prints each variant's figures and writes them to OUT_DIR/gpu_attention_ab.json.
Session 8's output (an H200) is bench/gpu_train_h200_attention.txt; there "default" was the
per-example path (now "per-example") and "sdpa" what is now the default.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
INPUTS = REPO / ".gpucheck"
# (shape, variant) in order of importance: later ones are skipped when the budget runs out
PLAN = [("smollm2-135m", "per-example"), ("smollm2-135m", "default"), ("smollm2-135m", "prof-per-example"),
        ("llama-1b-shape", "default"), ("smollm2-135m", "nopack"), ("smollm2-135m", "default-nolean"),
        ("llama-1b-shape", "per-example")]


def child(variant: str, model_dir: str, out: str, steps: int) -> None:
    """One LoRA run of ``variant`` in this process; prints its figures as one JSON line."""
    import gpu_train as G

    import tunewise.train.attention as A
    from tunewise.config import load_config
    from tunewise.train.trainer import train

    if "per-example" in variant:  # force tunewise's own attention on CUDA too (the old behaviour)
        A.choose = lambda config, n, device: (True, None)
    settings = argparse.Namespace(seq=2048, micro_batch=4, steps=steps)
    y = Path(out) / "run.yaml"
    G.write_run_yaml(y, Path(model_dir), INPUTS / "alpaca_en_demo.json", "lora", Path(out) / "run", settings)
    overrides = {"lean_activations": False} if "nolean" in variant else {}
    if "nopack" in variant:
        overrides["packing"] = False
    cfg = load_config(y, overrides)
    t = time.perf_counter()
    profile = cProfile.Profile() if "prof" in variant else None
    if profile:
        profile.enable()
    res = train(cfg, progress=False, overwrite=True)
    if profile:
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(28)
        print(text.getvalue()[:9000])
    rows = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")][2:]  # after CUDA warm-up
    print(json.dumps({"variant": variant, "wall_s": round(time.perf_counter() - t, 1),
                      "steady_tok_s": round(statistics.median(rates)) if rates else None,
                      "rates": [round(x) for x in rates],
                      "peak_alloc_gb": round((res.peak_gpu_allocated_bytes or 0) / 1e9, 2)}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for gpu_attention_ab.json")
    ap.add_argument("--budget-s", type=float, default=230, help="start no variant after this many seconds")
    args = ap.parse_args()
    import gpu_train as G

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-attention-ab-"))
    t0, results = time.perf_counter(), []
    for shape, variant in PLAN:
        if time.perf_counter() - t0 > args.budget_s:
            print("budget: skip", shape, variant)
            continue
        model_dir = work / shape
        if not model_dir.exists():
            model_dir.mkdir()
            print(G.build_model(shape, model_dir, INPUTS / "tokenizer")["parameters"], flush=True)
        run_dir = work / f"{shape}-{variant}"
        run_dir.mkdir()
        r = subprocess.run([sys.executable, __file__, "child", variant, str(model_dir), str(run_dir),
                            "5" if "prof" in variant else "8"], capture_output=True, text=True, timeout=200)
        print(f"== {shape} {variant} rc={r.returncode}", flush=True)
        print(r.stdout[-9500:], flush=True)
        if r.returncode:
            print(r.stderr[-3000:], flush=True)
        lines = [line for line in r.stdout.splitlines() if line.startswith('{"variant"')]
        results.append({"shape": shape, "rc": r.returncode, **(json.loads(lines[-1]) if lines else {"variant": variant})})
        (args.out / "gpu_attention_ab.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
