"""One-shot CUDA check of `tunewise train`: LoRA, QLoRA and full fine-tuning on a GPU, measured
against `tunewise estimate` for the same run config.

For each model shape (SmolLM2-135M's real architecture, and a ~1B Llama-3.2-1B-like one with the
SmolLM2 vocabulary) a random-weight bf16 model is built from its config with the real SmolLM2
tokenizer, and for each method a run YAML (as in examples/) is trained with `tunewise train` in a
fresh process on LLaMA-Factory's alpaca demo data. Recorded per run: exit code, wall time, the run's
tokens/s (its summary.json: the whole session, and the median of the per-step rates after the first
two steps, which excludes CUDA warm-up), peak GPU memory (the run's own torch allocator peaks from
summary.json, and the device's used memory polled through NVML from outside, above what was used
before the process started: CUDA context included), and `tunewise estimate RUN.yaml --json`'s
predicted peak memory and tokens/s (the shipped H100 SXM row: the H200 has the same 989 TFLOP/s dense
bf16 peak; on a CPU, --this-machine). Then the reference inference engine (HFEngine) loads the first
LoRA run and generates a few tokens, checking where its weights are.

Everything runs in subprocesses, so this process never creates a CUDA context. Failures are recorded
per run (the error's tail) and the rest go on; runs that would start after --budget-s are skipped.

Run on a GPU machine (repo root; PYTHONPATH must reach src/):
    python3 bench/gpu_train.py --out OUT_DIR
Dry run of the plumbing on a CPU (2-layer model, 2 steps, seq 256; QLoRA runs on a CPU too, bitsandbytes >= 0.50):
    .venv/bin/python bench/gpu_train.py --tiny --out /tmp/gpucheck-out
Inputs (copied into the ignored .gpucheck/ folder so they travel): .gpucheck/tokenizer/ (tokenizer.json,
tokenizer_config.json, chat_template.jinja of the embedded SmolLM2) and .gpucheck/alpaca_en_demo.json.
Writes OUT_DIR/gpu_train.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1e9

# name -> LlamaConfig keyword arguments (vocab_size comes from the tokenizer)
SHAPES: dict[str, dict] = {
    # SmolLM2-135M's own config.json
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
    # Llama-3.2-1B's shapes, with the SmolLM2 vocabulary (~1.07B parameters)
    "llama-1b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_theta=500000.0,
                           max_position_embeddings=8192, rms_norm_eps=1e-5),
    # the dry run's
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096),
}
METHODS = ("lora", "qlora", "full")


# ---------------------------------------------------------------------------------------------
# Subprocess helpers (each runs in a fresh process: `python bench/gpu_train.py --build/--infer`)
# ---------------------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "tokenizers", "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def build_model(shape: str, out: Path, tokenizer: Path) -> dict:
    """A random-weight Llama of ``shape`` in bf16 with the tokenizer's files, saved as an HF directory
    (built on the GPU when there is one: initialising ~1B weights on the CPU takes a while)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                      **SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    for f in tokenizer.iterdir():
        shutil.copy(f, out / f.name)
    info = {"shape": shape, "path": str(out), "parameters": sum(p.numel() for p in model.parameters()),
            "vocab": cfg.vocab_size, "build_s": round(time.perf_counter() - t0, 2), "versions": _versions()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}",
                       "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
                       "bf16": torch.cuda.is_bf16_supported()}
    return info


def infer_check(run_dir: Path) -> dict:
    """Load a trained LoRA run with the reference engine and generate a few tokens."""
    import torch

    from tunewise.infer.hf import HFEngine
    from tunewise.infer.types import Request

    t0 = time.perf_counter()
    engine = HFEngine(str(run_dir))
    load_s = time.perf_counter() - t0
    model = engine.hf_model
    devices = sorted({str(p.device) for p in model.parameters()})
    lora = sorted({str(p.device) for n, p in model.named_parameters() if "lora_" in n})
    c = engine.generate([Request(messages=[{"role": "user", "content": "Name three primary colours."}],
                                 max_tokens=16)])[0]
    want = "cuda" if torch.cuda.is_available() else "cpu"
    return {"ok": all(d.startswith(want) for d in devices) and bool(lora), "parameter_devices": devices,
            "lora_devices": lora, "precision": engine.precision, "model_class": type(model).__name__,
            "load_s": round(load_s, 2), "output_tokens": c.output_tokens, "seconds": round(c.seconds, 3),
            "ttft_s": c.ttft_s, "decode_tokens_per_s": c.decode_tokens_per_s, "text": c.text[:200]}


# ---------------------------------------------------------------------------------------------
# GPU memory seen from outside the training process
# ---------------------------------------------------------------------------------------------


class DeviceMemoryPeak:
    """Polls the GPU's used memory (NVML, else nvidia-smi) while a run is alive; ``peak()`` is the most
    seen above the reading taken at ``start()``. None where neither is available (a CPU machine)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self._read = interval, None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            self.source = "nvml"
        except Exception:
            if shutil.which("nvidia-smi"):
                self.interval = max(interval, 0.2)
                self._read = self._smi
                self.source = "nvidia-smi"
            else:
                self.source = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = self.top = 0

    @staticmethod
    def _smi() -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return int(float(out.stdout.strip().splitlines()[0])) * 2**20

    def start(self) -> None:
        if self._read is None:
            return
        self.baseline = self.top = self._read()
        self._stop.clear()

        def loop():
            while not self._stop.is_set():
                try:
                    self.top = max(self.top, self._read())
                except Exception:
                    pass
                time.sleep(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def peak(self) -> int | None:
        if self._read is None or self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        return self.top - self.baseline


# ---------------------------------------------------------------------------------------------
# One run: tunewise train + tunewise estimate for the same YAML
# ---------------------------------------------------------------------------------------------


def write_run_yaml(path: Path, model_dir: Path, data: Path, method: str, out_dir: Path, args) -> None:
    import yaml

    cfg = {
        "kind": "train", "base_model": str(model_dir),
        "datasets": [{"path": str(data), "format": "alpaca"}],
        "val_set_size": 0.0, "sequence_len": args.seq, "packing": True, "train_on": "assistant",
        "method": method,
        **({"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}
           if method != "full" else {}),
        "micro_batch_size": args.micro_batch, "gradient_accumulation_steps": 1, "max_steps": args.steps,
        "learning_rate": 2.0e-5 if method == "full" else 2.0e-4, "lr_scheduler": "constant", "warmup_steps": 0,
        "gradient_checkpointing": False, "precision": "auto", "seed": 0,
        "output_dir": str(out_dir), "save_steps": 1000, "logging_steps": 1, "report_to": "none",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def tail(text: str, n: int = 3000) -> str:
    return text[-n:] if text else ""


def per_step(metrics: Path) -> list[dict]:
    """The run's logged steps (metrics.jsonl): step, loss, tokens/s."""
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [{k: r.get(k) for k in ("step", "loss", "tokens_per_second")} for r in rows if r.get("tokens_per_second")]


def steady_tokens_per_s(steps: list[dict], skip: int = 2) -> float | None:
    """Median of the per-step tokens/s after the first ``skip`` steps (CUDA warm-up, allocator growth)."""
    rates = [r["tokens_per_second"] for r in steps]
    rates = rates[skip:] or rates
    return statistics.median(rates) if rates else None


def run_estimate(yaml_path: Path, fingerprint: dict | None, method: str, cpu: bool, env: dict) -> dict:
    """`tunewise estimate RUN.yaml --json` for the data actually trained on (examples, mean tokens)."""
    cmd = [sys.executable, "-m", "tunewise.cli", "estimate", str(yaml_path), "--json", "--epochs", "1"]
    if fingerprint and fingerprint.get("train_examples"):
        n = int(fingerprint["train_examples"])
        cmd += ["--examples", str(n), "--tokens-per-example", str(max(1, round(fingerprint["train_tokens"] / n)))]
    cmd += ["--this-machine"] if cpu else ["--gpu", "h100"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    out: dict = {"rc": p.returncode, "seconds": round(time.perf_counter() - t0, 2), "command": " ".join(cmd[1:])}
    if p.returncode != 0:
        out["error"] = tail(p.stderr + p.stdout)
        return out
    d = json.loads(p.stdout)
    m = next(x for x in d["methods"] if x["method"] == method)
    out["memory_bytes"] = m["memory_bytes"]["total"]
    out["memory_components_gb"] = {k: round(v / GB, 3) for k, v in m["memory_bytes"].items()
                                   if k in ("weights", "adapters", "gradients", "optimizer", "activations", "logits",
                                            "overhead")}
    out["flops_per_token"] = m["flops_per_token"]
    out["utilisation"] = d["utilisation"]
    out["setup"] = d["setup"]
    if cpu:
        here = d["this_machine"][method]
        out.update(where="this machine (CPU)", tokens_per_second=here["tokens_per_second"], memory_bytes=here["memory"])
    else:
        g = m["gpus"][0]
        out["where"] = g["name"]
        out["tokens_per_second"] = d["training_tokens"] / (g["hours"] * 3600) if g.get("hours") else None
    return out


def one_run(shape: str, method: str, model_dir: Path, args, env: dict, work: Path, timeout: float) -> dict:
    name = f"{shape}-{method}"
    run_dir = work / "runs" / name
    yaml_path = work / "runs" / f"{name}.yaml"
    write_run_yaml(yaml_path, model_dir, args.data.resolve(), method, run_dir, args)
    rec: dict = {"shape": shape, "method": method, "config": str(yaml_path)}
    mem = DeviceMemoryPeak()
    mem.start()
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "tunewise.cli", "--debug", "train", str(yaml_path), "--json",
                            "--overwrite"], capture_output=True, text=True, env=env, cwd=work, timeout=timeout)
        rec["rc"], stderr, stdout = p.returncode, p.stderr, p.stdout
    except subprocess.TimeoutExpired as e:
        rec["rc"], stdout = "timeout", ""
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    peak = mem.peak()
    rec["device_used_peak_bytes"], rec["device_memory_source"] = peak, mem.source
    summary_path = run_dir / "summary.json"
    rec["ok"] = rec["rc"] == 0 and summary_path.is_file()
    if not rec["ok"]:
        rec["error"] = tail(stderr + stdout)
    fingerprint = None
    if (run_dir / "data_fingerprint.json").is_file():
        fingerprint = json.loads((run_dir / "data_fingerprint.json").read_text())
        rec["data"] = {k: fingerprint.get(k) for k in ("train_examples", "train_rows", "train_tokens")}
    if (run_dir / "versions.json").is_file():
        v = json.loads((run_dir / "versions.json").read_text())
        rec["backend"], rec["precision"] = v.get("backend"), v.get("precision")
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        rec.update(steps=s["steps"], final_loss=s["final_loss"], train_s=s["seconds"],
                   tokens_per_second=s["tokens_per_second"], trained_tokens=s["trained_tokens"],
                   peak_gpu_allocated_bytes=s.get("peak_gpu_allocated_bytes"),
                   peak_gpu_reserved_bytes=s.get("peak_gpu_reserved_bytes"))
        rec["per_step"] = per_step(run_dir / "metrics.jsonl")
        rec["steady_tokens_per_second"] = steady_tokens_per_s(rec["per_step"])
        rec["warnings"] = sorted({ln.strip()[:300] for ln in stderr.splitlines() if "Warning" in ln})[:10]
    try:
        rec["estimate"] = run_estimate(yaml_path, fingerprint, method, cpu=args.tiny, env=env)
    except Exception as e:  # recorded, never fatal
        rec["estimate"] = {"error": f"{type(e).__name__}: {e}"}
    est = rec["estimate"]
    measured_mem = rec.get("device_used_peak_bytes") or rec.get("peak_gpu_reserved_bytes")
    if rec["ok"] and est.get("memory_bytes") and measured_mem:
        rec["memory_ratio_est_over_measured"] = est["memory_bytes"] / measured_mem
    speed = rec.get("steady_tokens_per_second") or rec.get("tokens_per_second")
    if rec["ok"] and est.get("tokens_per_second") and speed:
        rec["speed_ratio_est_over_measured"] = est["tokens_per_second"] / speed
        if est.get("flops_per_token") and not args.tiny:
            rec["achieved_tflops"] = speed * est["flops_per_token"] / 1e12  # model FLOPs, as the estimate counts them
    return rec


def sub(args_list: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int | str, dict | None, str]:
    """Run this script in a fresh process in a helper mode; (rc, its last stdout line as JSON, stderr tail)."""
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args_list], capture_output=True,
                           text=True, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return "timeout", None, tail(e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else "")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    data = json.loads(lines[-1]) if p.returncode == 0 and lines else None
    return p.returncode, data, tail(p.stderr + p.stdout)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def fmt_gb(b) -> str:
    return f"{b / GB:.2f}" if b else "-"


def print_table(results: list[dict]) -> None:
    head = (f"{'shape':<16}{'method':<7}{'ok':<5}{'steps':>6}{'tok/s':>10}{'est tok/s':>11}{'ratio':>7}"
            f"{'alloc GB':>9}{'resv GB':>8}{'dev GB':>8}{'est GB':>8}{'ratio':>7}{'wall s':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        est = r.get("estimate") or {}
        speed = r.get("steady_tokens_per_second") or r.get("tokens_per_second")
        ok = "yes" if r.get("ok") else ("skip" if r.get("skipped") else "NO")
        print(f"{r['shape']:<16}{r['method']:<7}{ok:<5}{str(r.get('steps', '-')):>6}"
              f"{(format(speed, ',.0f') if speed else '-'):>10}"
              f"{(format(est['tokens_per_second'], ',.0f') if est.get('tokens_per_second') else '-'):>11}"
              f"{(format(r['speed_ratio_est_over_measured'], '.2f') if r.get('speed_ratio_est_over_measured') else '-'):>7}"
              f"{fmt_gb(r.get('peak_gpu_allocated_bytes')):>9}{fmt_gb(r.get('peak_gpu_reserved_bytes')):>8}"
              f"{fmt_gb(r.get('device_used_peak_bytes')):>8}{fmt_gb(est.get('memory_bytes')):>8}"
              f"{(format(r['memory_ratio_est_over_measured'], '.2f') if r.get('memory_ratio_est_over_measured') else '-'):>7}"
              f"{str(r.get('wall_s', '-')):>8}")
    print("tok/s: steady (median per-step rate after 2 steps); ratios: estimate / measured; dev GB: the GPU's used "
          "memory above its level before the run (NVML), the memory ratio's denominator (else resv GB)")
    for r in results:
        if not r.get("ok") and not r.get("skipped"):
            print(f"\n--- {r['shape']} {r['method']} failed (rc {r.get('rc')}):\n{(r.get('error') or '')[-1500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpucheck-out")),
                    help="where gpu_train.json goes (default $OUT, else ./gpucheck-out)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tunewise-gpucheck"), help="models and runs (emptied)")
    ap.add_argument("--tokenizer", type=Path, default=REPO / ".gpucheck" / "tokenizer")
    ap.add_argument("--data", type=Path, default=REPO / ".gpucheck" / "alpaca_en_demo.json")
    ap.add_argument("--shapes", default="smollm2-135m,llama-1b-shape", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--seq", type=int, default=2048, help="sequence_len")
    ap.add_argument("--micro-batch", type=int, default=4, help="micro_batch_size (packed rows per step)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="start no run after this many seconds")
    ap.add_argument("--no-infer", action="store_true", help="skip the HFEngine inference check")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU dry run: a 2-layer model, 2 steps, seq 256, micro-batch 2")
    ap.add_argument("--build", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--infer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        print(json.dumps(build_model(args.build[0], Path(args.build[1]), args.tokenizer.resolve())))
        return
    if args.infer:
        print(json.dumps(infer_check(args.infer)))
        return
    if args.tiny:
        args.shapes = "tiny" if args.shapes == ap.get_default("shapes") else args.shapes
        args.steps, args.seq, args.micro_batch = min(args.steps, 2), min(args.seq, 256), min(args.micro_batch, 2)
    shapes = [s for s in args.shapes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    bad = [s for s in shapes if s not in SHAPES] + [m for m in methods if m not in METHODS]
    if bad:
        sys.exit(f"unknown shape/method: {', '.join(bad)}")
    for need in (args.tokenizer / "tokenizer.json", args.data):
        if not need.exists():
            sys.exit(f"missing {need} (copy it into .gpucheck/, see this script's docstring)")
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "runs").mkdir(parents=True)
    env = {**os.environ, "TUNEWISE_HOME": str(work / "home"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    src = str(REPO / "src")
    if src not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join([p for p in (env.get("PYTHONPATH"), src) if p])
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiny": args.tiny,
                    "settings": {"steps": args.steps, "sequence_len": args.seq, "micro_batch_size": args.micro_batch,
                                 "gradient_accumulation_steps": 1, "budget_s": args.budget_s},
                    "shapes": {}, "runs": [], "infer": None}
    out_json = args.out / "gpu_train.json"

    def save():
        report["total_s"] = round(time.perf_counter() - t_start, 1)
        out_json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    for shape in shapes:
        model_dir = work / "models" / shape
        if left() <= 0:
            report["shapes"][shape] = {"skipped": "budget"}
            report["runs"] += [{"shape": shape, "method": m, "skipped": "budget"} for m in methods]
            continue
        rc, info, err = sub(["--build", shape, str(model_dir), "--tokenizer", str(args.tokenizer.resolve())],
                            env, REPO, timeout=max(60.0, left() + 60))
        if info is None:
            report["shapes"][shape] = {"error": err, "rc": rc}
            print(f"building {shape} failed (rc {rc}):\n{err[-2000:]}", flush=True)
            save()
            continue
        report["shapes"][shape] = info
        if "machine" not in report:
            report["machine"] = {"gpu": info.get("gpu"), "versions": info["versions"]}
            g, v = info.get("gpu"), info["versions"]
            gpu_line = (f"{g['name']}, {g['memory_bytes'] / 2**30:.0f} GiB, sm {g['capability']}, CUDA {g['cuda']}"
                        if g else "no CUDA GPU (CPU run)")
            print(f"machine: {gpu_line}; " + ", ".join(f"{k} {val or '-'}" for k, val in v.items()), flush=True)
        print(f"built {shape}: {info['parameters'] / 1e6:,.1f}M parameters in {info['build_s']} s", flush=True)
        for method in methods:
            if left() <= 0:
                report["runs"].append({"shape": shape, "method": method, "skipped": "budget"})
                print(f"skip {shape} {method}: over the {args.budget_s:.0f} s budget", flush=True)
                continue
            print(f"train {shape} {method} ...", flush=True)
            rec = one_run(shape, method, model_dir, args, env, work, timeout=max(60.0, left() + 60))
            report["runs"].append(rec)
            speed = rec.get("steady_tokens_per_second") or rec.get("tokens_per_second")
            print(f"  {'ok' if rec['ok'] else 'FAILED rc ' + str(rec['rc'])} in {rec['wall_s']} s"
                  + (f", {speed:,.0f} tokens/s, peak allocated {fmt_gb(rec.get('peak_gpu_allocated_bytes'))} GB, "
                     f"device {fmt_gb(rec.get('device_used_peak_bytes'))} GB, estimate "
                     f"{fmt_gb(rec['estimate'].get('memory_bytes'))} GB" if rec["ok"] else ""), flush=True)
            if not rec["ok"]:
                print((rec.get("error") or "")[-800:], flush=True)
            save()
            if (method == "lora" and rec["ok"] and report["infer"] is None and not args.no_infer):
                rc, info_i, err = sub(["--infer", str(work / "runs" / f"{shape}-{method}")], env, work,
                                      timeout=max(60.0, left() + 60))
                report["infer"] = info_i or {"ok": False, "rc": rc, "error": err, "run": f"{shape}-{method}"}
                report["infer"]["run"] = f"{shape}-{method}"
                print(f"infer (HFEngine on {shape}-{method}): "
                      + (f"ok={info_i['ok']}, parameters on {info_i['parameter_devices']}, "
                         f"{info_i['output_tokens']} tokens in {info_i['seconds']} s: {info_i['text'][:60]!r}"
                         if info_i else f"FAILED rc {rc}:\n{err[-1500:]}"), flush=True)
                save()
    save()
    print()
    print_table(report["runs"])
    print(f"\ntotal {report['total_s']} s; figures in {out_json}")


if __name__ == "__main__":
    main()
