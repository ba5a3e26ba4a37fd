"""Check the installed llama.cpp (xllamacpp) before tunewise relies on it: `make setup-native` runs
``python -m tunewise.infer.build_check`` after compiling llama.cpp for this CPU.

A build can compile and import, yet die with SIGILL or SIGSEGV on the first matrix product of one
GGUF type (seen: llama.cpp's AMX kernels on q8_0, on an Intel Xeon with AMX; docs/serve.md). Such a
crash takes the whole process with it, so each precision is loaded and asked for a few tokens in a
child process, and a death by signal is reported by name instead of crashing the caller.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

#: What the child runs: load ``model`` at ``precision`` on llama.cpp, two greedy requests at once
#: (a batch, as compare and serve send), a few tokens each.
_CHILD = """
import sys
from tunewise.infer.llamacpp import LlamaCppEngine
from tunewise.infer.types import Request
engine = LlamaCppEngine(sys.argv[1], precision=sys.argv[2], n_parallel=2, ctx_per_request=256)
out = engine.generate([Request([{"role": "user", "content": f"Say hello to person {i}."}], max_tokens=8)
                       for i in range(2)])
engine.close()
assert all(c.output_tokens > 0 for c in out), "no tokens generated"
print("tokens", sum(c.output_tokens for c in out))
"""


@dataclass
class Result:
    precision: str
    ok: bool
    detail: str
    seconds: float


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def check_precision(model: str, precision: str, timeout: float = 600.0,
                    child: str = _CHILD) -> Result:
    """Run ``child`` (Python source; argv: model, precision) in a fresh interpreter."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", child, model, precision], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(precision, False, f"no answer within {timeout:.0f} s", time.perf_counter() - start)
    took = time.perf_counter() - start
    if proc.returncode == 0:
        return Result(precision, True, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "ok", took)
    if proc.returncode < 0:
        return Result(precision, False, f"the process died with {_signal_name(proc.returncode)}", took)
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return Result(precision, False, f"exit status {proc.returncode}: {last}", took)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tunewise.infer.build_check",
                                 description="Load and run the installed llama.cpp on each GGUF type, "
                                             "each in a child process; exit 1 if any fails.",
                                 epilog="Example: python -m tunewise.infer.build_check --precisions f16,q8_0")
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, HF directory or GGUF")
    ap.add_argument("--precisions", default="f16,q8_0", help="comma-separated GGUF types")
    args = ap.parse_args(argv)
    from tunewise.infer.llamacpp import build_isa

    print(f"llama.cpp build check: compiled for {build_isa() or 'an unknown CPU'}; {args.model} on "
          f"{args.precisions}, each in a child process", flush=True)
    failed = []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        r = check_precision(args.model, precision)
        print(f"  {'ok  ' if r.ok else 'FAIL'} {precision}: {r.detail} ({r.seconds:.1f} s)", flush=True)
        if not r.ok:
            failed.append(r)
    if failed:
        print("This llama.cpp build cannot run " + ", ".join(r.precision for r in failed)
              + " here; tunewise would crash on it.", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
