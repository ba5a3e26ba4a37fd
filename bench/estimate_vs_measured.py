"""Check `tunewise estimate --this-machine` against `tunewise train` on this machine.

For a few LoRA configurations of the embedded smollm2-135m (real text: LLaMA-Factory's
alpaca_en_demo.json, packed into rows of the sequence length), each in a fresh process:

* predicted: ``tunewise.estimate.cpu_estimate`` — tokens/s from this machine's matmul peak (measured
  in the same process, in the dtype `tunewise train` uses here) x the assumed CPU utilisation, and
  peak memory from the component model (weights, adapters, gradients, optimizer, activations, loss);
* measured: ``tunewise.train.train`` with the same settings, twice in fresh processes — its own
  reported tokens/s with the default allocator, and the peak resident memory while the Trainer runs,
  above the process's memory before the model loads (sampled every 2 ms), with glibc's mmap
  threshold pinned so RSS tracks live tensors rather than allocator slack (pinning costs speed: every
  large allocation becomes an mmap, so speed is not measured in that run).

The CPU utilisation was calibrated on bench/train_throughput.py and the CPU runtime overhead on the
first two configurations here (docs/advise.md); the other two are the check. Target: predicted
within 25% of measured.

Run: .venv/bin/python bench/estimate_vs_measured.py [--steps 6] [--method qlora] [--configs N] [--json FILE]
     [--isa avx2]   # emulate an AVX2-only CPU (tunewise.hardware.isa_cap_env): fp32 predicted and trained
The CPU line (model, kind, cores, flags) is printed and recorded in --json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
CONFIGS = [  # (sequence_len, micro_batch_size, gradient_checkpointing)
    (512, 2, False),
    (512, 2, True),
    (1024, 1, False),
    (256, 4, True),
]


class PeakRss:
    """Samples the process RSS every 2 ms in a thread while ``active``; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.active = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.active:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def one(seq: int, batch: int, ckpt: bool, steps: int, method: str = "lora") -> dict:
    """One configuration, in this (fresh) process."""
    import psutil
    import torch
    from transformers import Trainer

    from tunewise.config import RunConfig
    from tunewise.estimate import cpu_estimate, load_shape, setup_from
    from tunewise.train import train

    work = Path(tempfile.mkdtemp(prefix="tunewise-est-"))
    cfg = RunConfig(base_model="smollm2-135m", method=method, datasets=[{"path": str(DATA), "format": "alpaca"}],
                    sequence_len=seq, micro_batch_size=batch, gradient_accumulation_steps=1, packing=True,
                    gradient_checkpointing=ckpt, lora_r=16, lora_alpha=32, max_steps=steps, learning_rate=1e-4,
                    warmup_ratio=0.0, save_steps=None, output_dir=str(work / "run"), seed=0)
    # the prediction is for exactly the run trained below (estimate.setup_from, as `tunewise estimate RUN.yaml`)
    pred = cpu_estimate(load_shape("smollm2-135m"), method, setup_from(cfg), training_tokens=1.0)
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    sampler = PeakRss()
    original = Trainer.train

    def sampled_train(self, *a, **k):
        sampler.active = True
        try:
            return original(self, *a, **k)
        finally:
            sampler.active = False

    Trainer.train = sampled_train
    res = train(cfg, progress=False)
    sampler.stop()
    mem = pred.breakdown
    measured_mb = (sampler.peak - baseline) / 1e6
    ftok = pred.flops_per_token
    return {
        "method": method, "seq": seq, "micro_batch": batch, "gradient_checkpointing": ckpt, "steps": res.steps,
        "threads": torch.get_num_threads(), "dtype": pred.dtype,
        "matmul_gflops": pred.peak_flops / 1e9, "utilisation_assumed": pred.utilisation,
        "predicted_tokens_per_s": pred.tokens_per_second, "measured_tokens_per_s": res.tokens_per_second,
        "speed_ratio": pred.tokens_per_second / res.tokens_per_second,
        "achieved_utilisation": res.tokens_per_second * ftok / pred.peak_flops,
        "predicted_mb": mem.total / 1e6, "measured_mb": measured_mb, "memory_ratio": mem.total / 1e6 / measured_mb,
        "predicted_components_mb": {k: v / 1e6 for k, v in mem.as_dict().items()
                                    if k in ("weights", "adapters", "gradients", "optimizer", "activations", "logits",
                                             "overhead")},
        "final_loss": res.final_loss,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per configuration")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--method", default="lora", choices=["lora", "qlora"], help="what to train (default lora)")
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="run only the first N shapes")
    ap.add_argument("--isa", choices=["native", "avx2", "avx512"], default="native",
                    help="emulate an older CPU on this one (figures are labelled emulated)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        seq, batch, ckpt = json.loads(args.one)
        print(json.dumps(one(seq, batch, ckpt, args.steps, args.method)))
        return
    if not DATA.is_file():
        sys.exit(f"data not found: {DATA}")
    base_env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    base_env["TOKENIZERS_PARALLELISM"] = "false"
    results = []
    for seq, batch, ckpt in CONFIGS[: args.configs]:
        runs = {}
        for purpose, env in (("speed", base_env), ("memory", {**base_env, "MALLOC_MMAP_THRESHOLD_": "131072"})):
            print(f"tunewise train ({purpose}): {args.method} r=16 on smollm2-135m, seq {seq} x micro-batch {batch}, "
                  f"gradient checkpointing {'on' if ckpt else 'off'}, {args.steps} steps ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps([seq, batch, ckpt]), "--steps",
                                  str(args.steps), "--method", args.method], capture_output=True, text=True, check=False, env=env, cwd=REPO)
            if out.returncode != 0:
                sys.exit(f"bench run failed:\n{out.stderr[-3000:]}")
            runs[purpose] = json.loads(out.stdout.strip().splitlines()[-1])
        r = dict(runs["speed"])
        r["measured_mb_default_allocator"] = runs["speed"]["measured_mb"]
        for key in ("predicted_mb", "measured_mb", "memory_ratio", "predicted_components_mb", "malloc_mmap_threshold"):
            r[key] = runs["memory"][key]
        results.append(r)
    r0 = results[0]
    from tunewise.hardware import cpu_info, describe_cpu

    cpu = cpu_info()
    print(f"\nCPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or '-'})")
    print(f"{r0['dtype']} matmul peak measured in each run: "
          f"{', '.join(format(r['matmul_gflops'], '.0f') for r in results)} GFLOP/s ({r0['threads']} threads); "
          f"assumed utilisation {r0['utilisation_assumed']:.0%}; load average now {os.getloadavg()[0]:.1f}")
    print(f"{'seq x mb':<10}{'ckpt':<6}{'pred tok/s':>11}{'meas tok/s':>11}{'ratio':>7}{'achieved':>9}  "
          f"{'pred MB':>8}{'meas MB':>8}{'ratio':>7}")
    for r in results:
        print(f"{r['seq']}x{r['micro_batch']:<6}{'on' if r['gradient_checkpointing'] else 'off':<6}"
              f"{r['predicted_tokens_per_s']:>11.1f}{r['measured_tokens_per_s']:>11.1f}{r['speed_ratio']:>7.2f}"
              f"{r['achieved_utilisation']:>9.0%}  {r['predicted_mb']:>8.0f}{r['measured_mb']:>8.0f}{r['memory_ratio']:>7.2f}")
    for r in results:
        comps = ", ".join(f"{k} {v:.0f}" for k, v in r["predicted_components_mb"].items())
        print(f"  {r['seq']}x{r['micro_batch']} ckpt {'on' if r['gradient_checkpointing'] else 'off'}: predicted MB {comps}")
    speed_ok = all(abs(r["speed_ratio"] - 1) <= 0.25 for r in results)
    mem_ok = all(abs(r["memory_ratio"] - 1) <= 0.25 for r in results)
    print(f"tokens/s within 25%: {'yes' if speed_ok else 'NO'}; memory within 25%: {'yes' if mem_ok else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "cpu_line": describe_cpu(cpu), "results": results}, indent=2),
                             encoding="utf-8")


if __name__ == "__main__":
    from tunewise.hardware import restart_with_isa

    restart_with_isa(str(Path(__file__).resolve()), sys.argv[1:], dict(os.environ))
    main()
