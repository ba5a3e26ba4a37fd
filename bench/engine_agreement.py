"""Do two runs of the same comparison on different engines reach the same figures and verdict?

Reads two `tunewise compare` output folders (report.json + arms/*/outputs.jsonl) made from the
same config and eval set — typically the fast engine's run and a rerun with `engine: hf` and
`precision: fp32` (the exact reference) — and prints, per arm: the quality on each engine, the
paired difference over the same examples (sign-flip interval and p-value, compare.stats), how many
answers are word-for-word the same, and whether the recommendation is the same.

    # the demo, then the demo again on the reference (the same data; it trains its own runs):
    .venv/bin/tunewise demo --engine hf --precision fp32 --out demo-ref
    .venv/bin/python bench/engine_agreement.py tunewise-demo/format/report demo-ref/format/report
    # or one scenario's config on the reference, reusing the trained run:
    .venv/bin/tunewise compare ref-format.yaml        # engine: hf, precision: fp32, arms[3].run: <run dir>
    .venv/bin/python bench/engine_agreement.py tunewise-demo/format/report ref/format

Session 10 (AMD EPYC, AVX-512 BF16, 2 cores) is in docs/compare.md ("Same verdict on the
reference engine").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def same_eval_set(ra: dict, rb: dict) -> bool:
    """The same number of examples from the same eval file: the same path, or two files with the
    same bytes (the demo writes its deterministic data into each output folder)."""
    fa, fb = ra.get("eval_file"), rb.get("eval_file")
    if ra.get("n_examples") != rb.get("n_examples"):
        return False
    if fa == fb:
        return True
    pa, pb = Path(str(fa)), Path(str(fb))
    return pa.is_file() and pb.is_file() and pa.read_bytes() == pb.read_bytes()


def load(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    if not (folder / "report.json").is_file():
        raise SystemExit(f"{folder}: no report.json here; pass the output_dir of a finished `tunewise compare`")
    rep = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    outs = {}
    for arm in rep["arms"]:
        if arm.get("outputs_file"):
            lines = (folder / arm["outputs_file"]).read_text(encoding="utf-8").splitlines()
            outs[arm["name"]] = [json.loads(x) for x in lines if x.strip()]
    return rep, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="compare output folder (e.g. the fast engine's)")
    ap.add_argument("b", type=Path, help="compare output folder of the same config on another engine")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    from tunewise.compare.stats import paired
    from tunewise.paths import atomic_write_text

    (ra, oa), (rb, ob) = load(args.a), load(args.b)
    if not same_eval_set(ra, rb):
        raise SystemExit(f"{args.a} and {args.b} were not run on the same eval set "
                         f"({ra.get('eval_file')} vs {rb.get('eval_file')})")
    metric = ra["primary_metric"]
    ea = f"{ra['engine']['name']} {ra['engine']['precision']}"
    eb = f"{rb['engine']['name']} {rb['engine']['precision']}"
    print(f"{ra.get('name')}: {ra['n_examples']} examples, quality = {metric}; A = {ea}, B = {eb}")
    print(f"{'arm':<18}{'A':>8}{'B':>8}{'A - B [95%]':>26}{'p':>8}{'same answers':>15}")
    rows = []
    for name in oa:
        if name not in ob:
            continue
        by_id = {x["id"]: x for x in ob[name]}
        pairs = [(x, by_id[x["id"]]) for x in oa[name] if x["id"] in by_id]
        sa = [x["scores"].get(metric) for x, _ in pairs]
        sb = [y["scores"].get(metric) for _, y in pairs]
        qa = next(a["quality"] for a in ra["arms"] if a["name"] == name)
        qb = next(a["quality"] for a in rb["arms"] if a["name"] == name)
        p = paired(sa, sb)
        same = sum(x["output"] == y["output"] for x, y in pairs)
        row = {"arm": name, "quality_a": qa, "quality_b": qb, "diff": p.diff if p else None,
               "low": p.low if p else None, "high": p.high if p else None, "p_value": p.p_value if p else None,
               "same_answers": same, "n": len(pairs)}
        rows.append(row)
        ci = f"{p.diff:+.3f} [{p.low:+.3f}, {p.high:+.3f}]" if p else "–"
        print(f"{name:<18}{qa:>8.3f}{qb:>8.3f}{ci:>26}{(p.p_value if p else float('nan')):>8.3f}"
              f"{same:>10}/{len(pairs)}")
    rec_a, rec_b = ra["recommendation"], rb["recommendation"]
    same_rec = rec_a.get("arm") == rec_b.get("arm")
    print(f"recommendation: A {rec_a.get('arm')!r}, B {rec_b.get('arm')!r} ({'the same' if same_rec else 'DIFFERENT'})")
    for label, rec in (("A", rec_a), ("B", rec_b)):
        for line in (rec.get("statements") or [])[:2]:
            print(f"  {label}: {line}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"a": str(args.a), "b": str(args.b), "engine_a": ea, "engine_b": eb,
                                                      "metric": metric, "rows": rows, "recommendation_a": rec_a.get("arm"),
                                                      "recommendation_b": rec_b.get("arm")}, indent=1))


if __name__ == "__main__":
    main()
