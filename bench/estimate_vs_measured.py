"""Check `tunewise estimate` against a real LoRA training loop on this machine.

Runs a few LoRA steps (PEFT + torch AdamW, fp32 on CPU) on the embedded smollm2-135m with real
text (the LLaMA-Factory Alpaca demo when present, else the model's own chat template text),
sequence 512, micro-batch 2, with and without gradient checkpointing, each in a fresh process.
Measures peak RSS above the process's baseline (before the model is loaded) and tokens/s, and the
CPU's fp32 peak FLOPS by a matmul in the same run; prints predicted vs measured and the ratio
(target: within 25%).

Run: .venv/bin/python bench/estimate_vs_measured.py [--steps 4] [--seq 512] [--batch 2]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRss:
    """Samples the process RSS every 2 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """Achievable fp32 FLOPS of this CPU (torch matmul, all threads)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    dt = time.perf_counter() - t
    del a, b
    return 2 * n**3 * reps / dt


def token_batches(tokenizer, seq: int, batch: int, steps: int):
    """Real text packed into (batch, seq) rows of token ids."""
    import torch

    data = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
    if data.is_file():
        rows = json.loads(data.read_text(encoding="utf-8"))
        text = "\n\n".join(f"{r['instruction']}\n{r.get('input', '')}\n{r['output']}" for r in rows)
    else:
        text = tokenizer.chat_template * 50
    ids = tokenizer(text)["input_ids"]
    need = seq * batch * steps
    while len(ids) < need:
        ids = ids + ids
    t = torch.tensor(ids[:need]).view(steps, batch, seq)
    return [t[i] for i in range(steps)]


def one(seq: int, batch: int, steps: int, checkpointing: bool) -> dict:
    """One configuration, in this (fresh) process."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunewise.estimate import DEFAULT_CPU_UTILISATION, TrainingSetup, estimate_memory, flops_per_token, load_shape
    from tunewise.models import load_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    batches = token_batches(tok, seq, batch, steps + 1)
    peak_flops = matmul_flops()
    shape = load_shape("smollm2-135m")
    _trim()
    import psutil

    baseline = psutil.Process().memory_info().rss
    with PeakRss() as sampler:
        model = load_model("smollm2-135m", dtype="fp32", device="cpu")
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        losses = []
        param_storages = {q.untyped_storage().data_ptr() for q in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in param_storages:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        for i, ids in enumerate(batches):
            t = time.perf_counter()
            if i == 0:  # count the tensors autograd saves for backward (allocator-independent)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                    out = model(input_ids=ids, labels=ids)
            else:
                out = model(input_ids=ids, labels=ids)
            loss = out.loss
            del out  # as in a Trainer: the logits are not kept alive through backward
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t
            losses.append(round(loss.item(), 4))
            del loss
            if i > 0:  # step 0 allocates the optimizer states and warms up kernels
                times.append(dt)
    measured_bytes = sampler.peak - baseline
    setup = TrainingSetup(sequence_len=seq, micro_batch_size=batch, gradient_checkpointing=checkpointing, lora_r=16,
                          compute_bytes=4, runtime_overhead_gb=0.0)
    mem = estimate_memory(shape, "lora", setup)
    ftok = flops_per_token(shape, "lora", setup)
    measured_tps = seq * batch * len(times) / sum(times)
    predicted_tps = peak_flops * DEFAULT_CPU_UTILISATION / ftok
    # Saved for backward = layer activations (less the one-layer backward working set) + the saved
    # log-softmax (one b*s*V fp32 tensor of the three the logits term counts).
    per_layer = 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate
    work = seq * batch * per_layer * 4 * (2 if checkpointing else 1)
    saved_pred = mem.activations - work + seq * batch * shape.vocab * 4
    return {
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default (dynamic)"),
        "saved_tensors_mb": sum(saved.values()) / 1e6,
        "predicted_saved_mb": saved_pred / 1e6,
        "saved_ratio": saved_pred / sum(saved.values()),
        "gradient_checkpointing": checkpointing,
        "seq": seq, "batch": batch, "timed_steps": len(times), "losses": losses,
        "threads": torch.get_num_threads(),
        "matmul_gflops": peak_flops / 1e9,
        "cpu_utilisation_assumed": DEFAULT_CPU_UTILISATION,
        "predicted_mb": mem.total / 1e6,
        "predicted_components_mb": {k: v / 1e6 for k, v in mem.as_dict().items()
                                    if k in ("weights", "adapters", "gradients", "optimizer", "activations", "logits")},
        "measured_mb": measured_bytes / 1e6,
        "memory_ratio": mem.total / measured_bytes,
        "predicted_tokens_per_s": predicted_tps,
        "measured_tokens_per_s": measured_tps,
        "speed_ratio": predicted_tps / measured_tps,
        "measured_achieved_utilisation": measured_tps * ftok / peak_flops,
        "gflops_per_token": ftok / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--one", choices=["gc", "nogc"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.seq, args.batch, args.steps, args.one == "gc")))
        return
    results = []
    # glibc's dynamic mmap threshold keeps freed activation buffers in the heap, so RSS then also
    # counts allocator slack; pinning the threshold makes RSS track live tensors (the estimate's
    # quantity). The default-allocator run is shown too.
    runs = [("nogc", "131072"), ("gc", "131072"), ("nogc", None)]
    for mode, threshold in runs:
        print(f"running LoRA on smollm2-135m, seq {args.seq}, micro-batch {args.batch}, "
              f"gradient checkpointing {'on' if mode == 'gc' else 'off'}, "
              f"MALLOC_MMAP_THRESHOLD_={threshold or 'default'} ...", file=sys.stderr, flush=True)
        env = dict(os.environ)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        if threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = threshold
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--steps", str(args.steps), "--seq", str(args.seq),
                              "--batch", str(args.batch)], capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            sys.exit(f"bench run failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nCPU fp32 matmul peak measured: {results[0]['matmul_gflops']:.1f} GFLOPS ({results[0]['threads']} threads); "
          f"assumed utilisation of it during training: {results[0]['cpu_utilisation_assumed']:.0%}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'checkpointing':<14}{'allocator':<11}{'pred MB':>9}{'peak RSS MB':>12}{'ratio':>7}  {'pred saved':>10}"
          f"{'saved MB':>9}{'ratio':>7}  {'pred tok/s':>10}{'meas tok/s':>11}{'ratio':>7}  {'achieved util':>13}")
    for r in results:
        alloc = "pinned" if r["malloc_mmap_threshold"].isdigit() else "default"
        print(f"{'on' if r['gradient_checkpointing'] else 'off':<14}{alloc:<11}{r['predicted_mb']:>9.0f}"
              f"{r['measured_mb']:>12.0f}{r['memory_ratio']:>7.2f}  {r['predicted_saved_mb']:>10.0f}"
              f"{r['saved_tensors_mb']:>9.0f}{r['saved_ratio']:>7.2f}  {r['predicted_tokens_per_s']:>10.1f}"
              f"{r['measured_tokens_per_s']:>11.1f}{r['speed_ratio']:>7.2f}  {r['measured_achieved_utilisation']:>13.0%}")
    for r in results:
        comps = ", ".join(f"{k} {v:.0f}" for k, v in r["predicted_components_mb"].items())
        print(f"  predicted MB (checkpointing {'on' if r['gradient_checkpointing'] else 'off'}): {comps}; losses {r['losses']}")
    pinned = [r for r in results if r["malloc_mmap_threshold"].isdigit()]
    mem_ok = all(abs(r["memory_ratio"] - 1) <= 0.25 for r in pinned)
    speed_ok = all(abs(r["speed_ratio"] - 1) <= 0.25 for r in pinned)
    print(f"memory within 25% (pinned allocator): {'yes' if mem_ok else 'NO'}; "
          f"tokens/s within 25%: {'yes' if speed_ok else 'NO'}")
    Path(REPO / "bench" / "estimate_vs_measured.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
