"""How many optimizer steps the demo's fine-tuned arm needs: train it at each step count on the
demo's own data and score it on the demo's held-out set, with the fine-tuned arm alone.

    .venv/bin/python bench/demo_steps.py --scenario format --steps 14,18
    .venv/bin/python bench/demo_steps.py --scenario knowledge --steps 10,14 --out /tmp/steps.json

Each step count trains a LoRA exactly as `tunewise demo` configures it (only ``max_steps``
changed) and runs `tunewise compare` with that arm only (parity gate, llama.cpp answers). Prints one
line per step count: quality with its 95% interval, training seconds, final loss. Session 9's
figures (docs/compare.md, "The main job") came from the same procedure, run as a scratch script
before this one was written, on an AMD EPYC, AVX-512 BF16, 2 cores: format 14 -> 0.995,
18 -> 1.000; knowledge 10 and 14 -> 0.031. A few minutes per step
count on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml


def run_one(scenario: str, steps: int, work: Path) -> dict:
    from tunewise.compare import load_compare_config, run_compare
    from tunewise.demo.pipeline import write_scenario

    cfg_path = write_scenario(scenario, work / f"{scenario}-{steps}", False, "smollm2-135m")
    raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    arm = next(a for a in raw["arms"] if a["type"] == "finetuned")
    arm["train"]["max_steps"] = steps
    raw["arms"] = [arm]
    start = time.perf_counter()
    rep = run_compare(load_compare_config(data=raw), quiet=True).report["arms"][0]
    return {"scenario": scenario, "steps": steps, "quality": rep["quality"],
            "interval": rep.get("quality_interval"), "train_s": rep["training"]["seconds"],
            "final_loss": rep["training"]["final_loss"], "wall_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("format", "knowledge"), default="format")
    ap.add_argument("--steps", default="14,18", help="comma-separated optimizer step counts")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        ap.error("--steps takes comma-separated whole numbers, e.g. 14,18")
    if not steps or min(steps) < 1:
        ap.error("--steps takes positive whole numbers, e.g. 14,18")

    from tunewise.hardware import cpu_info, describe_cpu

    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)}; scenario {args.scenario}; steps {steps}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-steps-") as work:
        for n in steps:
            r = run_one(args.scenario, n, Path(work))
            rows.append(r)
            iv = r["interval"]
            ci = f" [{iv['low']:.2f}-{iv['high']:.2f}]" if iv else ""
            print(f"{args.scenario} {n:>3} steps: quality {r['quality']:.3f}{ci} · training {r['train_s']:.0f} s · "
                  f"final loss {r['final_loss']:.4f} · {r['wall_s']:.0f} s in all", flush=True)
    if args.out:
        from tunewise.paths import atomic_write_text

        atomic_write_text(args.out, json.dumps({"cpu": describe_cpu(cpu), "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
