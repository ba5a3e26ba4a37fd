"""How fast llama.cpp answers one of the demo's arms, per engine setting: the exact prompts `tunewise
demo` builds (format scenario: the few-shot and RAG arms' ~800-token prompts are most of the demo's
answering time), answered as compare answers them (``--alone`` requests one at a time for latency,
then the rest at once over ``--slots`` slots).

Each variant is ``TYPE[+ngram][+cacheMIB]``:

- ``TYPE``: a GGUF type tunewise converts the embedded model to (f16, f32, bf16, q8_0), ``q4_0``
  (re-quantised here from the f32 GGUF with gguf-py: every 2-D weight Q4_0, the token embedding
  Q8_0 — what a 4-bit deployment would run; not a tunewise export type), or a ``.gguf`` path (e.g.
  the shipped Q4_1);
- ``+ngram``: llama.cpp's n-gram speculative decoding (the engine's ``speculative="ngram"``);
- ``+cacheMIB``: llama.cpp's host-memory prompt cache of MIB MiB (``cache_ram_mib``), which could
  hand a prefix computed in one slot to another.

Prints, per variant: wall time alone / at once / in all, generated tokens/s, the ratio to the first
variant, how many answers are identical to the first variant's, and prompt tokens served from a
slot's cache. ``--parity N`` also answers the first N prompts with the HF fp32 reference and reports
each variant's agreement (the parity gate's figures, infer/parity.py).

    .venv/bin/python bench/answering_probe.py --arm few_shot --variants f16,q8_0,f32,f16+ngram,f16+cache256
    .venv/bin/python bench/answering_probe.py --arm few_shot --variants f16,q8_0,q4_0 --parity 8
    .venv/bin/python bench/answering_probe.py --write-q4_0 /tmp/smollm2-q4_0.gguf   # then, for its serving speed:
    .venv/bin/python bench/serve_throughput.py --precisions q8_0 --gguf /tmp/smollm2-q4_0.gguf --concurrency 1,16

Session 10 (AMD EPYC, AVX-512 BF16, 2 cores; the PyPI xllamacpp wheel, compiled for AVX2) is in
docs/infer.md ("Answering the demo's long prompts").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tunewise.infer.run import PARITY_MAX_TOKENS as GATE_TOKENS
from tunewise.paths import atomic_write_text


def requantise(src: Path, dst: Path, qtype: str = "Q4_0", embed_type: str = "Q8_0") -> Path:
    """Write ``src`` (an f32/f16 GGUF) to ``dst`` with every 2-D weight in ``qtype`` (the token
    embedding in ``embed_type``), metadata copied; norms and other 1-D tensors stay f32."""
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T

    reader = gguf.GGUFReader(str(src))
    qt, et = T[qtype.upper()], T[embed_type.upper()]
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        if name == "general.file_type":
            writer.add_key_value(name, int(gguf.LlamaFileType["MOSTLY_" + qt.name]), vtype)
        elif vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, f.contents(), vtype, sub_type=f.types[-1])
        else:
            writer.add_key_value(name, f.contents(), vtype)
    for t in reader.tensors:
        data = np.array(t.data)
        if t.tensor_type == T.F16:
            data = data.astype(np.float32)
        elif t.tensor_type != T.F32:
            raise SystemExit(f"{src}: tensor {t.name} is {t.tensor_type.name}; re-quantise from an f32 or f16 GGUF")
        data = data.reshape([int(x) for x in reversed(t.shape)])
        if data.ndim == 2 and data.shape[-1] % 32 == 0:
            q = et if t.name == "token_embd.weight" else qt
            writer.add_tensor(t.name, gguf.quants.quantize(data, q), raw_dtype=q)
        else:
            writer.add_tensor(t.name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def arm_prompts(arm_name: str, work: Path) -> tuple[list[list[dict]], int]:
    """The demo format scenario's prompts of ``arm_name`` for every eval example, and max_new_tokens."""
    from tunewise.compare.runner import _build_all, _console, _prepare, _setup_arm, load_compare_config
    from tunewise.demo.pipeline import write_scenario

    cfg = load_compare_config(write_scenario("format", work, quick=False, model="smollm2-135m"))
    arm_cfg = next((a for a in cfg.arms if a.name == arm_name), None)
    if arm_cfg is None or arm_cfg.type == "finetuned":
        names = [a.name for a in cfg.arms if a.type != "finetuned"]
        raise SystemExit(f"--arm {arm_name!r}: use one of {names} (the fine-tuned arm needs a training run)")
    con = _console(quiet=True)
    examples, pools, _ = _prepare(cfg, work, con)
    runner = _setup_arm(cfg, arm_cfg, work, con, pools, {}, {})
    return _build_all(runner, examples).messages, cfg.max_new_tokens


def parse_variant(v: str) -> tuple[str, str, str, int]:
    """``v`` as (label, GGUF type or file, speculative, cache MiB)."""
    parts = v.split("+")
    spec, cache = "off", 0
    for p in parts[1:]:
        if p == "ngram":
            spec = "ngram"
        elif p.startswith("cache") and p[5:].isdigit():
            cache = int(p[5:])
        else:
            raise SystemExit(f"variant {v!r}: unknown option {p!r} (use +ngram or +cacheMIB)")
    return v, parts[0], spec, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="few_shot", help="the format scenario's arm: prompt, few_shot, rag-examples")
    ap.add_argument("--variants", default="f16,q8_0", help="comma-separated TYPE[+ngram][+cacheMIB]; the first is the baseline")
    ap.add_argument("--slots", type=int, default=8, help="llama.cpp slots (compare's default n_parallel)")
    ap.add_argument("--alone", type=int, default=3, help="requests answered one at a time first (the demo's latency_samples)")
    ap.add_argument("--parity", type=int, default=0, help="also compare the first N answers with the HF fp32 reference")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--write-q4_0", metavar="FILE", help="only write the embedded model as the q4_0 GGUF described "
                    "above to FILE (for bench/serve_throughput.py --gguf FILE) and exit")
    args = ap.parse_args()
    if args.write_q4_0:
        from tunewise.infer.llamacpp import gguf_for

        print(f"wrote {requantise(gguf_for('smollm2-135m', 'f32')[0], Path(args.write_q4_0))}")
        return

    from tunewise.hardware import cpu_info, describe_cpu
    from tunewise.infer import Request
    from tunewise.infer.llamacpp import LlamaCppEngine, build_isa, gguf_for
    from tunewise.infer.parity import compare_texts

    variants = [parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="answering-probe-") as tmp:
        work = Path(tmp)
        prompts, max_new = arm_prompts(args.arm, work / "scenario")
        reqs = [Request(m, max_tokens=max_new) for m in prompts]
        print(f"CPU: {describe_cpu(cpu_info())}; llama.cpp compiled for {build_isa() or 'unknown'}; arm {args.arm}: "
              f"{len(reqs)} prompts, {max_new} new tokens max, greedy; {args.alone} alone, then the rest over "
              f"{args.slots} slots", flush=True)
        ref_texts = None
        if args.parity:
            from tunewise.infer.hf import HFEngine

            hf = HFEngine("smollm2-135m", precision="fp32")
            t0 = time.perf_counter()
            ref_texts = [c.text for c in hf.generate(reqs[:args.parity])]
            print(f"HF fp32 reference: {args.parity} answers in {time.perf_counter() - t0:.1f} s", flush=True)
            tokenizer = hf.tokenizer
            hf.close()
            def gate_cut(texts: list[str]) -> list[str]:
                """Answers cut to the gate's GATE_TOKENS new tokens (a greedy answer's first k
                tokens are the k-token answer)."""
                return [tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)[:GATE_TOKENS]) for t in texts]

            ref_cut = gate_cut(ref_texts)
        rows, first_texts = [], None
        for label, typ, spec, cache in variants:
            ref = typ if typ.endswith(".gguf") else "smollm2-135m"
            if typ == "q4_0":
                ref = str(requantise(gguf_for("smollm2-135m", "f32")[0], work / "smollm2-135m-q4_0.gguf"))
            eng = LlamaCppEngine(ref, precision="auto" if ref.endswith(".gguf") else typ, n_parallel=args.slots,
                                 ctx_per_request=1280,  # ~820 prompt + 200 new tokens
                                 cache_ram_mib=cache, speculative=spec)
            t0 = time.perf_counter()
            done = [eng.generate([r])[0] for r in reqs[:args.alone]]
            t1 = time.perf_counter()
            done += eng.generate(reqs[args.alone:])
            t2 = time.perf_counter()
            eng.close()
            texts = [c.text for c in done]
            first_texts = first_texts or texts
            tokens = sum(c.output_tokens for c in done)
            row = {"variant": label,
                   "precision": eng.precision, "alone_s": t1 - t0, "batch_s": t2 - t1, "total_s": t2 - t0,
                   "tokens": tokens, "tokens_per_s": tokens / (t2 - t0),
                   "same_as_first": sum(a == b for a, b in zip(texts, first_texts)),
                   "cached_prompt_tokens": sum(int(c.extra.get("cached_tokens") or 0) for c in done),
                   "prompt_tokens": sum(c.input_tokens for c in done)}
            if ref_texts is not None:
                rep = compare_texts(ref_texts, texts[:args.parity], tokenizer, precision=eng.precision)
                row.update(parity_identical=rep.identical, parity_prefix=rep.mean_prefix,
                           parity_divergences=[{"prompt": d.index, "position": d.position, "reference": d.reference,
                                                "fast": d.fast} for d in rep.divergences])
                gate = compare_texts(ref_cut, gate_cut(texts[:args.parity]), tokenizer, precision=eng.precision)  # the gate's view
                row.update(gate_identical=gate.identical, gate_prefix=gate.mean_prefix, gate_passed=gate.passed)
            rows.append(row)
            print(f"  {row['variant']}: {row['total_s']:.1f} s", flush=True)
    base = rows[0]["total_s"]
    print(f"\n{'variant':<22}{'alone s':>9}{'batch s':>9}{'total s':>9}{'tok/s':>8}{'vs first':>10}"
          f"{'same':>7}{'cached/prompt tok':>20}" + (f"  parity vs HF fp32 (identical, prefix; first {GATE_TOKENS} tokens)"
                                                     if ref_texts else ""))
    for r in rows:
        line = (f"{r['variant']:<22}{r['alone_s']:>9.1f}{r['batch_s']:>9.1f}{r['total_s']:>9.1f}{r['tokens_per_s']:>8.1f}"
                f"{base / r['total_s']:>9.2f}x{r['same_as_first']:>4}/{len(reqs):<3}"
                f"{r['cached_prompt_tokens']:>9}/{r['prompt_tokens']:<10}")
        if ref_texts is not None:
            line += (f"  {r['parity_identical']:.0%}, {r['parity_prefix']:.0%}; {r['gate_identical']:.0%}, "
                     f"{r['gate_prefix']:.0%} ({'passes' if r['gate_passed'] else 'fails'} the gate)")
        print(line)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"cpu": describe_cpu(cpu_info()), "llamacpp_built_for": build_isa(),
                                                      "arm": args.arm, "slots": args.slots, "alone": args.alone,
                                                      "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
