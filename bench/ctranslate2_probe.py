"""CTranslate2 as a candidate fast engine: the serve benchmark's kind of load (legal-notice prompts,
200 new tokens, greedy) on the embedded model, one request at a time and 16 in one batch, per CPU
compute type. Not a tunewise dependency: install it for this run only.

    .venv/bin/pip install --target /tmp/ct2 ctranslate2 --no-deps
    PYTHONPATH=/tmp/ct2 .venv/bin/python bench/ctranslate2_probe.py --compute-types float32,int8_float32,int8

Session 9 (AMD EPYC, AVX-512 BF16, 2 cores; ctranslate2 4.8.5): 16 at once 90.9 (float32), 118.6
(int8_float32), 125.4 (int8) tokens/s; one at a time 35-37 — below llama.cpp's wheel (q8_0 166 at 16,
bench/serve_throughput.py), so it was not adopted (docs/serve.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compute-types", default="float32,int8", help="CTranslate2 CPU compute types, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help="requests in the batched row")
    args = ap.parse_args()
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise SystemExit("ctranslate2 is not installed: see this script's docstring for the one-run install")

    from tunewise.demo import notices
    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.models import load_tokenizer, resolve_model

    supported = ctranslate2.get_supported_compute_types("cpu")
    types = [t.strip() for t in args.compute_types.split(",") if t.strip()]
    bad = [t for t in types if t not in supported]
    if bad or args.new_tokens < 1 or args.batch < 2:
        raise SystemExit(f"use compute types from {sorted(supported)}, --new-tokens >= 1 and --batch >= 2")
    model_dir = resolve_model("smollm2-135m").path
    tok = load_tokenizer(str(model_dir))
    prompts = []
    for r in notices.conversations(args.batch, seed=2):
        msgs = [{"role": "system", "content": notices.SYSTEM_PROMPT}] + [m for m in r["messages"] if m["role"] == "user"]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        prompts.append(tok.convert_ids_to_tokens(ids))
    end = tok.convert_ids_to_tokens([tok.eos_token_id])
    print(f"CPU: {describe_cpu(cpu_info())}; ctranslate2 {ctranslate2.__version__}; {args.new_tokens} new tokens, "
          f"greedy; {len(prompts)} notice prompts", flush=True)
    with tempfile.TemporaryDirectory(prefix="ct2-") as work:
        TransformersConverter(str(model_dir)).convert(work, force=True)
        for ct in types:
            gen = ctranslate2.Generator(work, device="cpu", compute_type=ct, inter_threads=1,
                                        intra_threads=cpu_info()["cores"])
            opts = dict(max_length=args.new_tokens, sampling_topk=1, include_prompt_in_result=False, end_token=end)
            gen.generate_batch(prompts[:2], **{**opts, "max_length": 8})  # warm-up
            for label, batches in (("1 at a time", [[p] for p in prompts[:2]]), (f"{len(prompts)} at once", [prompts])):
                start, n = time.perf_counter(), 0
                for b in batches:
                    n += sum(len(r.sequences_ids[0]) for r in gen.generate_batch(b, max_batch_size=len(b), **opts))
                dt = time.perf_counter() - start
                print(f"{ct:>13} {label:>12}: {n} tokens in {dt:.1f} s = {n / dt:.1f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
