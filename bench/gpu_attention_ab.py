"""GPU A/B of the training attention: tunewise's per-example attention (one SDPA call per packed
example, what CUDA runs used before session 8) against transformers' sdpa over the packed row (what
CUDA runs use now, tunewise.train.attention.choose), plus packing off, lean_activations off and a
cProfile of a few steps of the per-example variant. LoRA, 2,048-token rows, micro-batch 4, 8 steps,
random-weight models of real shapes (bench/gpu_train.py builds them).

Run on a CUDA machine, from the repo root, with the inputs bench/gpu_train.py describes in
.gpucheck/ (tokenizer/ and alpaca_en_demo.json) and PYTHONPATH reaching src/:
    python3 bench/gpu_attention_ab.py OUT_DIR
Session 8's output (an H200) is bench/gpu_train_h200_attention.txt; there "default" was the
per-example path (now "per-example") and "sdpa" what is now the default.
"""
import cProfile, io, json, os, pstats, statistics, subprocess, sys, time
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

def child(variant, model_dir, out, steps):
    import torch
    import tunewise.train.attention as A
    from tunewise.config import load_config
    from tunewise.train.trainer import train
    import gpu_train as G
    if "per-example" in variant:  # force tunewise's own attention on CUDA too (the old behaviour)
        A.choose = lambda config, n, device: (True, None)
    class Args: seq = 2048; micro_batch = 4; steps = 0
    Args.steps = steps
    y = Path(out) / "run.yaml"
    G.write_run_yaml(y, Path(model_dir), REPO / ".gpucheck" / "alpaca_en_demo.json", "lora", Path(out) / "run", Args)
    ov = {"lean_activations": False} if "nolean" in variant else {}
    if "nopack" in variant:
        ov["packing"] = False
    cfg = load_config(y, ov)
    t = time.perf_counter()
    if "prof" in variant:
        pr = cProfile.Profile(); pr.enable()
    res = train(cfg, progress=False, overwrite=True)
    if "prof" in variant:
        pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(28); print(s.getvalue()[:9000])
    rows = [json.loads(l) for l in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rates = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")][2:]
    print(json.dumps({"variant": variant, "wall_s": round(time.perf_counter() - t, 1), "steady_tok_s": round(statistics.median(rates)) if rates else None,
                      "rates": [round(x) for x in rates], "peak_alloc_gb": round((res.peak_gpu_allocated_bytes or 0) / 1e9, 2)}), flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])); sys.exit()
    out = Path(sys.argv[1]); work = Path("/tmp/prof"); work.mkdir(exist_ok=True)
    import gpu_train as G
    t0 = time.perf_counter()
    plan = [("smollm2-135m", "per-example"), ("smollm2-135m", "default"), ("smollm2-135m", "prof-per-example"),
            ("llama-1b-shape", "default"), ("smollm2-135m", "nopack"), ("smollm2-135m", "default-nolean"),
            ("llama-1b-shape", "per-example")]
    for shape, v in plan:
        md = work / shape
        if not md.exists():
            md.mkdir(); print(G.build_model(shape, md, REPO / ".gpucheck" / "tokenizer")["parameters"], flush=True)
        if True:
            if time.perf_counter() - t0 > 230:
                print("budget: skip", shape, v); continue
            d = work / f"{shape}-{v}"; d.mkdir(exist_ok=True)
            r = subprocess.run([sys.executable, __file__, "child", v, str(md), str(d), "5" if "prof" in v else "8"], capture_output=True, text=True, timeout=200)
            print(f"== {shape} {v} rc={r.returncode}", flush=True)
            print(r.stdout[-9500:], flush=True)
            if r.returncode: print(r.stderr[-3000:], flush=True)
