"""Training throughput: `tunewise train` against the plain TRL + PEFT recipe, in one run.

Run (from the repository root; the default 4 steps per arm take ~6 min on a quiet 2-core CPU
machine, most of it model loading and the held-out eval of each arm):

    .venv/bin/python bench/train_throughput.py                 # 4 optimizer steps per arm
    .venv/bin/python bench/train_throughput.py --steps 10      # steadier figures, ~2.5x longer
    .venv/bin/python bench/train_throughput.py --rounds 3      # every arm 3 times, interleaved
    .venv/bin/python bench/train_throughput.py --arms plain,tunewise,tunewise-whole,tunewise-mb2
    .venv/bin/python bench/train_throughput.py --model /path/to/hf-dir --json out.json

Both arms fine-tune the embedded model (SmolLM2-135M-Instruct) with LoRA r=16, alpha=16 on
q,k,v,up,gate,down projections, sequence length 2048, 8 examples per optimizer step, the same
learning rate and the same number of optimizer steps, on LLaMA-Factory's alpaca_en_demo.json minus
a fixed held-out slice (its last ``--eval-rows`` rows):

  (a) plain: TRL ``SFTTrainer`` + PEFT with TRL's defaults: micro-batch 2 x accumulation 4, no
      packing, fp32 weights (TRL's own defaults then add bf16 autocast and gradient checkpointing),
      prompt-completion conversational data (so loss on the response only, TRL's default for that
      format).
  (b) tunewise: ``tunewise.train.train`` with its fastest settings (see TUNEWISE_SETTINGS), and any
      of VARIANTS named in --arms (other settings, each compared with the same plain arm). The plain
      arm's process never imports tunewise and gets the environment the bench started with.

Each arm runs in its own subprocess, so peak resident memory (whole process tree, polled, and the
child's own ``ru_maxrss``) belongs to that arm alone. Measured identically in both arms, by wrapping
``transformers.Trainer``: trained (non-padding) tokens = the input tokens of every micro-batch that
are not padding; loss-bearing tokens = those with a label; time = the ``Trainer.train()`` call.
Afterwards one shared function computes the eval loss of both adapters: the mean cross-entropy
per response token over the held-out slice (full-vocabulary logits, fp32, one example at a time).
MFU = model FLOPs per second / the best matmul rate measured at the start of this run over a few
shapes (tunewise.estimate.PEAK_SHAPES), in the arm's compute dtype. Model FLOPs per trained token are
what LoRA really needs (tunewise.estimate.model_flops_per_token): frozen weights forward + input
gradient (4N), the adapters 6P, the output head only at loss-bearing tokens, causal attention per
example (6·L·q·Σl²/Σl); no recomputation. The same formula for every arm.

Precision follows the CPU (tunewise.hardware): where it has bf16 matmul (AVX-512 BF16, AMX) tunewise
trains in bf16 and the plain arm keeps TRL's bf16 default; where bf16 is only emulated (AVX2) both
compute in fp32 (TRL's default there is ~300x slower per matmul, so its users set bf16=False). The
CPU line (model, kind, cores, flags) is printed and recorded in --json. ``--isa avx2`` emulates an
AVX2-only CPU on a newer one (caps oneDNN, MKL, ATen and tunewise); such figures are labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_ENV = dict(os.environ)  # before anything imports tunewise (see spawn_arm)
DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "gate_proj", "down_proj"]
LORA_R = 16
LORA_ALPHA = 16
SEQ_LEN = 2048
EFFECTIVE_BATCH = 8
LEARNING_RATE = 2e-4
SEED = 42

# tunewise's best settings on a CPU machine (see docs/train_bench.md): the 8 examples of an
# optimizer step in one flattened padding-free micro-batch (no accumulation; each example gets its
# own causal attention), run in pieces of at most 768 tokens (whole examples, one optimizer step: the
# memory of a short micro-batch at nearly the speed of the whole row), precision auto (bf16 weights
# where the CPU computes bf16 natively, fp32 where bf16 is only emulated), no gradient checkpointing, lean activations (the default); the loss only computes
# logits at response tokens and keeps none.
TUNEWISE_SETTINGS = {
    "packing": False,
    "micro_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "micro_batch_tokens": 768,
    "precision": "auto",  # bf16 where the CPU has bf16 matmul (AVX-512 BF16, AMX), else fp32
    "gradient_checkpointing": False,
}
# Other settings worth measuring in the same run (--arms plain,tunewise,tunewise-mb2,...): each is
# TUNEWISE_SETTINGS with these changes, compared against the same plain arm.
VARIANTS = {
    "tunewise": {},
    "tunewise-whole": {"micro_batch_tokens": None},  # the 8 examples as one piece (fastest, more memory)
    "tunewise-mb2": {"micro_batch_size": 2, "gradient_accumulation_steps": 4,  # the plain arm's split
                     "micro_batch_tokens": None},
    "tunewise-ckpt": {"gradient_checkpointing": True},
}


# ---------------------------------------------------------------------------------------------
# Measurement shared by both arms (runs inside each arm's subprocess)
# ---------------------------------------------------------------------------------------------


class Meter:
    """Counts the tokens of every micro-batch the Trainer trains on and times ``Trainer.train``."""

    def __init__(self):
        self.tokens = 0
        self.loss_tokens = 0
        self.micro_batches = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def count(self, inputs) -> None:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
        if inputs.get("shift_labels") is not None:
            self.loss_tokens += int(inputs["shift_labels"].ne(-100).sum())
        elif inputs.get("labels") is not None:
            self.loss_tokens += int(inputs["labels"][:, 1:].ne(-100).sum())
        self.micro_batches += 1

    def install(self) -> None:
        from transformers import Trainer

        meter = self
        train, training_step = Trainer.train, Trainer.training_step

        def timed_train(self, *a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return train(self, *a, **k)
            finally:
                meter.seconds += time.perf_counter() - t0
                meter.cpu_seconds += time.process_time() - c0

        def counted_step(self, model, inputs, *a, **k):
            meter.count(inputs)
            return training_step(self, model, inputs, *a, **k)

        Trainer.train, Trainer.training_step = timed_train, counted_step


def write_plain_rows(train_file: Path) -> None:
    """The training rows in TRL's conversational prompt-completion format, for the plain arm."""
    from tunewise.data.formats import load_conversations

    rows = [
        {
            "prompt": [{"role": m.role, "content": m.content} for m in c.messages[:-1]],
            "completion": [{"role": "assistant", "content": c.messages[-1].content}],
        }
        for c in load_conversations(train_file, "alpaca")
    ]
    (train_file.parent / "plain_rows.json").write_text(json.dumps(rows), encoding="utf-8")


def split_data(work: Path, eval_rows: int) -> tuple[Path, Path]:
    """Write the training rows and the held-out slice (the last ``eval_rows`` rows) as Alpaca files."""
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    train, held = rows[:-eval_rows], rows[-eval_rows:]
    (work / "train.json").write_text(json.dumps(train), encoding="utf-8")
    (work / "eval.json").write_text(json.dumps(held), encoding="utf-8")
    return work / "train.json", work / "eval.json"


def arm_plain(model_dir: str, train_file: Path, out: Path, steps: int, meter: Meter, bf16: bool) -> dict:
    """TRL SFTTrainer + PEFT, TRL defaults apart from what the comparison fixes. ``bf16``: TRL's
    default (bf16 autocast) where the CPU computes bf16 natively; where it only emulates bf16 (AVX2)
    that default is ~300x slower than fp32 per matmul, so a TRL user there ends up with bf16=False."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    # rows written by the parent (write_plain_rows): this process never imports tunewise, so none of
    # its process-wide settings (e.g. the CPU kernel-cache caps in tunewise/__init__.py) reach it
    rows = json.loads((train_file.parent / "plain_rows.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=EFFECTIVE_BATCH // 2,
        max_length=SEQ_LEN,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        seed=SEED,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        bf16=bf16,
        # TRL's bf16=True default refuses a CPU-only machine unless told to use it (its error says so).
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=TARGETS, task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    settings = {
        "bf16_autocast": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "packing": bool(args.packing),
        "micro_batch": args.per_device_train_batch_size,
        "accumulation": args.gradient_accumulation_steps,
        "weights": "fp32",
    }
    return {"adapter": str(out / "adapter"), "compute_dtype": "bf16" if args.bf16 else "fp32",
            "settings": settings}


def arm_tunewise(model_dir: str, train_file: Path, out: Path, steps: int, meter: Meter,
                 overrides: dict) -> dict:
    """``tunewise.train.train`` with TUNEWISE_SETTINGS (and any --tunewise-set overrides)."""
    from tunewise.config import RunConfig
    from tunewise.train import train

    settings = {**TUNEWISE_SETTINGS, **overrides}
    cfg = RunConfig(
        base_model=model_dir,
        datasets=[{"path": str(train_file), "format": "alpaca"}],
        sequence_len=SEQ_LEN,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_target_modules=TARGETS,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler="linear",
        warmup_ratio=0.0,
        seed=SEED,
        output_dir=str(out / "run"),
        **settings,
    )
    result = train(cfg, progress=False, overwrite=True)
    from tunewise.models import resolve_precision

    dtype = resolve_precision(settings.get("precision", "auto"), "cpu")
    return {"adapter": str(result.adapter_dir), "compute_dtype": "bf16" if dtype == "bf16" else "fp32",
            "settings": settings, "tunewise_reported_tokens_per_second": result.tokens_per_second}


def run_arm(name: str, model_dir: str, work: Path, steps: int, result_file: Path, overrides: dict) -> None:
    """Entry point of one arm's subprocess: train, then write the measurements as JSON."""
    import torch

    torch.manual_seed(SEED)
    meter = Meter()
    meter.install()
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.json"
    if name == "plain":
        info = arm_plain(model_dir, train_file, out, steps, meter, bool(overrides.get("bf16", True)))
    else:
        info = arm_tunewise(model_dir, train_file, out, steps, meter, {**VARIANTS[name], **overrides})
    info.update(
        tokens=meter.tokens,
        loss_tokens=meter.loss_tokens,
        micro_batches=meter.micro_batches,
        seconds=meter.seconds,
        cpu_seconds=meter.cpu_seconds,
        ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
    )
    result_file.write_text(json.dumps(info, indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The parent: peaks, subprocesses, eval, report
# ---------------------------------------------------------------------------------------------


def spawn_arm(name: str, model_dir: str, work: Path, steps: int, overrides: dict) -> dict:
    """Run one arm in a fresh interpreter, polling the RSS of its whole process tree."""
    import psutil

    result_file = work / f"{name}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_arm", name, "--_work", str(work),
           "--model", model_dir, "--steps", str(steps), "--_overrides", json.dumps(overrides)]
    log = open(work / f"{name}.log", "w", encoding="utf-8")
    # the plain arm runs in the environment the bench was started with, not the one importing
    # tunewise in this parent process has changed
    env = BASE_ENV if name == "plain" else None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    log.close()
    if proc.returncode != 0:
        tail = (work / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"arm {name} failed (exit {proc.returncode}):\n{tail}")
    info = json.loads(result_file.read_text(encoding="utf-8"))
    info["peak_rss_bytes"] = max(peak, info["ru_maxrss_bytes"])
    return info


def eval_loss(model_dir: str, adapter: str, eval_file: Path) -> tuple[float, int]:
    """Mean cross-entropy per response token over the held-out slice (shared by both arms)."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.data.formats import load_conversations
    from tunewise.data.tokenize import tokenize_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_dataset(load_conversations(eval_file, "alpaca"), tok, SEQ_LEN, train_on="assistant")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            labels = torch.tensor(ex.labels[1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            keep = labels.ne(-100)
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count, count


def length_stats(model_dir: str, train_file: Path) -> tuple[float, float]:
    """Mean example length and Σl²/Σl (the attention length per token) of the training rows."""
    from transformers import AutoTokenizer

    from tunewise.data.formats import load_conversations
    from tunewise.data.tokenize import tokenize_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    lens = [len(e.input_ids) for e in
            tokenize_dataset(load_conversations(train_file, "alpaca"), tok, SEQ_LEN, train_on="assistant")]
    return sum(lens) / len(lens), sum(n * n for n in lens) / sum(lens)


def arm_flops_per_token(shape, info: dict, attention_len: float) -> float:
    """What one trained token of this LoRA run needs (tunewise.estimate.model_flops_per_token):
    frozen weights forward + input gradient (4N), adapters 6P, the head at loss-bearing tokens only,
    causal attention per example. The same formula for every arm; recomputation is not counted."""
    from tunewise.estimate import model_flops_per_token

    adapted = dict(zip(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                       shape.linear_shapes()))
    lora = shape.n_layers * sum(LORA_R * (a + b) for name, (a, b) in adapted.items() if name in TARGETS)
    return model_flops_per_token(shape, "lora", lora, attention_len, info["loss_tokens"] / info["tokens"])


def summarise(runs: list[dict]) -> dict:
    """One arm over several rounds: median speed figures, the largest peak memory, round 1's eval."""
    out = dict(runs[0])
    for key in ("tokens_per_s", "loss_tokens_per_s", "tokens_per_cpu_s", "mfu", "seconds", "flops_per_token"):
        out[key] = statistics.median(r[key] for r in runs)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
    return out


def summary_fpt(rounds: list[dict]) -> float:
    """The tunewise arms' FLOPs per trained token (plain's differs by its one extra loss token per example)."""
    vals = [info["flops_per_token"] for r in rounds for name, info in r.items() if name != "plain"]
    return statistics.median(vals or [info["flops_per_token"] for r in rounds for info in r.values()])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per arm")
    ap.add_argument("--eval-rows", type=int, default=40, help="held-out rows (the last N of the file)")
    ap.add_argument("--model", default=None, help="HF model dir (default: the embedded smollm2-135m)")
    ap.add_argument("--arms", default="plain,tunewise",
                    help="comma-separated: plain and any of " + ", ".join(VARIANTS))
    ap.add_argument("--tunewise-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one of TUNEWISE_SETTINGS (YAML value), e.g. precision=fp32")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out eval loss (quick probes)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the list of arms this many times, interleaved (plain, tunewise, plain, ...); "
                         "speed = the median over rounds, each round's ratio against its own plain arm")
    ap.add_argument("--isa", choices=["native", "avx2", "avx512"], default="native",
                    help="emulate an older CPU on this one: cap oneDNN, MKL, ATen and tunewise at that "
                         "instruction set (in every process of the run); figures are labelled emulated")
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_work", help=argparse.SUPPRESS)
    ap.add_argument("--_overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._arm:
        run_arm(args._arm, args.model, Path(args._work), args.steps, Path(args._work) / f"{args._arm}.result.json",
                json.loads(args._overrides))
        return

    from tunewise.config import parse_overrides

    if not DATA.is_file():
        raise SystemExit(f"data not found: {DATA}")
    if args.model is None:
        from tunewise.models import resolve_model

        args.model = str(resolve_model("smollm2-135m").path)
    overrides = parse_overrides(args.tunewise_set)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a != "plain" and a not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}: use plain, {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit("--rounds and --steps must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="tunewise-bench-"))
    train_file, eval_file = split_data(work, args.eval_rows)
    write_plain_rows(train_file)
    print(f"model {args.model}\ndata {DATA} ({args.eval_rows} held-out rows)\nwork dir {work}", flush=True)

    import torch

    from tunewise.estimate import PEAK_SHAPES, measure_matmul_peak

    from tunewise.estimate import load_shape
    from tunewise.hardware import cpu_info, describe_cpu

    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or 'none of ' + 'avx2/avx512f/avx512_bf16/amx'}); "
          f"torch {torch.__version__} on {torch.get_num_threads()} threads", flush=True)
    # bf16 only where the CPU computes it: emulated bf16 would take minutes per peak shape and no arm uses it
    dtypes = ("fp32", "bf16") if cpu["native_bf16"] else ("fp32",)
    peaks = {d: measure_matmul_peak(d, seconds=4.0) for d in dtypes}
    print("matmul peak (best of " + ", ".join("x".join(map(str, s)) for s in PEAK_SHAPES) + "): "
          + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items())
          + ("" if cpu["native_bf16"] else "; bf16 is emulated on this CPU: both arms compute in fp32"),
          flush=True)
    overrides_plain = {"bf16": bool(cpu["native_bf16"])}
    mean_len, attention_len = length_stats(args.model, train_file)
    shape = load_shape(args.model)

    rounds: list[dict[str, dict]] = []
    for rnd in range(args.rounds):
        results: dict[str, dict] = {}
        for name in arms:
            label = name if args.rounds == 1 else f"{name} (round {rnd + 1}/{args.rounds})"
            print(f"\n== {label}: training {args.steps} optimizer steps ...", flush=True)
            info = spawn_arm(name, args.model, work, args.steps, overrides_plain if name == "plain" else overrides)
            info["eval_loss"], info["eval_tokens"] = (
                (float("nan"), 0) if args.no_eval or rnd > 0 else eval_loss(args.model, info["adapter"], eval_file))
            info["tokens_per_s"] = info["tokens"] / info["seconds"]
            info["loss_tokens_per_s"] = info["loss_tokens"] / info["seconds"]
            info["tokens_per_cpu_s"] = info["tokens"] / info["cpu_seconds"]
            info["flops_per_token"] = arm_flops_per_token(shape, info, attention_len)
            info["mfu"] = info["tokens_per_s"] * info["flops_per_token"] / peaks[info["compute_dtype"]]
            results[name] = info
            print(f"   {info['tokens']} tokens ({info['loss_tokens']} loss-bearing) in {info['seconds']:.1f} s "
                  f"({info['tokens_per_s']:.1f} tokens/s); peak RSS {gib(info['peak_rss_bytes'])}; "
                  f"eval loss {info['eval_loss']:.4f}", flush=True)
        rounds.append(results)

    print(f"\nLoRA r={LORA_R} alpha={LORA_ALPHA} on {','.join(TARGETS)}; seq len {SEQ_LEN}; "
          f"{EFFECTIVE_BATCH} examples/step; lr {LEARNING_RATE}; {args.steps} steps; "
          f"mean example {mean_len:.0f} tokens (attention length Σl²/Σl {attention_len:.0f}); "
          f"{summary_fpt(rounds) / 1e9:.3f} GFLOP/trained token (LoRA: 4N + 6P + head at loss tokens + attention)"
          + (f"; {args.rounds} rounds: medians, peak RSS the largest" if args.rounds > 1 else ""))
    summary = {name: summarise([r[name] for r in rounds]) for name in arms}
    header = f"{'arm':<15}{'tokens/s':>10}{'tok/CPU-s':>11}{'loss tok/s':>12}{'peak RSS':>12}{'eval loss':>11}{'MFU':>8}  compute"
    print(header)
    print("-" * len(header))
    for name, r in summary.items():
        print(f"{name:<15}{r['tokens_per_s']:>10.1f}{r['tokens_per_cpu_s']:>11.1f}{r['loss_tokens_per_s']:>12.1f}"
              f"{gib(r['peak_rss_bytes']):>12}{r['eval_loss']:>11.4f}{r['mfu'] * 100:>7.1f}%  {r['compute_dtype']} "
              f"{r['settings']}")
    verdict = {}
    for name in [n for n in arms if n != "plain"] if "plain" in arms else []:
        speeds = [r[name]["tokens_per_s"] / r["plain"]["tokens_per_s"] for r in rounds]
        mems = [r[name]["peak_rss_bytes"] / r["plain"]["peak_rss_bytes"] for r in rounds]
        speed, mem = statistics.median(speeds), max(mems)
        loss = summary[name]["eval_loss"] / summary["plain"]["eval_loss"] - 1
        verdict[name] = {"speedup": speed, "memory_ratio": mem, "eval_loss_change": loss,
                         "speedup_per_round": speeds, "memory_ratio_per_round": mems,
                         "speed_ok": speed >= 3, "memory_ok": mem <= 0.6, "loss_ok": loss <= 0.03}
        spread = (f" (rounds: {', '.join(f'{x:.2f}x' for x in speeds)}; memory {', '.join(f'{x:.2f}x' for x in mems)})"
                  if len(rounds) > 1 else "")
        print(f"\n{name} vs plain: {speed:.2f}x tokens/s (target >= 3x: {'PASS' if speed >= 3 else 'FAIL'}), "
              f"{mem:.2f}x peak memory (target <= 0.6x: {'PASS' if mem <= 0.6 else 'FAIL'}), "
              f"eval loss {loss * 100:+.2f}% (target <= +3%: {'PASS' if loss <= 0.03 else 'FAIL'}){spread}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "cpu_line": describe_cpu(cpu), "isa": args.isa,
                                         "torch": torch.__version__,
                                         "steps": args.steps, "rounds": args.rounds, "peaks_flops": peaks,
                                         "mean_len": mean_len, "attention_len": attention_len, "arms": summary,
                                         "per_round": rounds, "verdict": verdict},
                                        indent=1), encoding="utf-8")


if __name__ == "__main__":
    from tunewise.hardware import restart_with_isa

    restart_with_isa(str(Path(__file__).resolve()), sys.argv[1:], BASE_ENV)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
